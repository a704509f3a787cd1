"""runctl.core.policies: each policy firing when it should, and not firing when it shouldn't."""

from __future__ import annotations

import math
from typing import Any

import pytest

from runctl.core import status as st
from runctl.core.policies import NOTIFY, STOP, STOP_NOW, Decision, PolicyEngine, final_status, normalize

T0 = 10_000.0


def engine(**policies: Any) -> PolicyEngine:
    return PolicyEngine(policies, started_at=T0)


def feed_losses(eng: PolicyEngine, losses: list[float]) -> list[Decision | None]:
    return [eng.on_metric({"step": i + 1, "loss": loss}, T0 + i) for i, loss in enumerate(losses)]


# --------------------------------------------------------------------------------------------------
# loss threshold


def test_loss_threshold_patience_one_fires_on_first_report_below() -> None:
    decisions = feed_losses(engine(auto_stop_loss=0.5), [1.0, 0.8, 0.49])
    assert decisions[:2] == [None, None]
    fired = decisions[2]
    assert fired is not None
    assert fired.termination_status == st.T_AUTO_LOW_LOSS
    assert fired.action == STOP
    assert "0.49" in fired.message and "0.5" in fired.message


def test_loss_equal_to_threshold_is_not_below() -> None:
    assert feed_losses(engine(auto_stop_loss=0.5), [0.5, 0.5]) == [None, None]


def test_loss_threshold_default_patience_is_one() -> None:
    assert normalize({"auto_stop_loss": 0.5})["auto_stop_patience"] == 1


def test_patience_three_ignores_a_single_dip_then_a_rise() -> None:
    decisions = feed_losses(engine(auto_stop_loss=0.5, auto_stop_patience=3), [0.9, 0.4, 0.6, 0.45, 0.41, 0.7, 0.3])
    assert decisions == [None] * 7


def test_patience_three_fires_on_three_consecutive_reports_below() -> None:
    decisions = feed_losses(engine(auto_stop_loss=0.5, auto_stop_patience=3), [0.9, 0.4, 0.6, 0.45, 0.41, 0.3])
    assert decisions[:5] == [None] * 5
    fired = decisions[5]
    assert fired is not None
    assert fired.termination_status == st.T_AUTO_LOW_LOSS
    assert "3 consecutive" in fired.message


def test_reports_without_loss_do_not_break_or_count_toward_patience() -> None:
    eng = engine(auto_stop_loss=0.5, auto_stop_patience=2)
    assert eng.on_metric({"step": 1, "loss": 0.4}, T0 + 1) is None
    assert eng.on_metric({"step": 2, "accuracy": 0.9}, T0 + 2) is None
    assert eng.on_metric({"step": 3, "loss": None}, T0 + 3) is None
    fired = eng.on_metric({"step": 4, "loss": 0.3}, T0 + 4)
    assert fired is not None and fired.termination_status == st.T_AUTO_LOW_LOSS


@pytest.mark.parametrize("threshold", [0, 0.0, -1, -0.5, None])
def test_loss_threshold_disabled(threshold: float | None) -> None:
    eng = engine(auto_stop_loss=threshold)
    assert feed_losses(eng, [1.0, 0.1, 0.0, -5.0, 1e-9]) == [None] * 5


def test_loss_threshold_off_by_default() -> None:
    assert feed_losses(PolicyEngine(None, started_at=T0), [0.01, 0.0001]) == [None, None]


def test_string_loss_from_a_log_is_compared_as_a_number() -> None:
    fired = engine(auto_stop_loss=0.5).on_metric({"loss": "0.25"}, T0)
    assert fired is not None and fired.termination_status == st.T_AUTO_LOW_LOSS


# --------------------------------------------------------------------------------------------------
# NaN / inf


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf, "nan"])
def test_non_finite_loss_is_diverged_with_on_nan_stop(loss: Any) -> None:
    eng = engine()
    eng.on_metric({"step": 7, "loss": 0.8}, T0 + 1)
    fired = eng.on_metric({"step": 8, "loss": loss}, T0 + 2)
    assert fired is not None
    assert fired.termination_status == st.T_DIVERGED
    assert fired.action == STOP
    assert "step 8" in fired.message


def test_nan_is_diverged_even_with_a_loss_threshold() -> None:
    fired = engine(auto_stop_loss=0.5).on_metric({"loss": math.nan}, T0)
    assert fired is not None and fired.termination_status == st.T_DIVERGED


@pytest.mark.parametrize("loss", [math.nan, math.inf])
def test_non_finite_loss_ignored_with_on_nan_ignore(loss: float) -> None:
    eng = engine(on_nan="ignore", auto_stop_loss=0.5)
    assert eng.on_metric({"step": 1, "loss": loss}, T0) is None
    assert eng.on_metric({"step": 2, "loss": 0.9}, T0 + 1) is None


