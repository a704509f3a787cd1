"""`runctl workflow run`: create (or start) an instance, train, wait, pull the checkpoints, and stop
or terminate it — and on any failure or Ctrl-C, release what this command created or started.

    runctl workflow run (INSTANCE | --instance-type TYPE [aws create flags]) SCRIPT [aws train flags] -- ARGS

The end of a successful run is the ordinary end-of-run step (ending.py): checkpoints pulled and
verified, then the instance stopped, or terminated when they are proven safe. What this command
adds is the guarantee around it: an instance it launched (or started) is never left running by a
failure of its own — a bad script, a failed sync, an interrupted wait, a release that needs retrying.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

import typer

from ..core.errors import Detached, HostError, RunctlError, UsageError, WaitTimeout
from ..params import TrainOptions
from . import options as o
from .aws_instances import create as create_command
from .aws_runs import aws_request
from .aws_runs import train as train_body
from .common import exit_with, say, store
from .trainopts import borrow, train_command

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)

# aws create's flags, minus those the train flags already have (or that mean something else here).
CREATE_FLAGS = borrow(
    create_command,
    drop=("wait", "output", "name", "identity", "ssh_user", "address", "region"),
    defaults={"instance_type": None},
)
TRAIN_FLAGS = [
    # (--spot-fallback here is aws create's; --auto-resume is aws train's own, for now)
    *borrow(train_body, drop=("instance", "script", "script_args", "start", "on_end", "auto_resume", "spot_fallback")),
    *borrow(o.synced_host_options),
]
SYNCED_NAMES = tuple(p.name for p in borrow(o.synced_host_options))
CREATE_NAMES = tuple(p.name for p in CREATE_FLAGS)


@train_command(app, "run", borrowed=[*CREATE_FLAGS, *TRAIN_FLAGS])
def run(
    opts: TrainOptions,
    target: Annotated[str, typer.Argument(help="INSTANCE (id or Name), or SCRIPT with --instance-type")],
    script: Annotated[str | None, typer.Argument(help="Training script (when TARGET is an instance)")] = None,
    script_args: o.ScriptArgs = None,
    on_end: Annotated[
        str | None,
        typer.Option(
            "--on-end",
            help="After the run: stop or terminate (default: terminate an instance runctl made, stop one it did not)",
        ),
    ] = None,
    **flags: Any,
) -> None:
    """Create (or start) an instance, train SCRIPT on it, wait, pull checkpoints, then stop or terminate it."""
    create_flags = {name: flags.pop(name) for name in CREATE_NAMES}
    if on_end not in (None, "stop", "terminate"):
        raise UsageError("invalid --on-end %r" % on_end, "use stop or terminate (aws train keeps an instance)")
    if create_flags["instance_type"]:
        from ..providers.aws import is_instance_id

        if is_instance_id(target):
            raise UsageError(
                "give either INSTANCE SCRIPT or --instance-type TYPE SCRIPT, not both",
                "for example: runctl workflow run --instance-type g5.xlarge train.py -- --epochs 2",
            )
        # Everything after the script is its arguments (click fills the optional SCRIPT slot first).
        args = ([script] if script is not None else []) + list(script_args or [])
        flow = Flow(opts, None, target, args, on_end, create_flags, flags)
    else:
        if script is None:
            raise UsageError(
                "no SCRIPT given", "runctl workflow run INSTANCE SCRIPT -- ARGS, or --instance-type TYPE SCRIPT"
            )
        flow = Flow(opts, target, script, script_args or [], on_end, create_flags, flags)
    exit_with(flow.run())


class Flow:
    """One workflow: the instance it holds, and what it must undo if anything fails."""

    def __init__(
        self,
        opts: TrainOptions,
        instance: str | None,
        script: str,
        script_args: list[str],
        on_end: str | None,
        create_flags: dict[str, Any],
        train_flags: dict[str, Any],
    ) -> None:
        self.opts, self.instance, self.script, self.script_args = opts, instance, script, script_args
        self.on_end, self.create_flags, self.train_flags = on_end, create_flags, train_flags
        self.db = store()
        self.made: str | None = None  # an instance this workflow launched: terminated on failure
        self.started: str | None = None  # a stopped instance this workflow started: stopped again

    def run(self) -> int:
        from .. import controller

        controller.locate(self.script, self.train_flags.get("project_dir"))  # a typo costs no instance
        try:
            instance = self.acquire()
            flags = dict(self.train_flags)
            synced = {name: flags.pop(name) for name in SYNCED_NAMES}
            request = aws_request(
                self.opts, instance.id, self.script, self.script_args, start=False, on_end=self.end_action(instance),
                created=self.made is not None, synced=synced, **flags,
            )  # fmt: skip
            code = self.train(request)
        except KeyboardInterrupt:
            self.release_after_failure()
            raise Detached("interrupted", "nothing this workflow made or started is left running") from None
        except RunctlError:
            self.release_after_failure()
            raise
        return code

    def acquire(self) -> Any:
        from ..providers.aws import Ec2Instances

        if self.instance is None:
            from ..providers.ec2launch import CreateRequest, create

            flags = dict(self.create_flags)
            tags = list(flags.pop("tag", None) or [])
            request = CreateRequest(
                **flags,
                tags=tags,
                name="workflow-%s" % secrets.token_hex(3),
                wait=True,
                identity=self.train_flags.get("identity"),
                ssh_user=self.train_flags.get("ssh_user") or "ubuntu",
                address=self.train_flags.get("address"),
                region=self.train_flags.get("region"),
            )
            result = create(request, say, self.db)
            self.made = str(result["instance_id"])
            return Ec2Instances(self.train_flags.get("region")).get(self.made)
        cloud = Ec2Instances(self.train_flags.get("region"))
        instance = cloud.find(self.instance)
        if instance.state in ("stopped", "stopping"):
            say("starting %s ..." % instance.label)
            cloud.start(instance)
            self.started = instance.id
            instance = cloud.wait(instance, "running", None)
        return instance

    def end_action(self, instance: Any) -> str:
        if self.on_end is not None:
            return self.on_end
        if self.made is not None or instance.managed:
            return "terminate"
        say("%s was not created by runctl: it will be stopped, not terminated (--on-end terminate to)" % instance.id)
        return "stop"

    def train(self, request: Any) -> int:
        from .. import controller
        from ..pipeline import start
        from .waiting import wait_for

        spec, _state = start(self.db, request)
        row = self.db.get(spec.run_id)
        assert row is not None
        say("run %s started on %s; Ctrl-C stops it (checkpoint saved, pulled) and releases the instance" % (
            spec.run_id, request.options["instance_obj"].label))  # fmt: skip
        from .starting import offer_dashboard

        offer_dashboard(self.opts, spec.run_id, self.opts.output)
        try:
            code = wait_for(self.db, row, self.opts.output, self.opts.timeout, stream_log=True)
        except (Detached, WaitTimeout) as exc:
            why = "interrupted" if isinstance(exc, Detached) else "timed out"
            say("%s: stopping run %s gracefully (its checkpoint is saved and pulled) ..." % (why, spec.run_id))
            try:
                controller.stop(self.db, self.db.get(spec.run_id) or row, None)
            except RunctlError:
                pass  # it ended meanwhile
            # Its end-of-run step pulls the checkpoints and releases the instance, as for any end.
            controller.follow(self.db, self.db.get(spec.run_id) or row, None, None, on_end_notice=say)
            self.confirm_released(spec.run_id)
            raise
        self.confirm_released(spec.run_id)
        return code

    def confirm_released(self, run_id: str) -> None:
        """The end-of-run step released the instance; if it could not, this is the workflow's failure."""
        from ..providers.aws import ENDED

        row = self.db.get(run_id) or {}
        host = self.db.host(row.get("host_key") or "") if row.get("host_key") else None
        if host is None or host["state"] in ENDED["stop"] + ENDED["terminate"]:
            self.made = self.started = None
            return
        raise HostError(
            "the run ended but %s is still %s" % (host["host_id"], host["state"]),
            "release it: runctl aws terminate %s" % host["host_id"]
            if self.made
            else "release it: runctl aws stop %s" % host["host_id"],
        )

    def release_after_failure(self) -> None:
        from ..providers.aws import Ec2Instances

        target, action = (self.made, "terminate") if self.made else (self.started, "stop")
        if target is None:
            return
        say("releasing %s (%s) ..." % (target, action))
        cloud = Ec2Instances(self.train_flags.get("region"))
        try:
            seen = cloud.end_billing(cloud.get(target), action)
        except RunctlError as exc:
            say("error: could not %s %s: %s" % (action, target, exc.message))
            if exc.hint:
                say("  " + exc.hint)
            return
        from ..providers.aws import Prices, observe

        observe(self.db, seen, Prices(cloud))
        say("%s is %s" % (target, seen.state))
