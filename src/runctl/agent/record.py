"""The run directory as the agent keeps it: status.json, events.jsonl, agent.json and the mirrors.

Every other part of the agent (metrics intake, the stop sequence, the end of the run) writes through
one RunRecord, so status.json has one writer with one sequence number and the run dir keeps telling
the truth while the run lives.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

from ..core import layout
from ..core import status as st
from ..core.fsutil import (
    append_json,
    atomic_write,
    atomic_write_json,
    disk_full,
    read_json,
    release_space,
    temp_path,
    write_failed,
)

IDENTITY_KEYS = ("run_id", "agent_pid", "agent_start", "pid", "pid_start", "started_at", "cgroup")


class RunRecord:
    def __init__(self, run_dir: str, project_dir: str, state: Dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.project_dir = project_dir
        self.state = state
        self.state.setdefault("seq", 0)
        self.status_stamp: Any = None
        self.last_status_write = 0.0
        self.dirty = False  # state changed since status.json was last written

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    @property
    def status(self) -> str:
        return str(self.state.get("status", st.PENDING))

    @property
    def ended(self) -> bool:
        return st.is_terminal(self.status)

    def event(self, name: str, **data: Any) -> None:
        data.update({"t": time.time(), "event": name})
        append_json(self.path(layout.EVENTS), data)

    def try_event(self, name: str, **data: Any) -> None:
        """An event that a full disk may refuse: what matters (status.json) is written elsewhere."""
        try:
            self.event(name, **data)
        except OSError:
            pass

    def write_status(self, fsync: bool = False, **changes: Any) -> None:
        """status.json with `changes`; a status that would go backwards (statuses are monotonic) is dropped."""
        new = changes.get("status")
        if new is not None and new != self.state.get("status"):
            if not st.can_advance(self.status, new):
                changes.pop("status")
        self.state.update(changes)
        self.state["seq"] = int(self.state.get("seq", 0)) + 1
        self.state["updated_at"] = time.time()
        atomic_write_json(self.path(layout.STATUS), self.state, fsync=fsync)
        self.status_stamp = stamp(self.path(layout.STATUS))
        self.last_status_write = time.monotonic()
        self.dirty = False

    def guard_status(self) -> None:
        """Rewrite status.json if anything but this agent changed it (a corrupted or truncated file)."""
        path = self.path(layout.STATUS)
        if stamp(path) == self.status_stamp:
            return
        current = read_json(path)
        if current is not None and current.get("seq") == self.state.get("seq"):
            self.status_stamp = stamp(path)
            return
        self.event("status_repaired", reason="unreadable" if current is None else "changed by another writer")
        self.write_status(fsync=True)

    def write_end(self, status: str, termination_status: str, message: str, **extra: Any) -> None:
        """Record, durably, that the run ended now and why; on a full disk, with the space held for it."""
        changes = dict(
            status=status, termination_status=termination_status, termination_message=message, ended_at=time.time()
        )
        changes.update(extra)
        try:
            self.write_status(fsync=True, **changes)
        except OSError as exc:
            if not disk_full(exc) or not release_space(self.path(layout.SPACE_RESERVE)):
                raise
            self.write_status(fsync=True, **changes)
        release_space(self.path(layout.SPACE_RESERVE))

    def write_identity(self) -> None:
        """Who supervises the run and which process is its script, in a file written once per change.

        It lets a reader decide the run's liveness from the agent and the process even when
        status.json cannot be read.
        """
        atomic_write_json(self.path(layout.IDENTITY), {k: self.state.get(k) for k in IDENTITY_KEYS if k in self.state})

    def record_descendant(self, pid: int, start: Any) -> None:
        """On disk too, so the run's processes can be stopped even after this agent died."""
        try:
            append_json(self.path(layout.DESCENDANTS), {"pid": pid, "start": start, "t": time.time()})
        except OSError:
            pass  # (a full disk) the agent still knows it: only a stop after the agent's death would miss it

    def mirror(self, name: str, data: bytes) -> None:
        """A file of the run dir, copied to the project dir under the original system's name."""
        atomic_write(self.path(name), data)
        try:
            atomic_write(os.path.join(self.project_dir, name), data)
        except OSError as exc:
            self.event("mirror_failed", file=name, error=str(exc))

    def mirror_log(self) -> None:
        """The project's training.log always shows the latest run: a symlink costs no extra I/O."""
        link = os.path.join(self.project_dir, layout.LOG)
        tmp = temp_path(link)
        try:
            os.symlink(os.path.relpath(self.path(layout.LOG), self.project_dir), tmp)
            os.replace(tmp, link)
        except OSError as exc:
            self.event("mirror_failed", file=layout.LOG, error=str(exc))


def failure_fields(exc: BaseException) -> Dict[str, Any]:
    """What status.json records about a failed write, so controllers can say "disk full at PATH" (exit 4)."""
    failure = write_failed(exc)
    if failure is None or failure.kind not in ("disk_full", "read_only"):
        return {}
    fields: Dict[str, Any] = {"write_error": failure.to_dict()}
    if failure.kind == "disk_full":
        fields["disk_full"] = failure.path
    return fields


def stamp(path: str) -> Optional[Any]:
    """A cheap identity of a file's current content: changes whenever anyone rewrites it."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)
