"""`runctl checkpoint`: see and fetch a run's checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import options as o
from .common import Output, emit_json, say, store

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
RunId = Annotated[str, typer.Argument(help="Run id or a unique prefix of it")]


@app.command("list")
def list_(
    run_id: Annotated[str | None, typer.Argument(help="Run id or a unique prefix of it")] = None,
    instance_id: Annotated[
        str | None, typer.Option("--instance-id", help="The latest run on this EC2 instance (id or Name tag)")
    ] = None,
    region: Annotated[str | None, typer.Option("--region", help="AWS region, for --instance-id by Name")] = None,
    output: o.OutputOpt = Output.text,
) -> None:
    """Checkpoint files in the run's checkpoint dir, newest first (* = written by this run)."""
    import time

    from ..checkpointing import checkpoints
    from ..core.errors import UsageError

    if (run_id is None) == (instance_id is None):
        raise UsageError(
            "name one run: a RUN_ID or --instance-id" + (", not both" if run_id else ""),
            "for example: runctl checkpoint list RUN_ID, or: runctl checkpoint list --instance-id i-0123456789abcdef0",
        )
    db = store()
    if instance_id is not None:
        from ..providers.aws import latest_run

        row = latest_run(db, instance_id, region)[1]
    else:
        assert run_id is not None
        row = db.resolve(run_id)
    listing = checkpoints(row)
    if output == Output.json:
        emit_json(listing)
        return
    say("checkpoint dir %s on %s" % (listing["checkpoint_dir"], row["host"]))
    if not listing["files"]:
        say("no checkpoints yet")
    for item in listing["files"]:
        print(
            "%s %10.1f MB  %s  %s"
            % ("*" if item["this_run"] else " ", item["size"] / 1e6, time.strftime("%Y-%m-%d %H:%M:%S",
               time.localtime(item["mtime"])), item["path"])
        )  # fmt: skip


@app.command()
def download(
    run_id: RunId,
    dest: Annotated[str | None, typer.Option("--dest", help="Local dir (default ./checkpoints/<run_id>/)")] = None,
    all_files: Annotated[bool, typer.Option("--all", help="Also files written before this run")] = False,
) -> None:
    """Pull the run's checkpoints with rsync (resumable, with progress)."""
    import sys

    from .. import providers
    from ..checkpointing import download_checkpoints, skipped_warning
    from ..providers.base import DOWNLOAD_CHECKPOINTS, require

    db = store()
    row = db.resolve(run_id)
    require(providers.get(row["provider"]), DOWNLOAD_CHECKPOINTS, run_id=row["run_id"])
    target, done = download_checkpoints(
        db, row, Path(dest).expanduser().absolute() if dest else None, all_files, progress=sys.stderr.isatty()
    )
    print(target)
    if done.allowed:
        say("%d file(s) in %s" % (len(done.allowed), target))
    elif not done.skipped:
        say("no checkpoints to download for run %s" % row["run_id"])
    if done.skipped:
        say(skipped_warning(target, done.skipped))
