"""The budget rule (`--max-cost`) as a pure decision over price, budget and clock: no process runs."""

from __future__ import annotations

import math

import pytest

from runctl import budget
from runctl.core import policies
from runctl.core import status as st

PRICE = 3600.0  # $1 a second, so seconds read as dollars


def test_no_budget_or_no_price_never_fires() -> None:
    assert policies.budget_decision(None, PRICE, 0.0, 1e9, 5.0, 0.1) is None
    assert policies.budget_decision(10.0, None, 0.0, 1e9, 5.0, 0.1) is None
    assert policies.budget_decision(10.0, 0.0, 0.0, 1e9, 5.0, 0.1) is None


def test_fires_one_poll_interval_before_the_budget_is_spent() -> None:
    assert policies.budget_decision(10.0, PRICE, 100.0, 104.99, 5.0, 0.1) is None
    decision = policies.budget_decision(10.0, PRICE, 100.0, 105.0, 5.0, 0.1)
    assert decision is not None
    assert decision.termination_status == st.T_BUDGET
    assert st.STATUS_FOR_TERMINATION[decision.termination_status] == st.STOPPED
    assert decision.message.startswith("spent $5.00 of $10.00 budget at $3600/hr after 5.0 s")


@pytest.mark.parametrize(("poll", "fired_at"), [(5.0, 5.0), (1.0, 9.0), (2.0, 8.5), (0.5, 9.6)])
def test_the_whole_stop_sequence_ends_within_one_poll_past_the_budget(poll: float, fired_at: float) -> None:
    """Fired at any moment (even late, past the budget), STOP_TRAINING grace + SIGTERM grace + the
    loop's slack leave the run's cost at most one poll interval's cost over."""
    tick = 0.1
    decision = policies.budget_decision(10.0, PRICE, 0.0, fired_at, poll, tick)
    assert decision is not None and decision.grace is not None and decision.term_grace is not None
    assert decision.grace >= 0 and decision.term_grace >= 0
    latest_end = fired_at + decision.grace + decision.term_grace + 3 * tick
    assert latest_end * PRICE / 3600.0 <= 10.0 + poll * PRICE / 3600.0


def test_a_stop_grace_shorter_than_the_window_is_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from runctl.agent.record import RunRecord
    from runctl.agent.stopper import Stopper

    run = tmp_path / "run"
    run.mkdir()
    stopper = Stopper(RunRecord(str(run), str(tmp_path), {"status": st.RUNNING, "seq": 1}), str(tmp_path), print)
    stopper.engine = policies.PolicyEngine({"stop_grace": 1, "term_grace": 10, "poll_interval": 5}, 0.0)
    decision = policies.budget_decision(10.0, PRICE, 0.0, 5.0, 5.0, 0.1)
    stopper.apply(decision, 50.0)
    sent: list[str] = []
    assert stopper.advance(50.9, lambda name: sent.append(name) or [], "group") is None
    assert stopper.advance(51.0, lambda name: sent.append(name) or [], "group") == "SIGTERM"
    assert decision is not None and decision.term_grace is not None
    # The kill comes after the budget's shortened term grace, not the run's 10 s.
    assert stopper.advance(51.0 + decision.term_grace, lambda name: sent.append(name) or [], "group") == "SIGKILL"


def test_the_engine_counts_from_when_the_agent_took_the_run() -> None:
    engine = policies.PolicyEngine({"max_cost": 10.0, "poll_interval": 1.0}, 50.0, PRICE, cost_since=45.0, tick=0.1)
    assert engine.on_budget(53.9) is None
    fired = engine.on_budget(54.0)
    assert fired is not None and fired.termination_status == st.T_BUDGET
    spent = engine.spend(54.0)
    assert spent is not None and spent.spent == pytest.approx(9.0) and spent.seconds_left == pytest.approx(1.0)
    assert policies.PolicyEngine({"max_cost": 10.0}, 0.0).spend(1e6) is None  # no price: no figures


def test_the_budget_is_its_own_rule_on_its_own_clock() -> None:
    engine = policies.PolicyEngine({"max_cost": 3.0, "poll_interval": 1.0}, 1e9, PRICE, cost_since=10.0)
    assert engine.on_tick(1e9 + 100, False) is None  # the wall clock plays no part
    fired = engine.on_budget(12.0)
    assert fired is not None and fired.termination_status == st.T_BUDGET


def test_status_view_runs_on_at_the_hourly_price_while_the_run_goes() -> None:
    written = {"spent": 2.0, "max_cost": 10.0, "hourly_price": PRICE, "at": 100.0}
    live = budget.current({"status": st.RUNNING, "budget": written}, now=103.0)
    assert live is not None
    assert live["spent"] == pytest.approx(5.0) and live["left"] == pytest.approx(5.0)
    assert live["seconds_left"] == pytest.approx(5.0)
    assert budget.describe(live, running=True) == "$5.00 of $10.00 at $3600/hr; 5.0s left at this rate"
    ended = budget.current({"status": st.STOPPED, "budget": written}, now=1e9)
    assert ended is not None and ended["spent"] == 2.0
    assert budget.describe(ended, running=False) == "$2.00 of $10.00 at $3600/hr"
    assert budget.current({"status": st.RUNNING}) is None
    assert budget.current({"status": st.RUNNING, "budget": {"spent": "x"}}) is None


def test_small_amounts_keep_their_cents_fractions() -> None:
    assert policies.money(0.01234) == "0.0123"
    assert policies.money(12.345) == "12.35"
    assert policies.money(0.0000234) == "0.0000234"
    assert policies.money(0) == "0.0000"
    assert math.isinf(policies.Spend(0.0, 1.0, 0.0, 0.0).seconds_left)


def test_a_long_user_stop_under_way_is_hurried_when_the_budget_runs_out(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from runctl.agent.record import RunRecord
    from runctl.agent.stopper import Stopper

    run = tmp_path / "run"
    run.mkdir()
    stopper = Stopper(RunRecord(str(run), str(tmp_path), {"status": st.RUNNING, "seq": 1}), str(tmp_path), print)
    stopper.engine = policies.PolicyEngine({"stop_grace": 30, "term_grace": 10, "poll_interval": 5}, 0.0)
    sent: list[str] = []

    def send(name: str) -> list[dict[str, object]]:
        sent.append(name)
        return []

    stopper.initiate(policies.Decision(st.T_USER_STOP, "stopped by the user"), 0.0, grace=3600.0)
    decision = policies.budget_decision(10.0, PRICE, 0.0, 5.0, 5.0, 0.1)
    assert decision is not None and decision.grace is not None and decision.term_grace is not None
    stopper.apply(decision, 5.0)
    stopper.apply(decision, 5.1)  # every tick says so again: hurried once
    assert stopper.advance(5.0 + decision.grace, send, "group") == "SIGTERM"
    assert stopper.advance(5.0 + decision.grace + decision.term_grace, send, "group") == "SIGKILL"
    assert stopper.reason is not None and stopper.reason.termination_status == st.T_USER_STOP  # the user asked first
    names = [json.loads(line)["event"] for line in (run / "events.jsonl").read_text().splitlines()]
    assert names.count("stop_hurried_by_budget") == 1
