"""Flags shared by every `train` command, declared once; their values are checked by `runctl.params`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..core.policies import DEFAULTS
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
    typer.Option(
        "--auto-stop-patience",
        help="...for N consecutive reports (default %d)" % DEFAULTS["auto_stop_patience"],
        rich_help_panel=POLICY,
    ),
]
ExitGrace = Annotated[
    str | None,
    typer.Option(
        "--exit-grace",
        help="Stop a process still alive this long after its marker (%gs)" % DEFAULTS["exit_grace"],
        rich_help_panel=POLICY,
    ),
]
StallPolls = Annotated[
    int | None,
    typer.Option(
        "--stall-polls",
        help="Final epoch, step unchanged for N polls: complete (%d)" % DEFAULTS["stall_polls"],
        rich_help_panel=POLICY,
    ),
]
PollInterval = Annotated[
    str | None,
    typer.Option(
        "--poll-interval", help="Seconds between stall polls (%gs)" % DEFAULTS["poll_interval"], rich_help_panel=POLICY
    ),
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
        help="After STOP_TRAINING, wait this long before SIGTERM (%gs)" % DEFAULTS["stop_grace"],
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
    notify: list[str] | None = None,
) -> dict[str, Any]:
    """Policy values from flags, checked by the one policy model; None means "not given" so the config
    file can fill it. `--notify` is checked here too, but travels in the spec, not in the policies."""
    from ..params import from_flags

    checked = from_flags(
        {
            "auto_stop_loss": auto_stop_loss,
            "auto_stop_patience": auto_stop_patience,
            "exit_grace": exit_grace,
            "stall_polls": stall_polls,
            "poll_interval": poll_interval,
            "hang_timeout": hang_timeout,
            "on_hang": on_hang,
            "max_duration": max_duration,
            "on_nan": on_nan,
            "stop_grace": stop_grace,
            "notify": notify,
        }
    )
    checked.pop("notify", None)
    return checked
