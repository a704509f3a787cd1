"""How a run ended, decided from observed facts in the order of trust of the design.

1. a recorded exit code (exact; non-zero is `failed` whatever the log or marker says);
2. a completion marker that is non-empty, stable for `MARKER_STABLE_SECONDS` and newer than the start;
3. a known pid that is gone with no recorded exit: `lost`, never success;
4. log patterns, only as a hint when nothing else is known.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

from . import status as st

MARKER_STABLE_SECONDS = 2.0
LOG_HINT_PATTERNS = re.compile(r"Training complete|Training finished|\bCOMPLETE\b|\bDONE\b")

MARKER_ABSENT = "absent"
MARKER_STALE = "stale"
MARKER_EMPTY = "empty"
MARKER_UNSTABLE = "unstable"
MARKER_READY = "ready"


class Evidence(NamedTuple):
    now: float
    started_at: Optional[float] = None
    exit_code: Optional[int] = None
    marker_size: Optional[int] = None
    marker_mtime: Optional[float] = None
    pid: Optional[int] = None
    pid_alive: Optional[bool] = None
    log_tail: str = ""


class Verdict(NamedTuple):
    status: str
    termination_status: str
    message: str
    source: str


def marker_state(
    size: Optional[int],
    mtime: Optional[float],
    started_at: Optional[float],
    now: float,
    stable_for: float = MARKER_STABLE_SECONDS,
) -> str:
    """Whether a completion marker may complete the run that started at `started_at`."""
    if size is None or mtime is None:
        return MARKER_ABSENT
    if started_at is not None and mtime < started_at:
        return MARKER_STALE
    if size <= 0:
        return MARKER_EMPTY
    if now - mtime < stable_for:
        return MARKER_UNSTABLE
    return MARKER_READY


def describe_exit(code: int) -> str:
    if code > 128:
        return "exited with code %d (killed by signal %d)" % (code, code - 128)
    return "exited with code %d" % code


def classify(ev: Evidence) -> Verdict:
    """The status of a run from what can be observed of it, most trusted evidence first."""
    marker = marker_state(ev.marker_size, ev.marker_mtime, ev.started_at, ev.now)
    if ev.exit_code is not None:
        if ev.exit_code == 0:
            note = " and wrote its completion marker" if marker == MARKER_READY else ""
            return Verdict(st.COMPLETED, st.T_AUTO_COMPLETE, "exited with code 0" + note, "exit_code")
        note = " (its completion marker does not count)" if marker == MARKER_READY else ""
        return Verdict(st.FAILED, st.T_FAILED, describe_exit(ev.exit_code) + note, "exit_code")
    if marker == MARKER_READY:
        running = " (process still running)" if ev.pid_alive else ""
        return Verdict(st.COMPLETED, st.T_AUTO_COMPLETE, "completion marker written" + running, "marker")
    if marker == MARKER_UNSTABLE and not ev.pid_alive:
        # Written moments ago: it may yet prove the run complete, so it is too early to call it lost.
        return Verdict(st.RUNNING, "", "completion marker still settling", "marker")
    if ev.pid is not None and ev.pid_alive is False:
        return Verdict(
            st.LOST,
            st.T_LOST,
            "process %d is gone and no exit code was recorded" % ev.pid,
            "pid",
        )
    if ev.pid_alive:
        return Verdict(st.RUNNING, "", "process %s is running" % ev.pid, "pid")
    hint = LOG_HINT_PATTERNS.search(ev.log_tail or "")
    if hint:
        return Verdict(
            "unknown",
            "",
            "no exit code, marker or pid; the log says %r (a hint, not proof)" % hint.group(0),
            "log",
        )
    return Verdict("unknown", "", "no exit code, marker, pid or log found", "none")
