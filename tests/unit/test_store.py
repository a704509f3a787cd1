"""runctl.store: the controller's SQLite database."""

from __future__ import annotations

import math
import multiprocessing
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runctl.core import status as st
from runctl.core.errors import EXIT_USAGE, UsageError
from runctl.store import SCHEMA_VERSION, Store

DAY = 86400.0


def spec(run_id: str, created_at: float | None = None, name: str = "train") -> dict[str, Any]:
    return {
        "run_id": run_id,
        "name": name,
        "provider": "local",
        "host": "localhost",
        "project_dir": "/tmp/proj",
        "run_dir": "/tmp/proj/.runctl/runs/%s" % run_id,
        "command": ["python", "train.py", "--epochs", "2"],
        "created_at": time.time() if created_at is None else created_at,
    }


def add(store: Store, run_id: str, created_at: float | None = None, **state: Any) -> None:
    store.add_run(spec(run_id, created_at), {"kind": "local"}, {"status": st.PENDING, "seq": 0, **state})


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "runctl.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


# --------------------------------------------------------------------------------------------------
# schema


def test_schema_version_and_wal(store: Store, db_path: Path) -> None:
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    with sqlite3.connect(str(db_path)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_reopening_keeps_the_data(store: Store, db_path: Path) -> None:
    add(store, "abcd1234")
    again = Store(db_path)
    try:
        row = again.get("abcd1234")
        assert row is not None and row["name"] == "train"
    finally:
        again.close()


def test_database_from_a_newer_runctl_is_refused(db_path: Path) -> None:
    with sqlite3.connect(str(db_path)) as raw:
        raw.execute("PRAGMA user_version = %d" % (SCHEMA_VERSION + 1))
    with pytest.raises(UsageError) as info:
        Store(db_path)
    assert "newer runctl" in info.value.message
    assert info.value.hint and "RUNCTL_HOME" in info.value.hint


def test_default_path_follows_runctl_home(runctl_home: Path) -> None:
    s = Store()
    try:
        assert Path(s.path).parent == runctl_home
        assert Path(s.path).exists()
    finally:
        s.close()


# --------------------------------------------------------------------------------------------------
# runs


def test_add_and_get_round_trip(store: Store) -> None:
    created = time.time() - 5
    add(store, "abcd1234", created_at=created)
    row = store.get("abcd1234")
    assert row is not None
    assert row["run_id"] == "abcd1234"
    assert row["status"] == st.PENDING
    assert row["command"] == ["python", "train.py", "--epochs", "2"]
    assert row["spec"]["run_dir"].endswith("/abcd1234")
    assert row["transport"] == {"kind": "local"}
    assert row["created_at"] == pytest.approx(created)
    assert row["seq"] == 0


def test_get_unknown_is_none(store: Store) -> None:
    assert store.get("ffffffff") is None


def test_duplicate_run_id_is_refused(store: Store) -> None:
    add(store, "abcd1234")
    with pytest.raises(sqlite3.IntegrityError):
        add(store, "abcd1234")


def test_resolve_by_unique_prefix(store: Store) -> None:
    add(store, "abcd1234")
    add(store, "abce5678")
    add(store, "ef012345")
    assert store.resolve("ef")["run_id"] == "ef012345"
    assert store.resolve("abcd")["run_id"] == "abcd1234"
    assert store.resolve("abce5678")["run_id"] == "abce5678"
    assert store.resolve("  ef0 ")["run_id"] == "ef012345"


def test_resolve_exact_id_wins_over_longer_ids(store: Store) -> None:
    add(store, "abcd")
    add(store, "abcd1234")
    assert store.resolve("abcd")["run_id"] == "abcd"


def test_resolve_unknown_prefix(store: Store) -> None:
    add(store, "abcd1234")
    with pytest.raises(UsageError) as info:
        store.resolve("99")
    error = info.value
    assert error.exit_code == EXIT_USAGE
    assert "'99'" in error.message
    assert error.hint and "runctl runs list --all" in error.hint


def test_resolve_empty_prefix(store: Store) -> None:
    add(store, "abcd1234")
    with pytest.raises(UsageError) as info:
        store.resolve("  ")
    assert info.value.hint and "runctl runs list" in info.value.hint


def test_resolve_ambiguous_prefix_names_the_candidates(store: Store) -> None:
    add(store, "abcd1234")
    add(store, "abce5678")
    with pytest.raises(UsageError) as info:
        store.resolve("ab")
    error = info.value
    assert error.exit_code == EXIT_USAGE
    assert "ambiguous" in error.message
    assert "abcd1234" in error.message and "abce5678" in error.message
    assert error.hint and "more characters" in error.hint


def test_prefix_is_not_a_pattern(store: Store) -> None:
    add(store, "abcd1234")
    for text in ("%", "_bcd", "a%"):
        with pytest.raises(UsageError):
            store.resolve(text)


def test_delete_run(store: Store) -> None:
    add(store, "abcd1234")
    store.add_event("abcd1234", "launched", {"pid": 1})
    store.delete_run("abcd1234")
    assert store.get("abcd1234") is None
    assert store.events("abcd1234") == []


def test_events_round_trip_in_order(store: Store) -> None:
    add(store, "abcd1234")
    store.add_event("abcd1234", "launched", {"pid": 123})
    store.add_event("abcd1234", "stop_requested", {"grace": 30})
    store.add_event("abcd1234", "ended")
    events = store.events("abcd1234")
    assert [e["kind"] for e in events] == ["launched", "stop_requested", "ended"]
    assert events[0]["pid"] == 123 and events[1]["grace"] == 30
    assert all(isinstance(e["t"], float) for e in events)


# --------------------------------------------------------------------------------------------------
# update_state


def test_update_state_records_the_columns(store: Store) -> None:
    add(store, "abcd1234")
    store.update_state(
        "abcd1234",
        {"status": st.RUNNING, "seq": 3, "pid": 4321, "step": 10, "epoch": 1, "loss": 0.5, "started_at": 1.0},
    )
    row = store.get("abcd1234")
    assert row is not None
    assert (row["status"], row["seq"], row["pid"], row["step"], row["epoch"], row["loss"]) == (
        st.RUNNING,
        3,
        4321,
        10,
        1,
        0.5,
    )
    assert row["state"]["pid"] == 4321


def test_update_state_ignores_an_older_seq(store: Store) -> None:
    add(store, "abcd1234")
    store.update_state("abcd1234", {"status": st.RUNNING, "seq": 5, "step": 50})
    store.update_state("abcd1234", {"status": st.PENDING, "seq": 3, "step": 1})
    row = store.get("abcd1234")
    assert row is not None
    assert (row["status"], row["seq"], row["step"]) == (st.RUNNING, 5, 50)


@pytest.mark.parametrize("later", [st.RUNNING, st.STOPPING, st.FAILED, st.LOST, st.PENDING])
def test_update_state_never_moves_a_terminal_status(store: Store, later: str) -> None:
    add(store, "abcd1234")
    store.update_state("abcd1234", {"status": st.COMPLETED, "seq": 10, "exit_code": 0, "ended_at": 5.0})
    store.update_state("abcd1234", {"status": later, "seq": 11, "exit_code": 1})
    row = store.get("abcd1234")
    assert row is not None
    assert (row["status"], row["exit_code"], row["seq"]) == (st.COMPLETED, 0, 10)


def test_update_state_same_terminal_status_with_newer_seq_fills_details(store: Store) -> None:
    add(store, "abcd1234")
    store.update_state("abcd1234", {"status": st.STOPPED, "seq": 10})
    store.update_state(
        "abcd1234",
        {"status": st.STOPPED, "seq": 11, "termination_status": st.T_USER_STOP, "termination_message": "by user"},
    )
    row = store.get("abcd1234")
    assert row is not None
    assert row["termination_status"] == st.T_USER_STOP
    assert row["termination_message"] == "by user"


def test_update_state_for_unknown_run_is_a_no_op(store: Store) -> None:
    store.update_state("ffffffff", {"status": st.RUNNING, "seq": 1})
    assert store.get("ffffffff") is None


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_survives(store: Store, value: float) -> None:
    add(store, "abcd1234")
    store.update_state("abcd1234", {"status": st.FAILED, "seq": 4, "loss": value, "step": 8})
    row = store.get("abcd1234")
    assert row is not None
    assert row["loss"] is not None
    stored = float(row["loss"])
    assert (math.isnan(stored) and math.isnan(value)) or stored == value
    state_loss = float(row["state"]["loss"])
    assert (math.isnan(state_loss) and math.isnan(value)) or state_loss == value
    assert row["step"] == 8


# --------------------------------------------------------------------------------------------------
# list


def test_list_hides_runs_that_ended_more_than_a_day_ago(store: Store) -> None:
    now = time.time()
    add(store, "0ld00000", created_at=now - 3 * DAY)
    store.update_state("0ld00000", {"status": st.COMPLETED, "seq": 9, "ended_at": now - 2 * DAY})
    add(store, "0ldfa11d", created_at=now - 3 * DAY)
    store.update_state("0ldfa11d", {"status": st.FAILED, "seq": 9})
    add(store, "10ngrun0", created_at=now - 3 * DAY)
    store.update_state("10ngrun0", {"status": st.RUNNING, "seq": 2})
    add(store, "11ngend0", created_at=now - 3 * DAY)
    store.update_state("11ngend0", {"status": st.COMPLETED, "seq": 9, "ended_at": now - 3600})
    add(store, "fresh000", created_at=now - 60)

    shown = [r["run_id"] for r in store.list()]
    assert shown[0] == "fresh000"
    assert set(shown) == {"fresh000", "11ngend0", "10ngrun0"}

    everything = {r["run_id"] for r in store.list(include_all=True)}
    assert everything == {"0ld00000", "0ldfa11d", "10ngrun0", "11ngend0", "fresh000"}


def test_list_is_newest_first(store: Store) -> None:
    now = time.time()
    for i, run_id in enumerate(["aaaa0000", "bbbb0000", "cccc0000"]):
        add(store, run_id, created_at=now - 100 + i)
    assert [r["run_id"] for r in store.list()] == ["cccc0000", "bbbb0000", "aaaa0000"]
    assert [r["run_id"] for r in store.list(include_all=True)] == ["cccc0000", "bbbb0000", "aaaa0000"]


def test_list_empty(store: Store) -> None:
    assert store.list() == []
    assert store.list(include_all=True) == []


# --------------------------------------------------------------------------------------------------
# concurrency


def test_two_stores_in_one_process_interleave(db_path: Path) -> None:
    a, b = Store(db_path), Store(db_path)
    try:
        for i in range(50):
            add(a, "a%07d" % i)
            add(b, "b%07d" % i)
            a.update_state("b%07d" % i, {"status": st.RUNNING, "seq": 1})
            b.add_event("a%07d" % i, "launched")
        assert len(a.list(include_all=True)) == len(b.list(include_all=True)) == 100
        assert b.get("b%07d" % 49)["status"] == st.RUNNING  # type: ignore[index]
    finally:
        a.close()
        b.close()


def test_writer_waits_for_another_connections_write_lock(db_path: Path) -> None:
    Store(db_path).close()
    locked, errors = threading.Event(), []

    def hold_lock() -> None:
        try:
            holder = Store(db_path)
            holder.db.execute("BEGIN IMMEDIATE")
            add(holder, "1ock0000")
            locked.set()
            time.sleep(0.3)
            holder.db.execute("COMMIT")
            holder.close()
        except Exception as exc:
            errors.append(exc)
            locked.set()

    thread = threading.Thread(target=hold_lock)
    thread.start()
    writer = Store(db_path)
    try:
        assert locked.wait(5)
        add(writer, "wa170000")
        writer.add_event("wa170000", "launched")
        thread.join(5)
        assert errors == []
        assert {r["run_id"] for r in writer.list(include_all=True)} == {"1ock0000", "wa170000"}
    finally:
        thread.join(5)
        writer.close()


def _write_many(path: str, worker: int, count: int) -> None:
    store = Store(Path(path))
    try:
        for i in range(count):
            run_id = "%02x%06x" % (worker, i)
            add(store, run_id)
            store.add_event(run_id, "launched", {"worker": worker})
            store.update_state(run_id, {"status": st.RUNNING, "seq": 1, "step": i})
            store.list()
    finally:
        store.close()


def test_parallel_processes_do_not_hit_database_is_locked(db_path: Path) -> None:
    workers, per_worker = 4, 50
    context = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "fork")
    processes = [context.Process(target=_write_many, args=(str(db_path), w, per_worker)) for w in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0] * workers

    store = Store(db_path)
    try:
        rows = store.list(include_all=True)
        assert len(rows) == workers * per_worker
        assert all(r["status"] == st.RUNNING and r["seq"] == 1 for r in rows)
        total_events = store.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        assert total_events == workers * per_worker
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        store.close()


def test_a_locked_store_is_busy_not_corrupt(tmp_path: Path) -> None:
    """A store another process holds past the wait is a host error that says so, never "corrupt"."""
    from runctl.core.errors import CorruptStore, HostError
    from runctl.store import store_error

    error = store_error(sqlite3.OperationalError("database is locked"), tmp_path / "runctl.db")
    assert isinstance(error, HostError) and not isinstance(error, CorruptStore)
    assert error.exit_code == 4 and "locked" in error.message and "try again" in (error.hint or "")
