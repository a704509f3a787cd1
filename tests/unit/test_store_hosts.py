"""runctl.store hosts and usage intervals, the schema 1 -> 2 migration, and runctl.core.cost."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runctl.core.cost import Cost, cost
from runctl.store import SCHEMA_VERSION, Store, host_key

# The schema as runctl 1 wrote it, frozen here: the migration must keep what it holds.
V1_DDL = """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, name TEXT NOT NULL, provider TEXT NOT NULL, host TEXT NOT NULL,
    project_dir TEXT NOT NULL, run_dir TEXT NOT NULL, command TEXT NOT NULL, spec TEXT NOT NULL,
    transport TEXT NOT NULL DEFAULT '{}', status TEXT NOT NULL, exit_code INTEGER,
    termination_status TEXT, termination_message TEXT, created_at REAL NOT NULL, started_at REAL,
    ended_at REAL, pid INTEGER, step REAL, epoch REAL, loss REAL, last_checkpoint TEXT,
    seq INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT '{}', updated_at REAL NOT NULL
);
CREATE INDEX runs_created ON runs(created_at);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    t REAL NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_run ON events(run_id, t);
PRAGMA user_version = 1;
"""


def make_v1_database(path: Path, run_id: str = "01dr0000") -> None:
    spec = {"run_id": run_id, "name": "old", "provider": "ssh", "host": "gpu1", "command": ["python", "t.py"]}
    with sqlite3.connect(str(path)) as raw:
        raw.executescript(V1_DDL)
        raw.execute(
            "INSERT INTO runs (run_id, name, provider, host, project_dir, run_dir, command, spec, transport,"
            " status, exit_code, created_at, ended_at, seq, state, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                run_id,
                "old",
                "ssh",
                "gpu1",
                "/home/u/runctl/p",
                "/home/u/runctl/p/.runctl/runs/" + run_id,
                json.dumps(["python", "t.py"]),
                json.dumps(spec),
                json.dumps({"kind": "ssh", "host": "gpu1"}),
                "completed",
                0,
                1000.0,
                1100.0,
                7,
                json.dumps({"status": "completed", "seq": 7}),
                1100.0,
            ),
        )
        raw.execute(
            "INSERT INTO events (run_id, t, kind, data) VALUES (?, 1001.0, 'launched', '{\"pid\": 42}')", (run_id,)
        )
    raw.close()


def tables(store: Store) -> set[str]:
    return {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "runctl.db")
    yield s
    s.close()


# --------------------------------------------------------------------------------------------------
# migration


def test_migration_from_schema_1_keeps_existing_runs(tmp_path: Path) -> None:
    path = tmp_path / "runctl.db"
    make_v1_database(path)
    store = Store(path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        assert {"runs", "events", "hosts", "usage"} <= tables(store)
        row = store.get("01dr0000")
        assert row is not None
        assert (row["name"], row["status"], row["exit_code"], row["seq"]) == ("old", "completed", 0, 7)
        assert row["transport"] == {"kind": "ssh", "host": "gpu1"}
        assert row["host_key"] is None
        assert store.events("01dr0000") == [{"t": 1001.0, "kind": "launched", "pid": 42}]
        assert [r["run_id"] for r in store.list(include_all=True)] == ["01dr0000"]
        # The migrated database takes new hosts and links runs to them.
        key = store.upsert_host("ssh", "gpu1", address="10.0.0.5", state="running", t=1000.0)
        store.set_run_host("01dr0000", key)
        assert store.get("01dr0000")["host_key"] == key  # type: ignore[index]
    finally:
        store.close()
    again = Store(path)  # reopening a migrated database runs no step twice
    try:
        assert again.get("01dr0000") is not None and len(again.hosts()) == 1
    finally:
        again.close()


def _open_store(path: str, go: Any, results: Any) -> None:
    go.wait(10)
    try:
        store = Store(Path(path))
        store.upsert_host("ssh", "h-%d" % multiprocessing.current_process().pid, state="running")
        results.put(("ok", store.get("01dr0000") is not None))
        store.close()
    except Exception as exc:  # reported to the test, which fails on it
        results.put(("error", repr(exc)))


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_migrating_at_once_all_succeed(tmp_path: Path, processes: int) -> None:
    context = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "fork")
    for attempt in range(3):
        path = tmp_path / ("runctl-%d.db" % attempt)
        make_v1_database(path)
        go, results = context.Event(), context.Queue()
        workers = [context.Process(target=_open_store, args=(str(path), go, results)) for _ in range(processes)]
        for worker in workers:
            worker.start()
        go.set()
        outcomes = [results.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(30)
        assert outcomes == [("ok", True)] * processes
        assert [w.exitcode for w in workers] == [0] * processes
        store = Store(path)
        try:
            assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert len(store.hosts()) == processes
            columns = [r[1] for r in store.db.execute("PRAGMA table_info(runs)")]
            assert columns.count("host_key") == 1
        finally:
            store.close()


def test_a_new_database_has_the_same_schema_as_a_migrated_one(tmp_path: Path) -> None:
    fresh = Store(tmp_path / "fresh.db")
    make_v1_database(tmp_path / "old.db")
    migrated = Store(tmp_path / "old.db")
    try:
        for table in ("runs", "events", "hosts", "usage"):
            info = "PRAGMA table_info(%s)" % table
            assert list(map(tuple, fresh.db.execute(info))) == list(map(tuple, migrated.db.execute(info)))
    finally:
        fresh.close()
        migrated.close()


# --------------------------------------------------------------------------------------------------
# hosts


def test_upsert_host_records_and_merges(store: Store) -> None:
    key = store.upsert_host(
        "aws",
        "i-0abc",
        address="10.200.0.2",
        region="us-east-1",
        instance_type="g5.xlarge",
        hourly_price=1.006,
        price_source="on-demand list",
        info={"ami": "ami-1", "spot": False},
        t=100.0,
    )
    assert key == "aws:i-0abc"
    host = store.host(key)
    assert host is not None
    assert (host["provider"], host["host_id"], host["address"], host["region"]) == (
        "aws",
        "i-0abc",
        "10.200.0.2",
        "us-east-1",
    )
    assert (host["instance_type"], host["hourly_price"], host["price_source"]) == ("g5.xlarge", 1.006, "on-demand list")
    assert host["state"] == "unknown" and host["created_at"] == 100.0
    # Later facts add to what is known; None keeps the stored value; info merges key by key.
    store.upsert_host("aws", "i-0abc", address="10.200.0.9", info={"spot": True, "subnet": "s-1"}, t=150.0)
    host = store.host(key)
    assert host is not None
    assert host["address"] == "10.200.0.9" and host["region"] == "us-east-1" and host["hourly_price"] == 1.006
    assert host["info"] == {"ami": "ami-1", "spot": True, "subnet": "s-1"}
    assert (host["created_at"], host["updated_at"]) == (100.0, 150.0)
    assert store.usage(key) == []


def test_hosts_lists_newest_first_and_filters(store: Store) -> None:
    store.upsert_host("ssh", "gpu1", state="running", t=1.0)
    store.upsert_host("aws", "i-1", state="running", t=2.0)
    store.upsert_host("aws", "i-2", state="running", t=3.0)
    store.record_host_state("aws:i-1", "terminated", t=4.0)
    assert [h["host_key"] for h in store.hosts()] == ["aws:i-2", "aws:i-1", "ssh:gpu1"]
    assert [h["host_key"] for h in store.hosts(provider="aws")] == ["aws:i-2", "aws:i-1"]
    assert [h["host_key"] for h in store.hosts(include_gone=False)] == ["aws:i-2", "ssh:gpu1"]
    assert store.host("aws:i-1")["state"] == "terminated"  # type: ignore[index]
    assert store.host("aws:nope") is None


@pytest.mark.parametrize("provider,host_id", [("", "x"), ("a:b", "x"), ("AWS", "x"), ("aws", ""), ("1aws", "x")])
def test_bad_host_keys_are_refused(store: Store, provider: str, host_id: str) -> None:
    with pytest.raises(ValueError):
        store.upsert_host(provider, host_id)
    assert store.hosts() == []


def test_host_ids_are_data_not_sql(store: Store) -> None:
    hostile = "x'); DROP TABLE runs; --"
    key = store.upsert_host("ssh", hostile, info={"note": hostile}, state="running")
    assert key == "ssh:" + hostile
    assert store.host(key)["info"] == {"note": hostile}  # type: ignore[index]
    assert "runs" in tables(store)


# --------------------------------------------------------------------------------------------------
# usage intervals


def test_record_host_state_opens_an_interval_only_on_a_change(store: Store) -> None:
    key = store.upsert_host("aws", "i-1", hourly_price=2.0, price_source="list", t=0.0)
    assert store.record_host_state(key, "pending", t=10.0) is True
    assert store.record_host_state(key, "running", t=40.0) is True
    assert store.record_host_state(key, "running", t=100.0) is False  # seen again: nothing new
    assert store.record_host_state(key, "running", t=200.0) is False
    assert store.record_host_state(key, "stopped", t=3640.0) is True
    assert store.usage(key) == [
        {"host_key": key, "state": "pending", "from": 10.0, "to": 40.0, "hourly_price": 2.0, "price_source": "list"},
        {"host_key": key, "state": "running", "from": 40.0, "to": 3640.0, "hourly_price": 2.0, "price_source": "list"},
        {"host_key": key, "state": "stopped", "from": 3640.0, "to": None, "hourly_price": 2.0, "price_source": "list"},
    ]
    assert store.host(key)["state"] == "stopped"  # type: ignore[index]
    # One hour running at 2.0/h; pending and stopped are not billed by default.
    assert store.host_cost(key, now=10000.0) == Cost(2.0, 3600.0, 0.0)


def test_a_new_price_starts_a_new_interval(store: Store) -> None:
    key = store.upsert_host("aws", "spot-1", t=0.0)
    store.record_host_state(key, "running", t=0.0, price=0.5, source="spot history")
    assert store.record_host_state(key, "running", t=1800.0, price=0.5) is False
    assert store.record_host_state(key, "running", t=3600.0, price=1.5, source="spot history") is True
    store.record_host_state(key, "terminated", t=7200.0)
    intervals = store.usage(key)
    assert [(i["from"], i["to"], i["hourly_price"]) for i in intervals] == [(0.0, 3600.0, 0.5), (3600.0, 7200.0, 1.5)]
    assert store.host_cost(key, now=99999.0).amount == pytest.approx(2.0)


def test_terminated_closes_the_last_interval_and_stays_gone(store: Store) -> None:
    key = store.upsert_host("lambda", "abc", hourly_price=1.29, state="booting", t=0.0)
    store.record_host_state(key, "running", t=60.0)
    assert store.record_host_state(key, "terminated", t=3660.0) is False
    assert store.record_host_state(key, "running", t=4000.0) is False  # a late or stale report
    intervals = store.usage(key)
    assert [i["state"] for i in intervals] == ["booting", "running"]
    assert all(i["to"] is not None for i in intervals)
    assert store.host(key)["state"] == "terminated"  # type: ignore[index]
    assert store.host_cost(key, now=1e9, billing_states={"booting", "running"}).amount == pytest.approx(1.29 * 61 / 60)


def test_an_older_observation_does_not_rewrite_history(store: Store) -> None:
    key = store.upsert_host("aws", "i-1", state="running", t=100.0)
    assert store.record_host_state(key, "stopped", t=50.0) is False
    assert [(i["state"], i["from"], i["to"]) for i in store.usage(key)] == [("running", 100.0, None)]


def test_record_host_state_for_an_unknown_host_is_refused(store: Store) -> None:
    with pytest.raises(ValueError):
        store.record_host_state("aws:nope", "running")
    assert store.db.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == 0


def test_at_most_one_open_interval_per_host(store: Store) -> None:
    key = store.upsert_host("aws", "i-1", state="running", t=0.0)
    with pytest.raises(sqlite3.IntegrityError):
        store.db.execute("INSERT INTO usage (host_key, state, t_from) VALUES (?, 'running', 5.0)", (key,))


def test_usage_since_and_until_select_overlapping_intervals(store: Store) -> None:
    key = store.upsert_host("aws", "i-1", hourly_price=3.6, t=0.0)
    for t, state in ((0.0, "pending"), (100.0, "running"), (200.0, "stopped"), (300.0, "running")):
        store.record_host_state(key, state, t=t)
    assert [i["from"] for i in store.usage(key, since=150.0)] == [100.0, 200.0, 300.0]
    assert [i["from"] for i in store.usage(key, since=250.0, until=300.0)] == [200.0]
    assert [i["from"] for i in store.usage(key, until=100.0)] == [0.0]
    # 50 s running in [150, 400) until 200, then 100 s from 300 to 400: 150 s at 3.6/h.
    assert store.host_cost(key, now=1000.0, since=150.0, until=400.0) == Cost(pytest.approx(0.15), 150.0, 0.0)


def test_deleting_a_host_deletes_its_usage(store: Store) -> None:
    key = store.upsert_host("aws", "i-1", state="running", t=0.0)
    store.db.execute("DELETE FROM hosts WHERE host_key = ?", (key,))
    assert store.usage(key) == []


def test_transitions_from_two_stores_keep_one_open_interval(tmp_path: Path) -> None:
    a, b = Store(tmp_path / "db"), Store(tmp_path / "db")
    try:
        key = a.upsert_host("aws", "i-1", t=0.0)
        for i in range(40):
            (a if i % 2 else b).record_host_state(key, "running" if i % 3 else "stopped", t=float(i))
        open_rows = a.db.execute("SELECT COUNT(*) FROM usage WHERE host_key = ? AND t_to IS NULL", (key,))
        assert open_rows.fetchone()[0] == 1
        intervals = a.usage(key)
        assert all(x["to"] == y["from"] for x, y in itertools.pairwise(intervals))
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------------------------------
# cost (pure)


def test_cost_sums_billing_states_only() -> None:
    intervals = [
        {"state": "pending", "from": 0.0, "to": 60.0, "hourly_price": 10.0},
        {"state": "running", "from": 60.0, "to": 3660.0, "hourly_price": 1.0},
        {"state": "stopped", "from": 3660.0, "to": 7260.0, "hourly_price": 1.0},
        {"state": "running", "from": 7260.0, "to": None, "hourly_price": 2.0},
    ]
    assert cost(intervals, now=9060.0) == Cost(pytest.approx(2.0), 5400.0, 0.0)
    assert cost(intervals, now=9060.0, billing_states={"pending", "running"}).amount == pytest.approx(2.0 + 10 / 60)


def test_cost_with_an_unknown_price_says_so() -> None:
    intervals = [
        {"state": "running", "from": 0.0, "to": 3600.0, "hourly_price": None},
        {"state": "running", "from": 3600.0, "to": 7200.0, "hourly_price": 0.5},
    ]
    assert cost(intervals, now=7200.0) == Cost(0.5, 7200.0, 3600.0)


def test_cost_clips_to_the_window_and_ignores_empty_intervals() -> None:
    intervals = [{"state": "running", "from": 100.0, "to": 200.0, "hourly_price": 36.0}]
    assert cost(intervals, now=500.0, since=150.0) == Cost(pytest.approx(0.5), 50.0, 0.0)
    assert cost(intervals, now=500.0, since=300.0) == Cost(0.0, 0.0, 0.0)
    assert cost(intervals, now=500.0, until=100.0) == Cost(0.0, 0.0, 0.0)
    assert cost([], now=time.time()) == Cost(0.0, 0.0, 0.0)
    # An open interval whose start is after `now` (a clock step back) costs nothing, not a negative.
    assert cost([{"state": "running", "from": 100.0, "to": None, "hourly_price": 1.0}], now=50.0).amount == 0.0


def test_host_key_format() -> None:
    assert host_key("aws", "i-1") == "aws:i-1"
    assert host_key("lambda_labs", "a:b") == "lambda_labs:a:b"
