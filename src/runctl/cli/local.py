"""`runctl local`: runs on this machine, and status of plain project directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import options as o
from .common import Output, emit_json, exit_with, say

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
    tty: o.TtyOpt = False,
    checkpoint_glob: o.CheckpointGlobOpt = None,
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
    from ..pipeline import StartRequest
    from .starting import run_train, wait_timeout

    seconds = wait_timeout(wait, timeout)
    flags = o.policy_flags(
        auto_stop_loss, auto_stop_patience, exit_grace, stall_polls, poll_interval,
        hang_timeout, on_hang, max_duration, on_nan, stop_grace, notify,
    )  # fmt: skip
    request = StartRequest(
        "local", script, project_dir, name, env or [], python, script_args or [], notify or [], metrics_regex,
        checkpoint_dir, resume_from, None, tty, checkpoint_glob or [], flags,
    )  # fmt: skip
    run_train(request, output, wait, seconds, "here")


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
