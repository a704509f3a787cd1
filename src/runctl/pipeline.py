"""The start pipeline, one for every provider:

    build the spec -> record the run -> acquire the host (`provisioning`, host saved) -> connect
    -> sync the code (when the provider syncs) -> stage data -> bootstrap -> launch

The one failure rule: **a start that fails leaves either a recorded run in a terminal status with
the reason, or nothing at all.** Concretely:

- before the launch (acquire, connect, sync, stage, bootstrap) any failure, Ctrl-C included,
  deletes the record: nothing ran, so there is nothing to keep;
- at the launch, the run dir decides: if the agent wrote the run's status, the record stays with
  that status (a run that may be alive is never dropped; a failed setup or a full disk is a failed
  run, terminal with its reason); if it wrote none, or refused the command itself (the script
  cannot be executed, the disk is read-only), the record is deleted;
- whenever the record is deleted, a host this pipeline acquired is released (`terminate`), so a
  failed start never leaves a billed host behind. A host the user named (SSH, local) is never
  released.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from . import checkpoint_s3, controller, providers
from .core import status as st
from .core.errors import Detached, HostError, RunctlError, UsageError, WriteFailed
from .core.spec import RunSpec, new_run_id
from .providers.base import Host, Provider, StartRequest
from .store import Store, host_key
from .transport.base import CodeSync, Transport


def start(store: Store, request: StartRequest) -> tuple[RunSpec, dict[str, Any]]:
    """Validate, then run the pipeline; returns the spec and the run's first status."""
    provider = providers.get(request.provider)
    provider.check(request)
    spec, root = build_spec(provider, request)
    return spec, Start(store, provider, request, spec, root).run()


def build_spec(provider: Provider, request: StartRequest) -> tuple[RunSpec, Path]:
    """A validated RunSpec (UsageError before anything is created) and the local project root."""
    from .core.checkpoints import check_glob

    root, script_path, relative = controller.locate(request.script, request.project_dir)
    placement = provider.placement(request, root, script_path)
    command = controller.build_command(script_path, relative, placement.python, list(request.script_args))
    controller.check_regex(request.metrics_regex)
    for pattern in request.checkpoint_globs:
        problem = check_glob(pattern)
        if problem:
            raise UsageError(
                "--checkpoint-glob %r %s" % (pattern, problem), "for example: --checkpoint-glob 'out/*.pt'"
            )
    spec = RunSpec(
        run_id=new_run_id(),
        name=request.name or script_path.stem,
        project_dir=placement.project_dir,
        command=command,
        provider=provider.name,
        script=relative,
        script_args=list(request.script_args),
        env=controller.parse_env(request.env),
        checkpoint_dir=request.checkpoint_dir or "",
        resume_from=request.resume_from,
        notify=list(request.notify),
        metrics_regex=request.metrics_regex,
        setup=request.setup,
        python_env=placement.python_env,
        python_script=placement.python_script,
        tty=bool(request.tty),
        checkpoint_globs=list(request.checkpoint_globs),
        on_end=provider.on_end(request),
    )
    spec.checkpoint_s3 = checkpoint_s3.spec_block(provider.name, request.checkpoint_s3, request.forward_aws_credentials)
    if request.data_s3:
        from . import data_s3

        spec.data_s3 = data_s3.spec_block(provider.name, request.data_s3, request.forward_aws_credentials)
        data_s3.check(spec.data_s3)  # a missing bucket or prefix, when this machine can tell: exit 2
    apply_config(spec, root, request.flags)
    if request.resume is not None:
        from .s3checkpoints import apply_resume

        apply_resume(spec, request.resume)  # the checkpoint, found and verified before anything is created
    return spec, root


def apply_config(spec: RunSpec, root: Path, flags: dict[str, Any]) -> None:
    """[policies] from the config files under the flags given on the command line."""
    from .config import load_policies, merge_policies

    config = load_policies(root)
    spec.notify = list(config.pop("notify", [])) + spec.notify
    spec.policies = merge_policies(config, flags)


def check_budget(spec: RunSpec) -> None:
    """A budget needs a price (else the agent could not tell what the run costs), and must buy more
    than the one poll interval the agent keeps in hand, or the run would be stopped at once (exit 2)."""
    from .core.policies import DEFAULTS, money, rate

    max_cost = spec.policies.get("max_cost")
    if max_cost is None:
        return
    if spec.hourly_price is None:
        raise UsageError(
            "no hourly price known for this host: --max-cost needs one",
            "state it with --hourly-price USD (local and SSH hosts), or drop --max-cost",
        )
    poll = float(spec.policies.get("poll_interval") or DEFAULTS["poll_interval"])
    poll_cost = spec.hourly_price * poll / 3600.0
    if float(max_cost) <= poll_cost:
        raise UsageError(
            "--max-cost $%s is no more than one poll interval's cost ($%s: %gs at $%s/hr); the run would stop at once"
            % (money(float(max_cost)), money(poll_cost), poll, rate(spec.hourly_price)),
            "raise --max-cost, or shorten --poll-interval",
        )