def test_nan_breaks_a_low_loss_streak() -> None:
    eng = engine(on_nan="ignore", auto_stop_loss=0.5, auto_stop_patience=2)
    assert eng.on_metric({"loss": 0.4}, T0) is None
    assert eng.on_metric({"loss": math.nan}, T0 + 1) is None
    assert eng.on_metric({"loss": 0.4}, T0 + 2) is None
    assert eng.on_metric({"loss": 0.4}, T0 + 3) is not None


# --------------------------------------------------------------------------------------------------
# max duration


def test_max_duration_fires_when_reached() -> None:
    eng = engine(max_duration=600)
    assert eng.on_tick(T0 + 599.9, marker_ready=False) is None
    fired = eng.on_tick(T0 + 600, marker_ready=False)
    assert fired is not None
    assert fired.termination_status == st.T_MAX_DURATION
    assert fired.action == STOP
    assert "600" in fired.message


def test_max_duration_off_by_default() -> None:
    assert engine().on_tick(T0 + 10 * 86400, marker_ready=False) is None


def test_max_duration_is_not_extended_by_activity() -> None:
    eng = engine(max_duration=60)
    for t in range(0, 60, 5):
        eng.on_output(T0 + t)
        eng.on_metric({"loss": 1.0}, T0 + t)
    fired = eng.on_tick(T0 + 60, marker_ready=False)
    assert fired is not None and fired.termination_status == st.T_MAX_DURATION


# --------------------------------------------------------------------------------------------------
# hang


def test_hang_fires_after_timeout_without_output_or_metrics() -> None:
    eng = engine(hang_timeout=30)
    eng.on_output(T0 + 5)
    assert eng.on_tick(T0 + 34, marker_ready=False) is None
    fired = eng.on_tick(T0 + 35, marker_ready=False)
    assert fired is not None
    assert fired.termination_status == st.T_HANG
    assert fired.action == STOP
    assert "30" in fired.message


def test_hang_counts_from_the_start_when_there_is_no_output() -> None:
    eng = engine(hang_timeout=30)
    assert eng.on_tick(T0 + 29, marker_ready=False) is None
    assert eng.on_tick(T0 + 30, marker_ready=False) is not None


def test_slow_but_progressing_run_is_not_a_hang() -> None:
    eng = engine(hang_timeout=30)
    for t in range(0, 600, 20):
        eng.on_output(T0 + t)
        assert eng.on_tick(T0 + t + 19, marker_ready=False) is None


def test_metrics_count_as_activity() -> None:
    eng = engine(hang_timeout=30)
    for t in range(0, 300, 25):
        eng.on_metric({"step": t, "loss": 1.0}, T0 + t)
        assert eng.on_tick(T0 + t + 24, marker_ready=False) is None


def test_hang_disabled_by_default() -> None:
    assert engine().on_tick(T0 + 86400, marker_ready=False) is None


def test_on_hang_notify_returns_one_notify_decision() -> None:
    eng = engine(hang_timeout=30, on_hang="notify")
    fired = eng.on_tick(T0 + 31, marker_ready=False)
    assert fired is not None
    assert fired.termination_status == st.T_HANG
    assert fired.action == NOTIFY
    assert [eng.on_tick(T0 + t, marker_ready=False) for t in range(32, 200, 7)] == [None] * 24


def test_on_hang_notify_notifies_again_after_the_run_recovers_and_hangs_again() -> None:
    eng = engine(hang_timeout=30, on_hang="notify")
    assert eng.on_tick(T0 + 31, marker_ready=False) is not None
    eng.on_output(T0 + 40)
    assert eng.on_tick(T0 + 41, marker_ready=False) is None
    again = eng.on_tick(T0 + 71, marker_ready=False)
    assert again is not None and again.action == NOTIFY


# --------------------------------------------------------------------------------------------------
# exit grace after a stable marker


def test_lingering_process_is_stopped_exit_grace_after_a_stable_marker() -> None:
    eng = engine(exit_grace=60)
    assert eng.on_tick(T0 + 100, marker_ready=True) is None
    assert eng.on_tick(T0 + 159, marker_ready=True) is None
    fired = eng.on_tick(T0 + 160, marker_ready=True)
    assert fired is not None
    assert fired.termination_status == st.T_AUTO_COMPLETE
    assert fired.action == STOP_NOW  # the work is done: straight to SIGTERM, no stop grace
    assert st.STATUS_FOR_TERMINATION[fired.termination_status] == st.COMPLETED


def test_exit_grace_defaults_to_sixty_seconds() -> None:
    eng = engine()
    assert eng.on_tick(T0 + 10, marker_ready=True) is None
    assert eng.on_tick(T0 + 69, marker_ready=True) is None
    assert eng.on_tick(T0 + 70, marker_ready=True) is not None


def test_exit_grace_restarts_when_the_marker_stops_being_ready() -> None:
    eng = engine(exit_grace=10)
    assert eng.on_tick(T0 + 1, marker_ready=True) is None
    assert eng.on_tick(T0 + 5, marker_ready=False) is None
    assert eng.on_tick(T0 + 6, marker_ready=True) is None
    assert eng.on_tick(T0 + 15, marker_ready=True) is None
    assert eng.on_tick(T0 + 16, marker_ready=True) is not None


