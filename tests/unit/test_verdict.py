"""runctl.verdict: a run's badge (seed 004's styling) and how and why it ended, as people read it."""

from __future__ import annotations

from typing import Any

import pytest

from runctl.verdict import badge, end_reason


def run(status: str, termination: str | None = None, message: str = "", **more: Any) -> dict[str, Any]:
    return {"status": status, "termination_status": termination, "termination_message": message, **more}


@pytest.mark.parametrize(
    ("status", "termination", "tone", "icon", "label"),
    [
        ("completed", "auto_complete", "good", "\u2714", "Training Complete"),
        ("completed", "auto_low_loss", "good", "\u2714", "Auto-Stopped (Low Loss)"),
        ("stopped", "user_stop", "warn", "\u25a0", "Stopped by User"),
        ("stopped", "max_duration", "warn", "\u25a0", "Stopped (Max Duration)"),
        ("interrupted", "spot_interruption", "warn", "\u25a0", "Interrupted (Spot Reclaimed)"),
        ("failed", "failed", "bad", "\u2716", "Failed"),
        ("failed", "diverged", "bad", "\u2716", "Failed (Loss Diverged)"),
        ("lost", "lost", "bad", "\u2716", "Lost"),
        ("failed", "user_stop", "bad", "\u2716", "Stopped by User"),  # a stop that failed is still red
        ("completed", None, "good", "\u2714", "Completed"),
        ("stopped", "something_new", "warn", "\u25a0", "Stopped"),
    ],
)
def test_badges(status: str, termination: str | None, tone: str, icon: str, label: str) -> None:
    mark = badge(run(status, termination, "why"))
    assert (mark.tone, mark.icon, mark.label, mark.message) == (tone, icon, label, "why")


def test_a_run_still_going_shows_its_status_without_a_message() -> None:
    mark = badge(run("setting_up", None, "not yet"))
    assert (mark.tone, mark.label, mark.message) == ("active", "Setting up", "")


def test_end_reason_lines() -> None:
    lines = end_reason(
        run(
            "failed",
            "failed",
            "exited with code 3",
            exit_code=3,
            started_at=100.0,
            ended_at=175.0,
            notice="host stopped",
        )
    )
    assert lines == [
        ("status", "failed after 1m15s"),
        ("message", "exited with code 3"),
        ("exit", "exit code 3"),
        ("notice", "host stopped"),
    ]
    signalled = end_reason(run("stopped", "user_stop", "stopped by the user", exit_code=None, exit_signal="SIGTERM"))
    assert signalled == [
        ("status", "stopped (user_stop)"),
        ("message", "stopped by the user"),
        ("exit", "ended by signal SIGTERM"),
    ]
