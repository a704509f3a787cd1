"""`runctl aws train|monitor`: runs on an EC2 instance, through the one start pipeline."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from ..params import AutoResume, TrainOptions, flag_of
from . import options as o
from .aws_app import app
from .common import Output, emit_json, exit_with, store
from .trainopts import borrow, train_command

InstanceArg = Annotated[str, typer.Argument(help="Instance id (i-...) or its Name tag")]
RegionOpt = Annotated[str | None, typer.Option("--region", help="AWS region (default: AWS_REGION or the profile's)")]
LOG_TAIL_LINES = 20


def _flag_option(name: str) -> Any:
    """A Typer option from the AutoResume field `name` (declared once, in runctl.params)."""
    flag = flag_of(AutoResume.model_fields[name])
    return typer.Option(*flag.decls, help=flag.help, metavar=flag.metavar)


AutoResumeOpt = Annotated[str | None, _flag_option("auto_resume")]
SpotFallbackOpt = Annotated[str | None, _flag_option("spot_fallback")]


class OnEnd(str, Enum):
    none = "none"
    stop = "stop"
    terminate = "terminate"


class AddressKind(str, Enum):
    public = "public"
    private = "private"


@train_command(app, borrowed=borrow(o.synced_host_options))
def train(
    opts: TrainOptions,
    instance: InstanceArg,
    script: o.ScriptArg,
    script_args: o.ScriptArgs = None,
    start: Annotated[bool, typer.Option("--start", help="Start the instance first if it is stopped")] = False,
    on_end: Annotated[
        OnEnd,
        typer.Option(
            "--on-end",
            help="When the run ends: none (keep the instance running), stop, or terminate "
            "(only once its checkpoints are pulled and verified; else it stops)",
        ),
    ] = OnEnd.none,
    identity: Annotated[
        str | None, typer.Option("--identity", "-i", help="Private key file (default: remembered for the instance)")
    ] = None,
    ssh_user: Annotated[
        str | None, typer.Option("--ssh-user", help="SSH user (default: remembered, else ubuntu)")
    ] = None,
    address: Annotated[
        AddressKind | None, typer.Option("--address", help="Reach it by its public or private address")
    ] = None,
    region: RegionOpt = None,
    auto_resume: AutoResumeOpt = None,
    spot_fallback: SpotFallbackOpt = None,
    **synced: Any,
) -> None:
    """Sync the project to INSTANCE and start SCRIPT there detached (follow it with --wait)."""
    from ..ending import record_metadata
    from ..params import auto_resume_options
    from ..pipeline import start as start_run
    from ..providers import get
    from .starting import announce_and_follow

    relaunch = auto_resume_options(auto_resume, spot_fallback, opts.wait, opts.checkpoint_s3)
    request = aws_request(
        opts, instance, script, script_args, start=start, on_end=on_end, identity=identity, ssh_user=ssh_user,
        address=address, region=region, synced=synced,
    )  # fmt: skip
    if relaunch.auto_resume:
        request.options.update(attempt=1, auto_resume=relaunch.auto_resume)
    db = store()
    spec, state = start_run(db, request)
    row = db.get(spec.run_id)
    if row is not None:
        record_metadata(get("aws"), db, row)
    chosen = request.options.get("instance_obj")
    where = "on %s" % chosen.label if chosen is not None else "on %s" % spec.host
    if relaunch.auto_resume:
        from .starting import follow_chain

        follow_chain(db, spec, request, relaunch, opts, where)
        return
    announce_and_follow(db, spec, state, opts.output, opts.wait, opts.timeout, where, opts)


def aws_request(
    opts: TrainOptions,
    instance: str,
    script: str,
    script_args: list[str] | None,
    *,
    start: bool,
    on_end: OnEnd | str,
    identity: str | None,
    ssh_user: str | None,
    address: AddressKind | str | None,
    region: str | None,
    synced: dict[str, Any],
    created: bool = False,
) -> Any:
    """The pipeline's StartRequest for a run on an instance (`aws train`, `workflow run`).

    `created`: the instance was made for this run, so a start that fails releases it."""
    from .starting import train_request

    own: dict[str, Any] = {
        "instance": instance, "start": start, "on_end": getattr(on_end, "value", on_end), "identity": identity,
        "ssh_user": ssh_user, "address": getattr(address, "value", address), "region": region, "created": created,
    }  # fmt: skip
    return train_request("aws", opts, script, script_args, own, synced)


@app.command()
def monitor(
    instance: InstanceArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream the log until the run ends")] = False,
    region: RegionOpt = None,
    output: o.OutputOpt = Output.text,
) -> None:
    """The latest run on INSTANCE: its status and the end of its log (or the log as it grows)."""
    from .. import controller
    from ..providers.aws import latest_run

    db = store()
    instance_id, row = latest_run(db, instance, region)
    if follow:
        from .waiting import wait_for

        exit_with(wait_for(db, row, output, None, stream_log=True))
    run = controller.refresh(db, row)
    tail = log_tail(row, LOG_TAIL_LINES) if not controller.being_launched(row) else ""
    if output == Output.json:
        emit_json({"instance_id": instance_id, "run": run, "log_tail": tail})
        return
    from .render import run_detail

    run_detail(run)
    if tail:
        print(tail, end="" if tail.endswith("\n") else "\n")


def log_tail(row: dict[str, Any], lines: int) -> str:
    from .. import controller
    from ..core.errors import HostError

    try:
        data = controller.transport_for(row).read_file(controller.log_path(row)) or b""
    except HostError:
        return ""
    return b"".join(data.splitlines(keepends=True)[-lines:]).decode("utf-8", "replace")