def test_no_marker_no_exit_grace() -> None:
    eng = engine(exit_grace=1)
    assert [eng.on_tick(T0 + t, marker_ready=False) for t in range(100)] == [None] * 100


# --------------------------------------------------------------------------------------------------
# final-epoch step stall


def stall_polls(eng: PolicyEngine, n: int) -> list[Decision | None]:
    return [eng.on_poll() for _ in range(n)]


def test_final_epoch_stall_fires_after_stall_polls_unchanged_polls() -> None:
    eng = engine(stall_polls=3)
    eng.on_metric({"step": 300, "epoch": 3, "total_epochs": 3, "loss": 0.2}, T0 + 1)
    decisions = stall_polls(eng, 4)
    assert decisions[:3] == [None, None, None]
    fired = decisions[3]
    assert fired is not None
    assert fired.termination_status == st.T_AUTO_COMPLETE
    assert fired.action == STOP  # graceful: the script may still be evaluating or saving
    assert "3/3" in fired.message and "300" in fired.message


def test_final_epoch_is_one_based_epoch_equal_to_total() -> None:
    eng = engine(stall_polls=2)
    eng.on_metric({"step": 200, "epoch": 2, "total_epochs": 3}, T0)
    assert stall_polls(eng, 10) == [None] * 10


@pytest.mark.parametrize("epoch", [1, 2, 2.9])
def test_no_stall_on_earlier_epochs(epoch: float) -> None:
    eng = engine(stall_polls=3)
    eng.on_metric({"step": 100, "epoch": epoch, "total_epochs": 3}, T0)
    assert stall_polls(eng, 20) == [None] * 20


def test_stall_resets_when_step_advances() -> None:
    eng = engine(stall_polls=3)
    eng.on_metric({"step": 10, "epoch": 3, "total_epochs": 3}, T0)
    assert stall_polls(eng, 3) == [None] * 3
    eng.on_metric({"step": 11}, T0 + 1)
    assert stall_polls(eng, 3) == [None] * 3
    assert eng.on_poll() is not None


def test_steady_progress_on_the_final_epoch_never_stalls() -> None:
    eng = engine(stall_polls=1)
    for step in range(100, 130):
        eng.on_metric({"step": step, "epoch": 3, "total_epochs": 3}, T0 + step)
        assert eng.on_poll() is None


def test_no_stall_without_total_epochs() -> None:
    eng = engine(stall_polls=1)
    eng.on_metric({"step": 10, "epoch": 5}, T0)
    assert stall_polls(eng, 10) == [None] * 10


def test_total_epochs_is_remembered_across_reports() -> None:
    eng = engine(stall_polls=2)
    eng.on_metric({"step": 1, "epoch": 1, "total_epochs": 2}, T0)
    eng.on_metric({"step": 50, "epoch": 2}, T0 + 1)
    assert stall_polls(eng, 2) == [None, None]
    assert eng.on_poll() is not None


# --------------------------------------------------------------------------------------------------
# final status


@pytest.mark.parametrize(
    ("reason", "exit_code", "signalled", "expected"),
    [
        (None, 0, False, st.COMPLETED),
        (None, 1, False, st.FAILED),
        (None, 137, False, st.FAILED),
        (st.T_AUTO_LOW_LOSS, 0, False, st.COMPLETED),
        (st.T_AUTO_LOW_LOSS, 143, True, st.COMPLETED),
        (st.T_AUTO_LOW_LOSS, 1, False, st.FAILED),
        (st.T_AUTO_COMPLETE, 0, False, st.COMPLETED),
        (st.T_AUTO_COMPLETE, 137, True, st.COMPLETED),
        (st.T_AUTO_COMPLETE, 2, False, st.FAILED),
        (st.T_USER_STOP, 0, False, st.STOPPED),
        (st.T_USER_STOP, 143, True, st.STOPPED),
        (st.T_HANG, 137, True, st.STOPPED),
        (st.T_MAX_DURATION, 0, False, st.STOPPED),
        (st.T_MAX_DURATION, 143, True, st.STOPPED),
        (st.T_DIVERGED, 0, False, st.FAILED),
        (st.T_DIVERGED, 143, True, st.FAILED),
    ],
)
def test_final_status(reason: str | None, exit_code: int, signalled: bool, expected: str) -> None:
    decision = Decision(reason, "why") if reason else None
    assert final_status(decision, exit_code, signalled) == expected


# --------------------------------------------------------------------------------------------------
# configuration


def test_normalize_fills_defaults_and_clamps() -> None:
    cfg = normalize({"auto_stop_patience": 0, "stall_polls": -2, "hang_timeout": None})
    assert cfg["auto_stop_patience"] == 1
    assert cfg["stall_polls"] == 1
    assert cfg["hang_timeout"] is None
    assert cfg["exit_grace"] == 60.0
    assert cfg["stop_grace"] == 30.0
    assert cfg["on_nan"] == STOP
    assert cfg["on_hang"] == STOP
