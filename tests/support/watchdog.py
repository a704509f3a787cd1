"""Driving the host watchdog from tests: its CLI from the agent zip, waits, and its lock holders.

The power-off command a test gives the watchdog is always harmless (a script that writes a line to
a file) or, on a test host, the fake that its private mount namespace puts over the real one: no
test ever lets the real shutdown run on this machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from runctl.bundle import agent_artifact


def recording_cmd(record: Path) -> list[str]:
    """A stand-in power-off: appends the time to `record` ("$0" keeps the path away from the shell)."""
    return ["sh", "-c", 'date +%s.%N >> "$0"', str(record)]


def recorded_times(record: Path) -> list[float]:
    try:
        return [float(line) for line in record.read_text().split()]
    except FileNotFoundError:
        return []


def agent(*args: str, python: str | None = None, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """Run `python3 agent.pyz ARGS` here; (exit code, its JSON answer)."""
    proc = subprocess.run(
        [python or sys.executable, str(agent_artifact()), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stderr == "", proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def ensure(directory: Path, idle_stop: str, cmd: Sequence[str] | None, poll: float = 0.1, **kw: Any) -> dict[str, Any]:
    """`watchdog ensure` with a harmless command; tests never let the default one run here."""
    assert cmd is not None, "a local watchdog must get a harmless power-off command"
    args = ["watchdog", "ensure", "--idle-stop", idle_stop, "--poll", str(poll), "--dir", str(directory)]
    code, result = agent(*args, "--poweroff-cmd", json.dumps(list(cmd)), **kw)
    assert code == 0 and result["ok"], result
    return result


def status(directory: Path) -> dict[str, Any]:
    code, result = agent("watchdog", "status", "--dir", str(directory))
    assert code == 0, result
    return result


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("condition not met within %.1fs" % timeout)
        time.sleep(interval)


def lock_holders(directory: Path) -> list[int]:
    """Pids holding a lock on the watchdog's lock file, from /proc/locks (the kernel's own list)."""
    lock = directory / "lock"
    if not lock.exists():
        return []
    # Matched by inode number only: on overlay filesystems the device /proc/locks names is the
    # underlying one, not the st_dev that stat() reports.
    inode = str(lock.stat().st_ino)
    holders = []
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        if len(fields) >= 6 and fields[5].rsplit(":", 1)[-1] == inode:
            holders.append(int(fields[4]))
    return holders


def kill_watchdog(directory: Path) -> None:
    """Teardown: stop the watchdog of `directory` by its own pid, SIGKILL if it lingers."""
    subprocess.run(
        [sys.executable, str(agent_artifact()), "watchdog", "stop", "--dir", str(directory)],
        capture_output=True,
        timeout=30,
    )
    for pid in lock_holders(directory):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
