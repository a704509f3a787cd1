"""The controller's SQLite store: runs, their events, hosts and their usage. WAL mode, safe for
parallel runctl processes.

The run dir on the host is the source of truth for a run; rows here are refreshed from it. A host's
usage is a list of intervals (state, from, to, hourly price), one per observed state, from which
`runctl.core.cost` computes what the host cost.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sqlite3
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from . import paths
from .core import status as st
from .core.cost import DEFAULT_BILLING_STATES, Cost, cost
from .core.errors import CorruptStore, HostError, RunctlError, UsageError, WriteFailed
from .core.fsutil import PRIVATE_FILE, mount_point, tighten, write_failed

SCHEMA_VERSION = 2
BUSY_SECONDS = 30  # how long a process waits for another holding the store

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
    2: """
    CREATE TABLE IF NOT EXISTS hosts (
        host_key TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        host_id TEXT NOT NULL,
        address TEXT,
        region TEXT,
        instance_type TEXT,
        hourly_price REAL,
        price_source TEXT,
        state TEXT NOT NULL,
        info TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (provider, host_id)
    );
    CREATE TABLE IF NOT EXISTS usage (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        host_key TEXT NOT NULL REFERENCES hosts(host_key) ON DELETE CASCADE,
        state TEXT NOT NULL,
        t_from REAL NOT NULL,
        t_to REAL,
        hourly_price REAL,
        price_source TEXT
    );
    CREATE INDEX IF NOT EXISTS usage_host ON usage(host_key, t_from);
    CREATE UNIQUE INDEX IF NOT EXISTS usage_open ON usage(host_key) WHERE t_to IS NULL;
    ALTER TABLE runs ADD COLUMN host_key TEXT;
    """,
}

Rows = list[dict[str, Any]]  # named here: inside Store, `list` is the method of that name

# Host states that end a host's life: its last interval is closed and none is opened after it.
GONE_HOST_STATES = frozenset({"terminated"})
_PROVIDER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


def host_key(provider: str, host_id: str) -> str:
    """The store's key of a host: `<provider>:<id>` (provider names hold no colon)."""
    if not _PROVIDER_NAME.match(provider):
        raise ValueError("invalid provider name %r" % provider)
    if not host_id:
        raise ValueError("empty host id")
    return "%s:%s" % (provider, host_id)


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
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in text:
        return HostError(
            "the runctl store %s stayed locked for %ds" % (path, BUSY_SECONDS),
            "another runctl process holds it; try again, or find it with: fuser %s" % path,
        )
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
        # O_EXCL: an existing store is never opened here, as closing any descriptor of the file
        # drops every POSIX lock this process holds on it, those of its other open connections too
        # (their writes then stay unseen by other processes).
        try:
            os.close(os.open(str(self.path), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE))
        except FileExistsError:
            if os.statvfs(self.path).f_flag & os.ST_RDONLY:  # what opening it for writing would say
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self.path)) from None
        self.db = sqlite3.connect(str(self.path), timeout=BUSY_SECONDS, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout = %d" % (BUSY_SECONDS * 1000))
        self._enable_wal()
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA foreign_keys = ON")
        for suffix in ("", "-wal", "-shm"):
            tighten(str(self.path) + suffix, PRIVATE_FILE)  # stores written by older runctl were 0644
        self._migrate()

    def _enable_wal(self) -> None:
        """Switch to WAL, waiting out other processes doing the same.

        The switch from a rollback journal takes an exclusive lock and SQLite does not run the busy
        handler for it, so two runctl processes opening a new or old store at once would otherwise
        see "database is locked".
        """
        deadline = time.monotonic() + BUSY_SECONDS
        while True:
            try:
                self.db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _migrate(self) -> None:
        version = self._version()
        if version > SCHEMA_VERSION:
            raise UsageError(
                "the runctl database %s was written by a newer runctl (schema %d)" % (self.path, version),
                "upgrade runctl, or point RUNCTL_HOME at another directory",
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # One write transaction per step, and the version read again inside it: of two runctl
            # processes migrating at once, the second finds the step done and skips it (ALTER TABLE
            # is not idempotent, so running it twice would fail).
            with self.transaction():
                if self._version() >= target:
                    continue
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute("PRAGMA user_version = %d" % target)

    def _version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def transaction(self) -> _Transaction:
        """`with store.transaction():` one write transaction (BEGIN IMMEDIATE ... COMMIT/ROLLBACK)."""
        return _Transaction(self.db)

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

    def place_run(self, run_id: str, spec: dict[str, Any], transport: dict[str, Any]) -> None:
        """Where a recorded run lives, once its host is reached: host, project and run dir, the
        transport record to reach it again. Recorded before the host is known, a run is placed once."""
        self.db.execute(
            "UPDATE runs SET host = ?, project_dir = ?, run_dir = ?, spec = ?, transport = ?, updated_at = ?"
            " WHERE run_id = ?",
            (
                spec["host"],
                spec["project_dir"],
                spec["run_dir"],
                json.dumps(spec),
                json.dumps(transport),
                time.time(),
                run_id,
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

    def latest_run_on(self, key: str) -> dict[str, Any] | None:
        """The run started last on the host `key` (`aws monitor`, `checkpoint list --instance-id`)."""
        row = self.db.execute(
            "SELECT * FROM runs WHERE host_key = ? ORDER BY created_at DESC, rowid DESC LIMIT 1", (key,)
        ).fetchone()
        return self._row(row) if row else None

    def set_run_host(self, run_id: str, key: str) -> None:
        """Link a run to the host it runs on (a key from `upsert_host`)."""
        self.db.execute("UPDATE runs SET host_key = ?, updated_at = ? WHERE run_id = ?", (key, time.time(), run_id))

    @staticmethod
    def _row(row: sqlite3.Row) -> dict[str, Any]:
        data = dict(row)
        for key in ("command", "spec", "transport", "state"):
            data[key] = json.loads(data[key])
        return data

    # ---- hosts and usage -----------------------------------------------------------------

    def upsert_host(
        self,
        provider: str,
        host_id: str,
        *,
        address: str | None = None,
        region: str | None = None,
        instance_type: str | None = None,
        hourly_price: float | None = None,
        price_source: str | None = None,
        state: str | None = None,
        info: dict[str, Any] | None = None,
        t: float | None = None,
    ) -> str:
        """Record a host or what is newly known about it; returns its key.

        Fields left None keep their stored value; `info` (provider data) is merged key by key. A
        `state` is recorded as an observed transition (see `record_host_state`).
        """
        key = host_key(provider, host_id)
        now = time.time() if t is None else t
        with self.transaction():
            row = self.db.execute("SELECT info FROM hosts WHERE host_key = ?", (key,)).fetchone()
            if row is None:
                self.db.execute(
                    "INSERT INTO hosts (host_key, provider, host_id, state, info, created_at, updated_at)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (key, provider, host_id, "unknown", "{}", now, now),
                )
                merged = dict(info or {})
            else:
                merged = {**json.loads(row["info"]), **(info or {})}
            fields = {
                "address": address,
                "region": region,
                "instance_type": instance_type,
                "hourly_price": hourly_price,
                "price_source": price_source,
            }
            given = {name: value for name, value in fields.items() if value is not None}
            assignments = "".join("%s = ?, " % name for name in given)
            self.db.execute(
                "UPDATE hosts SET %sinfo = ?, updated_at = ? WHERE host_key = ?" % assignments,
                (*given.values(), json.dumps(merged, default=str), now, key),
            )
            if state is not None:
                self._record_host_state(key, state, now, hourly_price, price_source)
        return key

    def record_host_state(
        self,
        key: str,
        state: str,
        t: float | None = None,
        price: float | None = None,
        source: str | None = None,
    ) -> bool:
        """Record that the host was seen in `state` at `t`; True when a new usage interval began.

        The open interval is closed and a new one opened only when the state (or a known hourly
        price) changes; seeing the same state again changes nothing. An observation older than the
        open interval's start is ignored: history is never rewritten. Without `price`, the host's
        known hourly price (and its source) applies. A gone state (`terminated`) closes the last
        interval and opens none.
        """
        with self.transaction():
            return self._record_host_state(key, state, time.time() if t is None else t, price, source)

    def _record_host_state(self, key: str, state: str, t: float, price: float | None, source: str | None) -> bool:
        host = self.db.execute("SELECT state, hourly_price, price_source FROM hosts WHERE host_key = ?", (key,))
        row = host.fetchone()
        if row is None:
            raise ValueError("unknown host %r" % key)
        if price is None:
            price, source = row["hourly_price"], row["price_source"]
        current = self.db.execute(
            "SELECT id, state, t_from, hourly_price FROM usage WHERE host_key = ? AND t_to IS NULL", (key,)
        ).fetchone()
        if current is not None:
            if t < current["t_from"]:
                return False
            if current["state"] == state and (price is None or current["hourly_price"] == price):
                return False
            self.db.execute("UPDATE usage SET t_to = ? WHERE id = ?", (t, current["id"]))
        elif row["state"] in GONE_HOST_STATES:
            return False  # a gone host stays gone
        self.db.execute("UPDATE hosts SET state = ?, updated_at = ? WHERE host_key = ?", (state, time.time(), key))
        if state in GONE_HOST_STATES:
            return False
        self.db.execute(
            "INSERT INTO usage (host_key, state, t_from, t_to, hourly_price, price_source) VALUES (?,?,?,NULL,?,?)",
            (key, state, t, price, source),
        )
        return True

    def host(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM hosts WHERE host_key = ?", (key,)).fetchone()
        return self._host_row(row) if row else None

    def hosts(self, provider: str | None = None, include_gone: bool = True) -> Rows:
        """Known hosts, newest first; `include_gone=False` leaves out terminated ones."""
        query = "SELECT * FROM hosts WHERE 1"
        args: tuple[Any, ...] = ()
        if provider is not None:
            query += " AND provider = ?"
            args += (provider,)
        if not include_gone:
            gone = sorted(GONE_HOST_STATES)
            query += " AND state NOT IN (%s)" % ",".join("?" * len(gone))
            args += tuple(gone)
        rows = self.db.execute(query + " ORDER BY created_at DESC, host_key", args)
        return [self._host_row(r) for r in rows]

    def usage(self, key: str, since: float | None = None, until: float | None = None) -> Rows:
        """The host's usage intervals overlapping [since, until], oldest first; `to` is None while open.

        Intervals are returned whole (not clipped): `runctl.core.cost.cost(..., since=, until=)` clips.
        """
        query = "SELECT * FROM usage WHERE host_key = ?"
        args: tuple[Any, ...] = (key,)
        if since is not None:
            query += " AND (t_to IS NULL OR t_to > ?)"
            args += (since,)
        if until is not None:
            query += " AND t_from < ?"
            args += (until,)
        rows = self.db.execute(query + " ORDER BY t_from, id", args)
        return [self._interval(r) for r in rows]

    def usage_by_host(self, provider: str) -> dict[str, Rows]:
        """Every usage interval of the provider's hosts, by host key (oldest first): one read for a listing."""
        rows = self.db.execute(
            "SELECT u.* FROM usage u JOIN hosts h ON h.host_key = u.host_key WHERE h.provider = ?"
            " ORDER BY u.t_from, u.id",
            (provider,),
        )
        found: dict[str, Rows] = {}
        for r in rows:
            found.setdefault(r["host_key"], []).append(self._interval(r))
        return found

    @staticmethod
    def _interval(r: sqlite3.Row) -> dict[str, Any]:
        return {
            "host_key": r["host_key"],
            "state": r["state"],
            "from": r["t_from"],
            "to": r["t_to"],
            "hourly_price": r["hourly_price"],
            "price_source": r["price_source"],
        }

    def host_cost(
        self,
        key: str,
        now: float | None = None,
        billing_states: Collection[str] = DEFAULT_BILLING_STATES,
        since: float | None = None,
        until: float | None = None,
    ) -> Cost:
        """What the host cost between `since` and `until` (default: its whole life until now)."""
        intervals = self.usage(key, since, until)
        return cost(intervals, time.time() if now is None else now, billing_states, since, until)

    @staticmethod
    def _host_row(row: sqlite3.Row) -> dict[str, Any]:
        data = dict(row)
        data["info"] = json.loads(data["info"])
        return data


class _Transaction:
    """BEGIN IMMEDIATE on entry (waits for other writers), COMMIT on success, ROLLBACK on error.

    Nested use joins the outer transaction, so methods that take one can call each other.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.outer = False

    def __enter__(self) -> None:
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self.outer:
            return
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
