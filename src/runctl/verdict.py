"""How a run's state reads to people: its badge (seed 004's styled termination status) and the lines
saying how and why it ended. `runs status`, the HTML report and the dashboard all say it this way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .core import status as st
from .core.durations import format_duration

GOOD, WARN, BAD, ACTIVE = "good", "warn", "bad", "active"
CHECK, SQUARE, CROSS, DOT = "\u2714", "\u25a0", "\u2716", "\u25cf"

# termination_status -> (tone, icon, label); seed 004 named the first three.
_BY_TERMINATION = {
    st.T_AUTO_COMPLETE: (GOOD, CHECK, "Training Complete"),
    st.T_AUTO_LOW_LOSS: (GOOD, CHECK, "Auto-Stopped (Low Loss)"),
    st.T_USER_STOP: (WARN, SQUARE, "Stopped by User"),
    st.T_STALL: (WARN, SQUARE, "Stopped (Stalled)"),
    st.T_HANG: (WARN, SQUARE, "Stopped (Hung)"),
    st.T_MAX_DURATION: (WARN, SQUARE, "Stopped (Max Duration)"),
    st.T_BUDGET: (WARN, SQUARE, "Stopped (Budget Spent)"),
    st.T_SPOT: (WARN, SQUARE, "Interrupted (Spot Reclaimed)"),
    st.T_DIVERGED: (BAD, CROSS, "Failed (Loss Diverged)"),
    st.T_FAILED: (BAD, CROSS, "Failed"),
    st.T_LOST: (BAD, CROSS, "Lost"),
}
_BY_STATUS = {
    st.COMPLETED: (GOOD, CHECK, "Completed"),
    st.FAILED: (BAD, CROSS, "Failed"),
    st.LOST: (BAD, CROSS, "Lost"),
    st.STOPPED: (WARN, SQUARE, "Stopped"),
    st.INTERRUPTED: (WARN, SQUARE, "Interrupted"),
}


@dataclass(frozen=True)
class Badge:
    tone: str  # good | warn | bad | active
    icon: str
    label: str
    message: str  # the termination message shown below the label ("" while the run goes)


def badge(run: dict[str, Any]) -> Badge:
    """The run's badge: green check for a finished job, orange square for a stop before the work was
    done, red cross with the message for failures; a run still going shows its status."""
    status = str(run.get("status") or "")
    message = str(run.get("termination_message") or "")
    if not st.is_terminal(status):
        return Badge(ACTIVE, DOT, status.replace("_", " ").capitalize() or "Unknown", "")
    found = _BY_TERMINATION.get(str(run.get("termination_status") or "")) or _BY_STATUS.get(status)
    tone, icon, label = found or (WARN, SQUARE, status.capitalize())
    if status in (st.FAILED, st.LOST) and tone != BAD:
        tone, icon = BAD, CROSS  # whatever stopped it, a failed run is red
    return Badge(tone, icon, label, message)


def end_reason(run: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, text) lines of how and why the run ended, or where it stands: kind is "status" (the
    label, with how long it took), "message" (the termination message), "exit" (code or signal),
    "warning" or "notice" (what the controller knows beyond the run dir)."""
    took = ""
    if run.get("started_at") and run.get("ended_at"):
        took = " after %s" % format_duration(float(run["ended_at"]) - float(run["started_at"]))
    lines = [("status", st.label(str(run.get("status")), run.get("termination_status")) + took)]
    if run.get("termination_message"):
        lines.append(("message", str(run["termination_message"])))
    if run.get("exit_signal"):
        lines.append(("exit", "ended by signal %s" % run["exit_signal"]))
    elif run.get("exit_code") is not None:
        lines.append(("exit", "exit code %s" % run["exit_code"]))
    for key in ("warning", "notice"):
        if run.get(key):
            lines.append((key, str(run[key])))
    return lines
