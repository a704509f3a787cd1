"""`runctl local`: runs on this machine, and status of plain project directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..core.errors import Detached, UsageError
from . import options as o
from .common import Output, duration_option, emit_json, exit_with, say, store

app = typer.Typer(help="Run training on this machine.", no_args_is_help=True, rich_markup_mode=None)


@app.command()
def train(
    script: Annotated[str, typer.Argument(help="Training script (.py runs with --python; else an executable)")],
    script_args: o.ScriptArgs = None,
    project_dir: Annotated[
        str | None, typer.Option("--project-dir", help="Project root (default: nearest .git/pyproject.toml)")
    ] = None,
    name: o.NameOpt = None,
    env: o.EnvOpt = None,
    python: Annotated[str | None, typer.Option("--python", help="Python for .py scripts")] = None,
    wait: o.WaitOpt = False,
    timeout: o.TimeoutOpt = None,
    output: o.OutputOpt = Output.text,
    checkpoint_dir: o.CheckpointDirOpt = None,
    resume_from: o.ResumeOpt = None,
    metrics_regex: o.MetricsRegexOpt = None,
    notify: o.NotifyOpt = None,
    auto_stop_loss: o.AutoStopLoss = None,
    auto_stop_patience: o.AutoStopPatience = None,
    exit_grace: o.ExitGrace = None,
    stall_polls: o.StallPolls = None,
    poll_interval: o.PollInterval = None,
    hang_timeout: o.HangTimeout = None,
    on_hang: o.OnHang = None,
    max_duration: o.MaxDuration = None,
    on_nan: o.OnNan = None,
    stop_grace: o.StopGrace = None,
) -> None:
    """Start SCRIPT detached on this machine; print its run id (or follow it with --wait)."""
    from .. import controller
    from ..config import load_policies, merge_policies
    from ..transport.local import LocalTransport
    from .waiting import wait_for

    wait_timeout = duration_option(timeout, "--timeout")
    if wait_timeout is not None and not wait:
        raise UsageError("--timeout only applies with --wait", "to limit the run itself use --max-duration")
    flags = o.policy_flags(
        auto_stop_loss,
        auto_stop_patience,
        exit_grace,
        stall_polls,
        poll_interval,
        hang_timeout,
        on_hang,
        max_duration,
        on_nan,
        stop_grace,
    )
    spec = controller.local_spec(
        script,
        project_dir,
        name,
        env or [],
        python,
        script_args or [],
        {},
        notify or [],
        metrics_regex,
        checkpoint_dir,
        resume_from,
    )
    config = load_policies(Path(spec.project_dir))
    spec.notify = list(config.pop("notify", [])) + spec.notify
    spec.policies = merge_policies(config, flags)
    db = store()
    state = controller.start(db, spec, LocalTransport())
    row = db.get(spec.run_id)
    assert row is not None
    if not wait:
        if output == Output.json:
            emit_json(controller.view(row))
        else:
            print(spec.run_id)
            say("started run %s (%s), pid %s" % (spec.run_id, spec.name, state.get("pid")))
            say("  follow: runctl runs logs %s --follow" % spec.run_id)
            say("  wait:   runctl runs wait %s" % spec.run_id)
            say("  stop:   runctl runs stop %s" % spec.run_id)
        return
    try:
        if output == Output.text:
            say("run %s (%s) started, pid %s; Ctrl-C detaches" % (spec.run_id, spec.name, state.get("pid")))
        code = wait_for(db, row, output, wait_timeout, stream_log=True)
    except KeyboardInterrupt:
        raise Detached(
            "detached from run %s; it keeps going" % spec.run_id, "reattach: runctl runs wait %s" % spec.run_id
        ) from None
    exit_with(code)


@app.command()
def status(
    project_dir: Annotated[str, typer.Option("--project-dir", help="Project dir to inspect")] = ".",
    output: o.OutputOpt = Output.text,
) -> None:
    """How the latest training in a project dir ended, from its files (works without runctl runs too)."""

    from ..agent import ops
    from ..controller import check_project_dir
    from ..core import layout
    from ..core.fsutil import read_text

    root = Path(project_dir).expanduser().resolve()
    check_project_dir(root, project_dir)
    latest = (read_text(str(root / layout.LATEST_RUN)) or "").strip()
    if latest and (root / layout.RUNS_DIR / latest / layout.STATUS).exists():
        result = ops.probe(str(root / layout.RUNS_DIR / latest))
        result = {**result, "project_dir": str(root), "evidence": "runctl run %s" % latest}
    else:
        result = ops.plain_status(str(root))
    if output == Output.json:
        emit_json(result)
    else:
        reason = result.get("termination_status") or ""
        print("%s%s" % (result.get("status"), " (%s)" % reason if reason and reason != result.get("status") else ""))
        say("  %s" % (result.get("termination_message") or ""))
        say("  evidence: %s" % result.get("evidence"))
    status_value = result.get("status")
    exit_with(0 if status_value in ("completed", "running") else 1)
