"""The `runctl` entry point: sub-apps loaded on demand, and one place that turns errors into exit codes."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .. import __version__
from ..core.errors import HostError, RunctlError

# Command groups by module, each imported and built only when the command line reaches it: `runctl
# --help` needs just these lines (and so never imports pydantic, of which the train options are a
# model), and a command builds its own group only. A new provider's group is one line here.
GROUPS = {
    "local": ("runctl.cli.local", "Run training on this machine."),
    "runs": ("runctl.cli.runs", "Inspect, follow, wait for and stop runs."),
    "ssh": ("runctl.cli.ssh", "Run training on any SSH host (OpenSSH + rsync)."),
    "aws": ("runctl.cli.aws", "Create, train on, stop and terminate AWS EC2 instances."),
    "lambda": ("runctl.cli.lambda_", "Launch, train on and terminate Lambda Labs instances (proven gone)."),
    "workflow": ("runctl.cli.workflow", "Create or start an instance, train, pull checkpoints, release it."),
    "checkpoint": ("runctl.cli.checkpoint", "List and download run checkpoints."),
    "resources": ("runctl.cli.resources", "Every instance on every cloud, its cost so far; sweep idle ones."),
    "cost": ("runctl.cli.cost", "What was spent, per host, run or day, from recorded usage."),
    "dashboard": ("runctl.cli.dashboard", "Every run live in the browser: loss chart, log, cost, Stop."),
}


class _Commands(MutableMapping[str, Any]):
    """The top-level group's commands: a group in GROUPS is built the first time it is looked up."""

    def __init__(self, built: Mapping[str, Any]) -> None:
        self.built = dict(built)

    def __getitem__(self, name: str) -> Any:
        if name in GROUPS and name not in self.built:
            module, help_text = GROUPS[name]
            loaded = importlib.import_module(module)
            # A module with `command` is one command (`runctl cost`), not a group of them.
            single = getattr(loaded, "command", None)
            group = typer.main.get_command(single) if single is not None else typer.main.get_group(loaded.app)
            group.name, group.help = name, help_text
            self.built[name] = group
        return self.built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self.built[name] = command

    def __delitem__(self, name: str) -> None:
        del self.built[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*GROUPS, *(name for name in self.built if name not in GROUPS)])

    def __len__(self) -> int:
        return len(set(GROUPS) | set(self.built))


class Groups(TyperGroup):
    """The top-level group: its help lists GROUPS from their help lines; a group is built when invoked."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.commands = _Commands(self.commands)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_text) for name, (_, help_text) in GROUPS.items()])


app = typer.Typer(
    name="runctl",
    cls=Groups,
    help="Run ML training on rented machines; know exactly when and how it ended.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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


# Flags whose value may be left out, and the value they then take. Click (as Typer vendors it) has
# no optional-value options, so a bare flag before `--` is given its default value here.
OPTIONAL_VALUES = {"--forward-aws-credentials": "session"}


def with_optional_values(argv: list[str]) -> list[str]:
    """`argv` with each bare flag of OPTIONAL_VALUES written `--flag=VALUE` (script arguments after
    `--` untouched); `--flag=static` stays as it is."""
    out: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":
            return out + argv[index:]
        out.append("%s=%s" % (arg, OPTIONAL_VALUES[arg]) if arg in OPTIONAL_VALUES else arg)
    return out


def run() -> None:
    """Console-script entry: expected errors become one or two lines and their exit code."""
    try:  # Typer >= 0.2x vendors Click; older ones use Click itself
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover
        from click import exceptions as click_errors  # type: ignore[no-redef]

    no_args_is_help = getattr(click_errors, "NoArgsIsHelpError", ())  # Click < 8.2 just prints the help
    debug = os.environ.get("RUNCTL_DEBUG") == "1"
    if len(sys.argv) > 1 and sys.argv[1] not in ("-h", "--help", "--version"):
        from ..idle import warn

        warn()  # an idle instance billing for nothing, first
    try:
        try:
            code = app(prog_name="runctl", args=with_optional_values(sys.argv[1:]), standalone_mode=False)
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
