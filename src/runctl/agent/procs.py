"""Process identity and process-group signalling.

A pid alone can be reused after its process dies; a (pid, start time) pair cannot, so liveness
checks compare both wherever /proc exists.
"""

from __future__ import annotations

import os
import signal
import time
from typing import List, Optional

from ..core.fsutil import MAX_PID


def stat_fields(pid: int) -> Optional[List[str]]:
    """/proc/PID/stat from the state field on (index 0 = state, 1 = ppid, 19 = start time), or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            data = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return data[data.rfind(")") + 2 :].split()


def start_time(pid: int) -> Optional[str]:
    """The kernel's start time of `pid` (clock ticks since boot), or None where unknown."""
    fields = stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def is_alive(pid: Optional[int], started: Optional[str] = None) -> bool:
    """Whether the process `pid` (with that start time, when known) still exists and is not a zombie."""
    if not isinstance(pid, int) or not 0 < pid <= MAX_PID:
        return False  # garbage in a pid file (a 24-digit number) is no process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            data = handle.read().decode("ascii", "replace")
    except OSError:
        return not os.path.isdir("/proc/self")
    if data[data.rfind(")") + 2 :][:1] == "Z":
        return False
    return started is None or start_time(pid) == started


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the whole group; False when the group is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tagged_processes(run_id: str) -> List[int]:
    """Processes that carry RUNCTL_RUN_ID=<run_id> in their environment, even after setsid().

    Children that start their own session escape the process group; their inherited
    environment still names the run, so they can be found and stopped with it.
    """
    needle = ("\0RUNCTL_RUN_ID=%s\0" % run_id).encode()
    found: List[int] = []
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as handle:
                if needle in b"\0" + handle.read() + b"\0":
                    found.append(int(entry))
        except OSError:
            continue
    return found


def kill_all(pgid: int, run_id: str, grace: float) -> None:
    """SIGTERM the group and every tagged stray, wait up to `grace`, then SIGKILL what remains."""
    signal_group(pgid, signal.SIGTERM)
    strays = tagged_processes(run_id)
    for pid in strays:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_alive(pgid) and not any(is_alive(p) for p in strays):
            return
        time.sleep(0.02)
    signal_group(pgid, signal.SIGKILL)
    for pid in tagged_processes(run_id):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