def host_owned_paths(spec: RunSpec) -> tuple[str, ...]:
    """Project-relative paths the host writes and a code sync must never delete (custom checkpoint dir, resume file)."""
    owned = []
    for path in (spec.checkpoint_dir, spec.resume_from):
        if path and not path.startswith(("/", "~")) and ".." not in Path(path).parts:
            owned.append(path)
    return tuple(owned)


class Start:
    """One run being started: the steps in order, and the failure rule (module docstring) around them."""

    def __init__(self, store: Store, provider: Provider, request: StartRequest, spec: RunSpec, root: Path) -> None:
        self.store, self.provider, self.request, self.spec, self.root = store, provider, request, spec, root
        self.say = request.say or (lambda message: None)
        self.host: Host | None = None
        self.acquired = False
        self.transport: Transport | None = None
        self.credentials_file: str | None = None  # forwarded AWS credentials written on the host
        self.project_name = spec.project_dir
        self.owner = {
            **controller.controller_identity(),
            "local_root": str(root),
            "download_checkpoints": bool(request.options.get("download_checkpoints", True)),
        }

    def record(self) -> dict[str, Any]:
        """The stored spec: what the host gets, plus what only this controller needs (`controller`)."""
        return {**self.spec.to_dict(), "controller": self.owner}

    def run(self) -> dict[str, Any]:
        spec, store = self.spec, self.store
        store.add_run(self.record(), {"kind": self.provider.name}, {"status": st.PROVISIONING, "seq": 0})
        try:
            forwarded = self.credentials()  # before anything is created: none to forward is exit 4 here
            if spec.resume_s3:
                from .s3checkpoints import mark_resumed

                mark_resumed(spec, self.say)  # so no cleanup, from any machine, deletes what this run resumes from
            self.acquire()
            transport = self.transport = self.provider.transport(self.host_, self.request)
            transport.connect()
            self.project_name = spec.project_dir  # the provider's placement named it; place() may move it
            self.provider.place(transport, spec, self.request)
            if forwarded is not None:
                self.forward(transport, forwarded)
            store.place_run(spec.run_id, self.record(), transport.to_dict())
            self.sync(transport)
            transport.bootstrap(spec.to_dict())
        except KeyboardInterrupt:
            self.abandon()
            raise Detached(
                "interrupted before run %s started" % spec.run_id, "nothing is running; start it again"
            ) from None
        except BaseException:
            self.abandon()
            raise
        return self.launch(transport)

    def credentials(self) -> checkpoint_s3.Forwarded | None:
        mode = self.request.forward_aws_credentials
        if not mode or not (self.spec.checkpoint_s3 or self.spec.data_s3 or self.spec.resume_s3):
            return None
        return checkpoint_s3.credentials(mode, self.say)

    def forward(self, transport: Transport, forwarded: checkpoint_s3.Forwarded) -> None:
        """The credentials into a 0600 file on the host; the spec names the file, never its content."""
        path = self.credentials_file = checkpoint_s3.install(transport, self.spec.run_id, forwarded)
        for block in (self.spec.checkpoint_s3, self.spec.data_s3, self.spec.resume_s3):
            if block is not None:  # each S3 user on the host (uploader, fetcher) finds the file in its own
                block.update(credentials_file=path, credentials_forwarded=True)
        until = " until %s" % forwarded.expires if forwarded.expires else ""
        self.say(
            "forwarded %s AWS credentials%s to %s:%s (0600; deleted when the run ends)"
            % (forwarded.kind, until, transport.host, path)
        )

    @property
    def host_(self) -> Host:
        assert self.host is not None
        return self.host

    def acquire(self) -> None:
        """The host, saved in the store (a new one first as `provisioning`) and linked to the run."""
        self.store.add_event(self.spec.run_id, "provisioning", {"provider": self.provider.name})
        host, self.acquired = self.provider.acquire(self.request)
        self.host = host
        self.spec.hourly_price = host.hourly_price
        check_budget(self.spec)
        key = self.store.upsert_host(
            host.provider,
            host.id,
            address=host.address,
            region=host.region,
            instance_type=host.instance_type,
            hourly_price=host.hourly_price,
            price_source=host.info.get("price_source"),
            state=st.PROVISIONING if self.acquired else host.state,
            info=host.info,
        )
        if self.acquired:
            self.store.record_host_state(key, host.state)
        self.store.set_run_host(self.spec.run_id, key)
        self.store.add_event(self.spec.run_id, "host", {"host_key": key, "acquired": self.acquired})

    def sync(self, transport: Transport) -> None:
        spec, options = self.spec, self.request.options
        if self.provider.syncs_code and options.get("sync", True):
            self.store.update_state(spec.run_id, {"status": st.SYNCING, "seq": 0})
            job = CodeSync(
                self.root,
                spec.project_dir,
                self.project_name,
                list(options.get("includes") or []),
                host_owned_paths(spec),
                bool(options.get("adopt")),
            )
            result = transport.sync_code(job)
            self.say(
                "synced %s -> %s:%s (%d files sent, %.1fs)"
                % (self.root, transport.host, spec.project_dir, result.files_sent, result.seconds)
            )
            if result.warning:
                self.say("warning: " + result.warning)
        data = [Path(p) for p in options.get("data") or []]
        if data:
            transport.stage_data(data, spec.project_dir + "/data")
            self.say("staged %d data path(s) into %s/data" % (len(data), spec.project_dir))

    def launch(self, transport: Transport) -> dict[str, Any]:
        spec, store = self.spec, self.store
        try:
            result = transport.launch(spec.run_dir, spec.to_dict())
        except KeyboardInterrupt:
            if not self.salvage():
                raise Detached(
                    "interrupted before run %s started" % spec.run_id, "nothing is running; start it again"
                ) from None
            raise Detached(
                "interrupted while starting run %s; it keeps going" % spec.run_id,
                "reattach with: runctl runs wait %s   (or stop it: runctl runs stop %s)" % (spec.run_id, spec.run_id),
            ) from None
        except HostError as exc:
            if self.salvage():
                raise HostError(
                    "%s; run %s may have started anyway" % (exc.message, spec.run_id),
                    "check it with: runctl runs status %s" % spec.run_id,
                ) from None
            raise
        except BaseException:
            self.salvage()
            raise
        if result.get("write_error"):
            self.refused_write(result)
        state = result.get("state") or transport.probe(spec.run_dir)
        if not result.get("ok") and not result.get("setup_failed"):
            if state.get("seq") is None or (state.get("status") == st.FAILED and not state.get("started_at")):
                # The command itself could not start (or the agent left no status): no run to keep.
                self.abandon()
                if state.get("seq") is None:
                    raise HostError(
                        "run %s did not start on %s: %s" % (spec.run_id, transport.host, result.get("error"))
                    )
                raise UsageError(str(result.get("error")), "fix the command and start the run again")
        store.update_state(spec.run_id, state)
        store.add_event(
            spec.run_id,
            "launched",
            {"pid": result.get("pid"), "agent_pid": result.get("agent_pid"), "host": transport.host},
        )
        if result.get("checkpoint_s3_error"):
            # The host cannot use the bucket its checkpoints go to: nothing was trained (exit 4).
            error = str(result.get("error"))
            raise HostError(
                "run %s did not start on %s: %s" % (spec.run_id, transport.host, error),
                result.get("checkpoint_s3_hint")
                or checkpoint_s3.start_hint(spec.provider, error, self.credentials_file is not None),
            )
        if not result.get("ok") and not result.get("setup_failed"):
            raise RunctlError(
                "run %s could not start on %s: %s" % (spec.run_id, transport.host, result.get("error")),
                "check the script on the host: runctl runs logs %s" % spec.run_id,
            )
        return state

    def salvage(self) -> bool:
        """After the launch went wrong: keep the record if the agent wrote a status, else abandon."""
        assert self.transport is not None
        try:
            state = self.transport.probe(self.spec.run_dir)
        except Exception:
            state = {}
        if state.get("seq") is None:
            self.abandon()
            return False
        self.store.update_state(self.spec.run_id, state)
        self.store.add_event(self.spec.run_id, "launched", {"salvaged": True, "host": self.spec.host})
        return True

    def abandon(self) -> None:
        """Nothing at all: the record goes, a run dir made here goes, an acquired host is released."""
        self.store.delete_run(self.spec.run_id)
        if self.credentials_file is not None and self.transport is not None:
            checkpoint_s3.remove(self.transport, self.credentials_file)  # no agent will: none was launched
        if self.spec.resume_s3:
            from .s3checkpoints import unmark_resumed

            unmark_resumed(self.spec)
        if self.spec.provider == "local":
            shutil.rmtree(self.spec.run_dir, ignore_errors=True)
        if self.host is not None and self.acquired:
            host, self.acquired = self.host, False
            try:
                released = self.provider.release(host, "terminate")
            except RunctlError as exc:  # the start's own error is what the user must see first
                self.say("warning: could not release host %s: %s" % (host.id, exc.message))
                return
            self.store.record_host_state(host_key(host.provider, host.id), released.state)

    def refused_write(self, result: dict[str, Any]) -> None:
        """The host refused to write the run dir: a full disk is a failed run (recorded), read-only leaves none."""
        spec, store = self.spec, self.store
        info = result["write_error"]
        error = WriteFailed(info.get("kind", ""), info.get("path", ""), "" if spec.provider == "local" else spec.host)
        if error.kind != "disk_full":
            self.abandon()
            raise error
        state = result.get("state") or {}
        store.update_state(
            spec.run_id,
            {
                **state,
                "status": st.FAILED,
                "termination_status": st.T_FAILED,
                "termination_message": str(result.get("error") or error.message),
                "disk_full": error.path,
                "ended_at": state.get("ended_at") or time.time(),
                "seq": max(int(state.get("seq") or 0), 1),
            },
        )
        store.add_event(spec.run_id, "disk_full", {"path": error.path})
        raise error
