"""A run's cost: the host's priced usage intervals clipped to the run's own lifetime."""

from __future__ import annotations

from pathlib import Path

from runctl.store import Store
from runctl.usage import describe, run_cost


def _run(store: Store, run_id: str, created: float) -> dict:
    spec = {"run_id": run_id, "name": "t", "provider": "aws", "host": "h", "project_dir": "/p",
            "run_dir": "/p/.runctl/runs/" + run_id, "command": ["true"], "created_at": created}  # fmt: skip
    store.add_run(spec, {}, {"status": "running", "seq": 1})
    return store.get(run_id) or {}


def test_cost_covers_only_the_run_and_only_billed_states(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    key = store.upsert_host("aws", "i-0123456789abcdef0", instance_type="g5.xlarge", hourly_price=3.6,
                            price_source="table 2026-11-01", state="running", t=1000.0)  # fmt: skip
    store.record_host_state(key, "stopped", t=5000.0)
    row = _run(store, "r1", created=2000.0)
    store.set_run_host("r1", key)
    row = store.get("r1") or row
    # Ran from 2000 to 5000 (3000 s at $3.6/h), then stopped (not billed) until "now".
    cost = run_cost(store, row, now=9000.0)
    assert cost is not None
    assert abs(cost["amount"] - 3.0) < 1e-6
    assert cost["billed_seconds"] == 3000.0
    assert cost["host_state"] == "stopped"
    assert describe(cost).startswith("$3.0000 so far at $3.6/hr (g5.xlarge, table 2026-11-01)")


def test_unpriced_time_makes_the_figure_a_lower_bound_and_local_runs_have_none(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    key = store.upsert_host("aws", "i-0fedcba987654321f", instance_type="x9.huge", state="running", t=0.0)
    row = _run(store, "r2", created=0.0)
    store.set_run_host("r2", key)
    cost = run_cost(store, store.get("r2") or row, now=60.0)
    assert cost is not None and cost["unpriced_seconds"] == 60.0
    assert describe(cost) == "price unknown (x9.huge)"
    assert run_cost(store, _run(store, "r3", created=0.0), now=60.0) is None
