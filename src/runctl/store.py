"""The controller's SQLite store: runs and their events. WAL mode, safe for parallel runctl processes.

The run dir on the host is the source of truth; rows here are refreshed from it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from . import paths
from .core import status as st
from .core.errors import CorruptStore, RunctlError, UsageError, WriteFailed
from .core.fsutil import PRIVATE_FILE, mount_point, tighten, write_failed

SCHEMA_VERSION = 1

_MIGRATIONS = {
    1: """
    CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        provider TEXT NOT NULL,
        host TEXT NOT NULL,
        project_dir TEXT NOT NULL,
        run_dir TEXT NOT NULL,
        command TEXT NOT NULL,
        spec TEXT NOT NULL,
        transport TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL,
        exit_code INTEGER,
        termination_status TEXT,
        termination_message TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        pid INTEGER,
        step REAL,
        epoch REAL,
        loss REAL,
        last_checkpoint TEXT,
        seq INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT '{}',
        updated_at REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at);
    CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        t REAL NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX IF NOT EXISTS events_run ON events(run_id, t);
    """,
}

COLUMNS = (
    "status",
    "exit_code",
    "termination_status",
    "termination_message",
    "started_at",
    "ended_at",
    "pid",
    "step",
    "epoch",
    "loss",
    "last_checkpoint",
    "seq",
)


def _number(value: Any) -> Any:
    """NaN and infinities are stored as text so they survive SQLite and JSON round trips."""
    if (isinstance(value, float) and value != value) or value in (float("inf"), float("-inf")):
        return str(value)
    return value


def store_error(exc: sqlite3.Error | OSError, path: Path) -> RunctlError:
    """What a user can do about a store that cannot be opened, read or written."""
    if isinstance(exc, OSError):
        return write_failed(exc) or WriteFailed("permission", str(path))
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or "not a database" in text or "malformed" in text:
        return CorruptStore(str(path), text)
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return WriteFailed("disk_full", mount_point(str(path)))
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return WriteFailed("read_only", str(path))
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM")) or "unable to open" in text:
        return WriteFailed("permission", str(path))
    return CorruptStore(str(path), text)


class Store:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.database()
        try:
            self._open()
        except (sqlite3.Error, OSError) as exc:
            raise store_error(exc, self.path) from None

    def _open(self) -> None:
        # Created 0600 before SQLite opens it; SQLite gives its -wal and -shm files the same mode.
        os.close(os.open(str(self.path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE))
        self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout = 30000")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA foreign_keys = ON")
        for suffix in ("", "-wal", "-shm"):
            tighten(str(self.path) + suffix, PRIVATE_FILE)  # stores written by older runctl were 0644
        self._migrate()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UsageError(
                "the runctl database %s was written by a newer runctl (schema %d)" % (self.path, version),
                "upgrade runctl, or point RUNCTL_HOME at another directory",
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # One transaction per step; the statements are idempotent, so two runctl processes
            # migrating at once both succeed.
            self.db.executescript(
                "BEGIN IMMEDIATE;%s\nPRAGMA user_version = %d;\nCOMMIT;" % (_MIGRATIONS[target], target)
            )

    def close(self) -> None:
        self.db.close()

    # ---- runs ----------------------------------------------------------------------------

    def add_run(self, spec: dict[str, Any], transport: dict[str, Any], state: dict[str, Any]) -> None:
        now = time.time()
        self.db.execute(
            "INSERT INTO runs (run_id, name, provider, host, project_dir, run_dir, command, spec, transport,"
            " status, created_at, seq, state, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                spec["run_id"],
                spec["name"],
                spec["provider"],
                spec["host"],
                spec["project_dir"],
                spec["run_dir"],
                json.dumps(spec["command"]),
                json.dumps(spec),
                json.dumps(transport),
                state.get("status", st.PENDING),
                spec["created_at"],
                int(state.get("seq", 0)),
                json.dumps(state),
                now,
            ),
        )

    def delete_run(self, run_id: str) -> None:
        self.db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    def update_state(self, run_id: str, state: dict[str, Any]) -> None:
        """Record a newer status.json; an older seq or a move away from a terminal status is ignored."""
        row = self.db.execute("SELECT status, seq FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return
        seq = int(state.get("seq", 0))
        if seq < row["seq"] or (st.is_terminal(row["status"]) and state.get("status") != row["status"]):
            return
        values = [_number(state.get(col)) for col in COLUMNS]
        values[COLUMNS.index("status")] = state.get("status") or row["status"]
        values[COLUMNS.index("seq")] = seq
        assignments = ", ".join("%s = ?" % col for col in COLUMNS)
        self.db.execute(
            "UPDATE runs SET %s, state = ?, updated_at = ? WHERE run_id = ?" % assignments,
            (*values, json.dumps(state, default=str), time.time(), run_id),
        )

    def add_event(self, run_id: str, kind: str, data: dict[str, Any] | None = None) -> None:
        self.db.execute(
            "INSERT INTO events (run_id, t, kind, data) VALUES (?,?,?,?)",
            (run_id, time.time(), kind, json.dumps(data or {})),
        )

    def events(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT t, kind, data FROM events WHERE run_id = ? ORDER BY id", (run_id,))
        return [{"t": r["t"], "kind": r["kind"], **json.loads(r["data"])} for r in rows]

    def get(self, run_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return self._row(row) if row else None

    def resolve(self, prefix: str) -> dict[str, Any]:
        """The run whose id starts with `prefix`; unknown or ambiguous prefixes are usage errors."""
        prefix = prefix.strip()
        if not prefix:
            raise UsageError("empty run id", "list runs with: runctl runs list --all")
        rows = self.db.execute(
            "SELECT * FROM runs WHERE run_id >= ? AND run_id < ? ORDER BY created_at DESC LIMIT 6",
            (prefix, prefix + "\U0010ffff"),
        ).fetchall()
        exact = [r for r in rows if r["run_id"] == prefix]
        if exact:
            return self._row(exact[0])
        if not rows:
            raise UsageError("no run with id %r" % prefix, "list runs with: runctl runs list --all")
        if len(rows) > 1:
            names = ", ".join(r["run_id"] for r in rows[:5])
            raise UsageError(
                "run id %r is ambiguous: it matches %s" % (prefix, names), "type more characters of the id"
            )
        return self._row(rows[0])

    def list(self, include_all: bool = False, recent_seconds: float = 86400.0) -> list[dict[str, Any]]:
        if include_all:
            rows = self.db.execute("SELECT * FROM runs ORDER BY created_at DESC")
        else:
            terminal = tuple(sorted(st.TERMINAL))
            rows = self.db.execute(
                "SELECT * FROM runs WHERE status NOT IN (%s) OR COALESCE(ended_at, created_at) >= ?"
                " ORDER BY created_at DESC" % ",".join("?" * len(terminal)),
                (*terminal, time.time() - recent_seconds),
            )
        return [self._row(r) for r in rows]

    @staticmethod
    def _row(row: sqlite3.Row) -> dict[str, Any]:
        data = dict(row)
        for key in ("command", "spec", "transport", "state"):
            data[key] = json.loads(data[key])
        return data
