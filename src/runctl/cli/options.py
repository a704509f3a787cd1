"""Flags shared by every `train` command, declared once."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..core.durations import parse_duration
from ..core.errors import UsageError
from .common import Output

POLICY = "Stop policies"

OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="text or json")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Run name (default: the script's name)")]
EnvOpt = Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE for the script (repeatable)")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Stream the log and return when the run ends")]
TimeoutOpt = Annotated[
    str | None,
    typer.Option("--timeout", help="With --wait: stop waiting after DURATION (exit 3; the run goes on)"),
]
ScriptArgs = Annotated[list[str] | None, typer.Argument(help="Arguments for the script, after --")]
CheckpointDirOpt = Annotated[
    str | None, typer.Option("--checkpoint-dir", help="Checkpoint dir (default: checkpoints/ in the project)")
]
ResumeOpt = Annotated[
    str | None,
    typer.Option("--resume-from", help="Checkpoint to resume from (RUNCTL_RESUME_FROM for the script)"),
]
MetricsRegexOpt = Annotated[
    str | None,
    typer.Option(
        "--metrics-regex",
        help=r"Regex with named groups for metrics in log lines, e.g. 'acc=(?P<acc>[\d.]+)'",
    ),
]
TtyOpt = Annotated[
    bool,
    typer.Option(
        "--tty",
        help="Run the script under a pseudo-terminal, for libraries that print progress only to a terminal",
    ),
]
CheckpointGlobOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--checkpoint-glob",
        metavar="PATTERN",
        help="Checkpoints outside the checkpoint dir, relative to the project (repeatable; "
        "default: lightning_logs/*/checkpoints/* and *.pt|*.ckpt|... directly under out*/)",
    ),
]
NotifyOpt = Annotated[
    list[str] | None,
    typer.Option("--notify", help="POST run events as JSON to URL (repeatable; Slack-compatible)"),
]

AutoStopLoss = Annotated[
    float | None,
    typer.Option("--auto-stop-loss", help="Stop when loss < X (0 or negative: off)", rich_help_panel=POLICY),
]
AutoStopPatience = Annotated[
    int | None,
    typer.Option("--auto-stop-patience", help="...for N consecutive reports (default 1)", rich_help_panel=POLICY),
]
ExitGrace = Annotated[
    str | None,
    typer.Option(
        "--exit-grace",
        help="Stop a process still alive this long after its marker (60s)",
        rich_help_panel=POLICY,
    ),
]
StallPolls = Annotated[
    int | None,
    typer.Option("--stall-polls", help="Final epoch, step unchanged for N polls: complete (3)", rich_help_panel=POLICY),
]
PollInterval = Annotated[
    str | None,
    typer.Option("--poll-interval", help="Seconds between stall polls (5s)", rich_help_panel=POLICY),
]
HangTimeout = Annotated[
    str | None,
    typer.Option("--hang-timeout", help="No log output and no metric for DURATION: hang", rich_help_panel=POLICY),
]
OnHang = Annotated[str | None, typer.Option("--on-hang", help="stop (default) or notify", rich_help_panel=POLICY)]
MaxDuration = Annotated[str | None, typer.Option("--max-duration", help="Stop after DURATION", rich_help_panel=POLICY)]
OnNan = Annotated[
    str | None,
    typer.Option("--on-nan", help="NaN/inf loss: stop (default) or ignore", rich_help_panel=POLICY),
]
StopGrace = Annotated[
    str | None,
    typer.Option(
        "--stop-grace",
        help="After STOP_TRAINING, wait this long before SIGTERM (30s)",
        rich_help_panel=POLICY,
    ),
]


def policy_flags(
    auto_stop_loss: float | None,
    auto_stop_patience: int | None,
    exit_grace: str | None,
    stall_polls: int | None,
    poll_interval: str | None,
    hang_timeout: str | None,
    on_hang: str | None,
    max_duration: str | None,
    on_nan: str | None,
    stop_grace: str | None,
) -> dict[str, Any]:
    """Validated policy values from flags; None means "not given" so the config file can fill it."""

    def seconds(value: str | None, flag: str) -> float | None:
        if value is None:
            return None
        parsed = parse_duration(value, flag)
        if parsed <= 0 and flag != "--exit-grace":
            raise UsageError("%s must be positive, got %r" % (flag, value), "for example: %s 15m" % flag)
        return parsed

    def choice(value: str | None, flag: str, allowed: tuple[str, ...]) -> str | None:
        if value is not None and value not in allowed:
            raise UsageError("%s must be one of %s, got %r" % (flag, ", ".join(allowed), value))
        return value

    for flag, count in (("--auto-stop-patience", auto_stop_patience), ("--stall-polls", stall_polls)):
        if count is not None and count < 1:
            raise UsageError("%s must be at least 1, got %d" % (flag, count))
    return {
        "auto_stop_loss": auto_stop_loss,
        "auto_stop_patience": auto_stop_patience,
        "exit_grace": seconds(exit_grace, "--exit-grace"),
        "stall_polls": stall_polls,
        "poll_interval": seconds(poll_interval, "--poll-interval"),
        "hang_timeout": seconds(hang_timeout, "--hang-timeout"),
        "on_hang": choice(on_hang, "--on-hang", ("stop", "notify")),
        "max_duration": seconds(max_duration, "--max-duration"),
        "on_nan": choice(on_nan, "--on-nan", ("stop", "ignore")),
        "stop_grace": seconds(stop_grace, "--stop-grace"),
    }


def output_flags(spec: Any, tty: bool, checkpoint_globs: list[str] | None) -> None:
    """--tty and --checkpoint-glob onto a spec, checked first (a bad glob starts nothing)."""
    from ..core.checkpoints import check_glob

    for pattern in checkpoint_globs or []:
        problem = check_glob(pattern)
        if problem:
            raise UsageError(
                "--checkpoint-glob %r %s" % (pattern, problem),
                "for example: --checkpoint-glob 'out/*.pt'",
            )
    spec.tty = bool(tty)
    spec.checkpoint_globs = list(checkpoint_globs or [])
