"""What `runs status` says of a run in an --auto-resume chain (runctl.spotresume.chain_view), over a real store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runctl.core.spec import RunSpec
from runctl.spotresume import chain_view, describe_chain, spot_block
from runctl.store import Store


def add(store: Store, run_id: str, **fields: Any) -> dict[str, Any]:
    spec = RunSpec(run_id=run_id, name="train", project_dir="/tmp/proj", command=["python3", "t.py"], **fields)
    store.add_run(spec.to_dict(), {"kind": "aws"}, {"status": "pending", "seq": 0})
    row = store.get(run_id)
    assert row is not None
    return row


def resumed(step: int | None, name: str = "checkpoint_epoch_3.json") -> dict[str, Any]:
    return {"uri": "s3://b/ck/x/" + name, "bucket": "b", "entry": {"name": name, "step": step}, "run_id": "x"}


def test_the_chain_lists_the_runs_before_and_the_steps_not_lost(tmp_path: Path) -> None:
    store = Store(tmp_path / "runctl.db")
    first = add(store, "aaaa0001", attempt=1, auto_resume=2)
    add(store, "aaaa0002", attempt=2, auto_resume=2, resumed_from="aaaa0001", resume_s3=resumed(120))
    third = add(store, "aaaa0003", attempt=3, auto_resume=2, resumed_from="aaaa0002", resume_s3=resumed(250))
    chain = chain_view(store, third)
    assert chain == {
        "attempt": 3,
        "attempts": 3,
        "auto_resume": 2,
        "previous_runs": ["aaaa0001", "aaaa0002"],
        "resumed_from": "aaaa0002",
        "steps_not_lost": 250,
        "checkpoint": "checkpoint_epoch_3.json",
    }
    assert describe_chain(chain) == (
        "attempt 3 of 3 (--auto-resume 2); after aaaa0001, aaaa0002; 250 steps not lost (checkpoint_epoch_3.json)"
    )
    assert describe_chain(chain_view(store, first) or {}) == "attempt 1 of 3 (--auto-resume 2)"


def test_a_relaunch_with_no_checkpoint_to_resume_says_it_started_over(tmp_path: Path) -> None:
    store = Store(tmp_path / "runctl.db")
    add(store, "bbbb0001", attempt=1, auto_resume=1)
    second = add(store, "bbbb0002", attempt=2, auto_resume=1, resumed_from="bbbb0001")
    assert describe_chain(chain_view(store, second) or {}) == (
        "attempt 2 of 2 (--auto-resume 1); after bbbb0001; started over (no verified checkpoint)"
    )


def test_a_run_outside_any_chain_shows_none_and_a_loop_in_the_links_ends(tmp_path: Path) -> None:
    store = Store(tmp_path / "runctl.db")
    assert chain_view(store, add(store, "cccc0001")) is None
    add(store, "cccc0002", attempt=2, auto_resume=3, resumed_from="cccc0003")
    looped = add(store, "cccc0003", attempt=3, auto_resume=3, resumed_from="cccc0002")
    assert (chain_view(store, looped) or {})["previous_runs"] == ["cccc0002"]


def test_the_hosts_poll_interval_can_be_shortened_but_not_broken(monkeypatch: Any) -> None:
    monkeypatch.delenv("RUNCTL_SPOT_POLL_INTERVAL", raising=False)
    assert spot_block() == {"interval": 5.0}
    for raw, expected in (("0.2", 0.2), ("0", 5.0), ("soon", 5.0), ("3600", 5.0)):
        monkeypatch.setenv("RUNCTL_SPOT_POLL_INTERVAL", raw)
        assert spot_block() == {"interval": expected}
