"""`runctl local`: runs on this machine, and status of plain project directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..params import TrainOptions
from . import options as o
from .common import Output, emit_json, exit_with, say
from .trainopts import train_command

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)


@train_command(app)
def train(
    opts: TrainOptions,
    script: Annotated[str, typer.Argument(help="Training script (.py runs with --python; else an executable)")],
    script_args: o.ScriptArgs = None,
    project_dir: Annotated[
        str | None, typer.Option("--project-dir", help="Project root (default: nearest .git/pyproject.toml)")
    ] = None,
    python: Annotated[str | None, typer.Option("--python", help="Python for .py scripts")] = None,
    hourly_price: o.HourlyPriceOpt = None,
) -> None:
    """Start SCRIPT detached on this machine; print its run id (or follow it with --wait)."""
    from ..pipeline import StartRequest
    from .starting import run_train

    request = StartRequest(
        "local", script, project_dir, opts.name, opts.env, python, script_args or [], opts.notify, opts.metrics_regex,
        opts.checkpoint_dir, opts.resume_from, None, opts.tty, list(opts.checkpoint_glob), opts.policies(),
        {"hourly_price": hourly_price}, checkpoint_s3=opts.checkpoint_s3,
        forward_aws_credentials=opts.forward_aws_credentials, resume=opts.resume, data_s3=opts.data_s3,
    )  # fmt: skip
    run_train(request, opts.output, opts.wait, opts.timeout, "here", opts)


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
