"""`runctl cost`'s figures from the store: runs sharing a host split its time, days split at midnight."""

from __future__ import annotations

from pathlib import Path

import pytest

from runctl.core.errors import UsageError
from runctl.spend import by_day, by_host, by_run, parse_since
from runctl.store import Store

DAY = 86400.0
MIDNIGHT = 20 * 365 * DAY  # a UTC midnight, 1989-12-27 (a whole number of days since the epoch)


def _run(store: Store, run_id: str, key: str, created: float, ended: float | None) -> None:
    spec = {"run_id": run_id, "name": run_id, "provider": "aws", "host": "h", "project_dir": "/p",
            "run_dir": "/p/.runctl/runs/" + run_id, "command": ["true"], "created_at": created}  # fmt: skip
    store.add_run(spec, {}, {"status": "running", "seq": 1})
    if ended is not None:
        store.update_state(run_id, {"status": "completed", "seq": 2, "ended_at": ended})
    store.set_run_host(run_id, key)


def _host(store: Store, t: float) -> str:
    return store.upsert_host(
        "aws", "i-0123456789abcdef0", hourly_price=3.6, price_source="table 2026-11-01", state="running", t=t
    )


def test_concurrent_runs_share_the_host_and_the_rest_is_no_run(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    key = _host(store, 0.0)
    store.record_host_state(key, "stopped", t=4000.0)
    _run(store, "a", key, 1000.0, 3000.0)  # alone 1000-2000, shared 2000-3000
    _run(store, "b", key, 2000.0, 3000.0)
    rows = {r["run_id"]: r for r in by_run(store, None, now=9000.0)}
    # $3.6/h = $0.001/s: a = 1000 s + 500 s, b = 500 s, no run = 0-1000 and 3000-4000.
    assert rows["a"]["amount"] == pytest.approx(1.5) and rows["b"]["amount"] == pytest.approx(0.5)
    assert rows[None]["amount"] == pytest.approx(2.0) and rows[None]["name"] == "(no run)"
    assert sum(r["amount"] for r in rows.values()) == pytest.approx(by_host(store, None, 9000.0)[0]["amount"])
    assert rows["a"]["price_source"] == "table 2026-11-01"


def test_since_clips_and_days_split_at_midnight(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    key = _host(store, MIDNIGHT - 3600.0)
    store.record_host_state(key, "stopped", t=MIDNIGHT + 7200.0)
    days = by_day(store, None, now=MIDNIGHT + DAY)
    assert [(d["day"], d["amount"]) for d in days] == [
        ("1989-12-26", pytest.approx(3.6)),
        ("1989-12-27", pytest.approx(7.2)),
    ]
    since = by_host(store, MIDNIGHT, now=MIDNIGHT + DAY)
    assert since[0]["amount"] == pytest.approx(7.2) and since[0]["billed_seconds"] == pytest.approx(7200.0)


def test_since_takes_a_duration_or_a_date_and_refuses_the_rest() -> None:
    now = MIDNIGHT + 3600.0
    assert parse_since("1h", now) == MIDNIGHT
    assert parse_since("1989-12-27", now) == MIDNIGHT
    assert parse_since("1989-12-27T00:30:00Z", now) == MIDNIGHT + 1800.0
    for bad in ("yesterday", "1989-13-40", "3000-01-01"):
        with pytest.raises(UsageError):
            parse_since(bad, now)


def test_a_host_its_cloud_no_longer_lists_is_recorded_gone_once_the_store_is_stale(tmp_path: Path) -> None:
    import time

    from runctl.resources import VANISHED_SECONDS, forget_vanished

    store = Store(tmp_path / "s.db")
    old = store.upsert_host("aws", "i-0000000000000000a", region="us-east-1", state="running", t=time.time() - 3600)
    assert (store.host(old) or {})["state"] == "running"
    new = store.upsert_host("aws", "i-0000000000000000b", region="us-east-1", state="running")
    west = store.upsert_host("aws", "i-0000000000000000c", region="us-west-2", state="running")
    for key in (old, west):  # last heard of an hour ago
        store.db.execute("UPDATE hosts SET updated_at = ? WHERE host_key = ?", (time.time() - 3600, key))
    forget_vanished(store, "aws", set(), "us-east-1")
    assert (store.host(old) or {})["state"] == "terminated"
    assert (store.host(new) or {})["state"] == "running", "seen under %ds ago: maybe not listed yet" % VANISHED_SECONDS
    assert (store.host(west) or {})["state"] == "running", "another region's listing says nothing of it"
