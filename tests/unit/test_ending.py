"""The verdict on a run's end, from what the agent observed: pure."""

from __future__ import annotations

from runctl.agent import ending
from runctl.core import policies
from runctl.core import status as st


def test_exit_fields_name_the_signal() -> None:
    assert ending.exit_fields(0) == (0, None)
    assert ending.exit_fields(3) == (3, None)
    assert ending.exit_fields(-9) == (137, "SIGKILL")


def test_a_clean_exit_without_a_stop_is_completed() -> None:
    status, term, _ = ending.verdict(None, 0, False, {}, 10.0, 20.0, "")
    assert (status, term) == (st.COMPLETED, st.T_AUTO_COMPLETE)


def test_a_failed_exit_names_the_exception_the_log_ends_with() -> None:
    tail = 'Traceback (most recent call last):\n  File "t.py", line 1\nValueError: bad batch\n'
    status, term, message = ending.verdict(None, 1, False, {}, 10.0, 20.0, tail)
    assert (status, term) == (st.FAILED, st.T_FAILED)
    assert "ValueError: bad batch" in message


def test_a_stop_the_agent_initiated_decides_the_end() -> None:
    stall = policies.Decision(st.T_STALL, "no progress")
    assert ending.verdict(stall, 0, False, {}, 0.0, 1.0, "") == (st.STOPPED, st.T_STALL, "no progress")
    assert ending.verdict(stall, 2, False, {}, 0.0, 1.0, "")[:2] == (st.STOPPED, st.T_STALL)
    low = policies.Decision(st.T_AUTO_LOW_LOSS, "loss low")
    status, term, message = ending.verdict(low, 2, False, {}, 0.0, 1.0, "")
    assert (status, term) == (st.FAILED, st.T_FAILED) and "while stopping (auto_low_loss: loss low)" in message


def test_summary_keeps_the_original_keys() -> None:
    out = ending.summary("r1", {"status": "completed", "step": 5, "loss": 0.1}, [{"step": 5, "loss": 0.1}])
    assert out["job_id"] == out["run_id"] == "r1"
    assert out["losses"] == [{"step": 5, "loss": 0.1}] and out["termination_status"] == ""
