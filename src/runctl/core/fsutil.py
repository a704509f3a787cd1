"""Atomic file writes and tolerant reads, shared by the agent and the controller."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional


def atomic_write(path: str, data: bytes, fsync: bool = True, mode: int = 0o644) -> None:
    """Replace `path` so readers see the old or the new content, never a partial one."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def atomic_write_json(path: str, obj: Any, fsync: bool = True, mode: int = 0o644) -> None:
    atomic_write(path, (json.dumps(obj, sort_keys=True) + "\n").encode(), fsync=fsync, mode=mode)


def read_json(path: str) -> Optional[Dict[str, Any]]:
    """The JSON object at `path`, or None when it is missing or not (yet) valid."""
    try:
        with open(path, "rb") as handle:
            value = json.loads(handle.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_text(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return None


def append_line(path: str, line: str) -> None:
    """One os.write on an O_APPEND fd, so concurrent writers never interleave a line."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)


def append_json(path: str, obj: Dict[str, Any]) -> None:
    append_line(path, json.dumps(obj, sort_keys=True))


def parse_exit_code(text: Optional[str]) -> Optional[int]:
    """The integer in a training_exit_code.txt, or None when absent or garbled."""
    if text is None:
        return None
    try:
        return int(text.strip().split()[0])
    except (ValueError, IndexError):
        return None


PID_MAX = 4194304  # Linux's PID_MAX_LIMIT; a larger number is a garbled file, not a process


def parse_pid(text: Optional[str]) -> Optional[int]:
    """The pid in a training.pid, or None when absent, garbled or out of range (never 0, negative or huge,
    which os.kill would take as a process group, every process, or an overflow)."""
    pid = parse_exit_code(text)
    return pid if pid is not None and 0 < pid <= PID_MAX else None
