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


def _usage_lines(exc: Exception) -> tuple[str, str | None]:
    """A Click usage error as runctl's two lines: what is wrong, and where the command's help is.

    Click's own form is four lines (usage, "Try ...", a blank line, "Error: ..."), or a Rich box.
    """
    message = " ".join(str(getattr(exc, "format_message", lambda: exc)()).split()).replace("Value error, ", "")
    if message[:2] != message[:2].upper():  # "No such option" reads "no such option"; "URL ..." stays
        message = message[:1].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None)
    return message, "see: %s --help" % command if command else None


def _fail(message: str, hint: str | None, code: int) -> None:
    sys.stderr.write("runctl: %s\n" % message)
    if hint:
        sys.stderr.write("  %s\n" % hint)
    sys.exit(code)


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
    try:  # Typer >= 0.2x vendors Click; older ones use Click itself
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover
        from click import exceptions as click_errors  # type: ignore[no-redef]

    no_args_is_help = getattr(click_errors, "NoArgsIsHelpError", ())  # Click < 8.2 just prints the help
    debug = os.environ.get("RUNCTL_DEBUG") == "1"
    try:
        try:
            code = app(prog_name="runctl", standalone_mode=False)
        except (click_errors.ClickException, typer.Abort, RunctlError):
            raise
        except Exception as exc:
            known = expected(exc)
            if known is None:
                raise
            raise known from exc
    except no_args_is_help as exc:
        exc.show()  # the help itself, as Click shows it
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:
        if debug:
            import traceback

            traceback.print_exc()
        _fail(*_usage_lines(exc), exc.exit_code)
    except typer.Abort:
        _fail("aborted", None, 1)
    except RunctlError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        _fail(exc.message, exc.hint, exc.exit_code)
    except Exception as exc:
        if debug:
            raise
        _fail("internal error: %s: %s" % (type(exc).__name__, exc), "rerun with RUNCTL_DEBUG=1 for a traceback", 1)
    sys.exit(code if isinstance(code, int) else 0)
