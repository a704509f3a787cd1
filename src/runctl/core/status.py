"""The one place that knows run statuses, their order, and what each means for exit codes."""

from __future__ import annotations

from typing import Optional

PENDING = "pending"
PROVISIONING = "provisioning"
SYNCING = "syncing"
SETTING_UP = "setting_up"
RUNNING = "running"
STOPPING = "stopping"
COMPLETED = "completed"
FAILED = "failed"
STOPPED = "stopped"
INTERRUPTED = "interrupted"
LOST = "lost"

ACTIVE_ORDER = (PENDING, PROVISIONING, SYNCING, SETTING_UP, RUNNING, STOPPING)
TERMINAL = frozenset({COMPLETED, FAILED, STOPPED, INTERRUPTED, LOST})
ALL = ACTIVE_ORDER + tuple(sorted(TERMINAL))

# Why a run ended.
T_AUTO_COMPLETE = "auto_complete"
T_AUTO_LOW_LOSS = "auto_low_loss"
T_USER_STOP = "user_stop"
T_STALL = "stall"
T_HANG = "hang"
T_MAX_DURATION = "max_duration"
T_BUDGET = "budget"
T_DIVERGED = "diverged"
T_SPOT = "spot_interruption"
T_FAILED = "failed"
T_LOST = "lost"

# The status a run ends in when a stop was initiated for a given reason. A policy that means
# "the work is done" ends as completed; a stop before the work was done ends as stopped.
STATUS_FOR_TERMINATION = {
    T_AUTO_COMPLETE: COMPLETED,
    T_AUTO_LOW_LOSS: COMPLETED,
    T_STALL: STOPPED,
    T_USER_STOP: STOPPED,
    T_HANG: STOPPED,
    T_MAX_DURATION: STOPPED,
    T_BUDGET: STOPPED,
    T_DIVERGED: FAILED,
    T_SPOT: INTERRUPTED,
    T_FAILED: FAILED,
    T_LOST: LOST,
}


def is_terminal(status: str) -> bool:
    return status in TERMINAL


def can_advance(current: str, new: str) -> bool:
    """Statuses are monotonic: a terminal status never changes and active ones only move forward."""
    if current in TERMINAL:
        return False
    if new in TERMINAL:
        return True
    try:
        return ACTIVE_ORDER.index(new) >= ACTIVE_ORDER.index(current)
    except ValueError:
        return False


def label(status: str, termination_status: Optional[str]) -> str:
    """How a status reads to a user: `stopped (stall)`; the reason is left out where it only repeats
    the status (`failed`, `lost`)."""
    if termination_status and termination_status not in (T_FAILED, T_LOST):
        return "%s (%s)" % (status, termination_status)
    return status


def exit_code_for(status: Optional[str]) -> int:
    """CLI exit code for a finished run: 0 only for a run that provably completed."""
    return 0 if status == COMPLETED else 1
