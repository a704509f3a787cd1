"""The `runctl` entry point: sub-apps, and one place that turns errors into exit codes."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from .. import __version__
from ..core.errors import HostError, RunctlError
from . import checkpoint, local, runs, ssh

app = typer.Typer(
    name="runctl",
    help="Run ML training on rented machines; know exactly when and how it ended.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(local.app, name="local")
app.add_typer(runs.app, name="runs")
app.add_typer(ssh.app, name="ssh")
app.add_typer(checkpoint.app, name="checkpoint")


def _version(value: bool) -> None:
    if value:
        print("runctl %s" % __version__)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit")
    ] = False,
) -> None:
    """Run ML training on rented machines; know exactly when and how it ended."""


def expected(exc: Exception) -> RunctlError | None:
    """The actionable form of a failure outside runctl's own checks: a full or read-only disk, a bad store."""
    from ..core.fsutil import write_failed

    if isinstance(exc, OSError):
        failure = write_failed(exc)
        if failure is not None and failure.kind == "permission":
            # Not necessarily a write: name the path and the cause only.
            return HostError(
                "cannot access %s: permission denied" % failure.path, "fix its permissions, or use another path"
            )
        return failure
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None and isinstance(exc, sqlite3.Error):
        from .. import paths
        from ..store import store_error

        return store_error(exc, paths.database())
    return None


def run() -> None:
    """Console-script entry: expected errors become one or two lines and their exit code."""
    debug = os.environ.get("RUNCTL_DEBUG") == "1"
    try:
        try:
            app(prog_name="runctl")
        except Exception as exc:
            if isinstance(exc, RunctlError):
                raise
            known = expected(exc)
            if known is None:
                raise
            raise known from exc
    except RunctlError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write("runctl: %s\n" % exc.message)
        if exc.hint:
            sys.stderr.write("  %s\n" % exc.hint)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if debug:
            raise
        sys.stderr.write("runctl: internal error: %s: %s\n" % (type(exc).__name__, exc))
        sys.stderr.write("  rerun with RUNCTL_DEBUG=1 for a traceback\n")
        sys.exit(1)
