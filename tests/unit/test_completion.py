"""runctl.core.completion: how a run ended, in the order of trust of the design."""

from __future__ import annotations

import pytest

from runctl.core import completion
from runctl.core import status as st
from runctl.core.completion import (
    MARKER_ABSENT,
    MARKER_EMPTY,
    MARKER_READY,
    MARKER_STABLE_SECONDS,
    MARKER_STALE,
    MARKER_UNSTABLE,
    Evidence,
    classify,
    marker_state,
)

START = 1_000.0
NOW = 2_000.0
READY_MARKER = {"marker_size": 20, "marker_mtime": NOW - 10}


def evidence(**kwargs: object) -> Evidence:
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("started_at", START)
    return Evidence(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# marker_state


def test_marker_absent() -> None:
    assert marker_state(None, None, START, NOW) == MARKER_ABSENT


def test_marker_ready_when_non_empty_stable_and_newer_than_start() -> None:
    assert marker_state(12, NOW - MARKER_STABLE_SECONDS, START, NOW) == MARKER_READY
    assert marker_state(12, START + 1, START, NOW) == MARKER_READY


def test_marker_empty_is_not_complete() -> None:
    assert marker_state(0, NOW - 60, START, NOW) == MARKER_EMPTY


@pytest.mark.parametrize("age", [0.0, 0.5, 1.9])
def test_marker_still_being_written_is_not_complete(age: float) -> None:
    assert marker_state(12, NOW - age, START, NOW) == MARKER_UNSTABLE


def test_marker_from_before_the_start_is_stale() -> None:
    assert marker_state(12, START - 1, START, NOW) == MARKER_STALE
    assert marker_state(0, START - 1, START, NOW) == MARKER_STALE


def test_marker_without_known_start_only_needs_to_be_stable_and_non_empty() -> None:
    assert marker_state(12, NOW - 5, None, NOW) == MARKER_READY


def test_custom_stability_window() -> None:
    assert marker_state(12, NOW - 3, START, NOW, stable_for=5) == MARKER_UNSTABLE
    assert marker_state(12, NOW - 5, START, NOW, stable_for=5) == MARKER_READY


# --------------------------------------------------------------------------------------------------
# classify: 1. the recorded exit code


def test_exit_zero_is_completed() -> None:
    verdict = classify(evidence(exit_code=0, pid=42, pid_alive=False))
    assert verdict.status == st.COMPLETED
    assert verdict.termination_status == st.T_AUTO_COMPLETE
    assert verdict.source == "exit_code"


def test_exit_zero_with_ready_marker_is_completed() -> None:
    verdict = classify(evidence(exit_code=0, **READY_MARKER))
    assert verdict.status == st.COMPLETED
    assert "marker" in verdict.message


@pytest.mark.parametrize("code", [1, 2, 137, 143, 255])
def test_non_zero_exit_is_failed(code: int) -> None:
    verdict = classify(evidence(exit_code=code, pid=42, pid_alive=False))
    assert verdict.status == st.FAILED
    assert verdict.termination_status == st.T_FAILED
    assert str(code) in verdict.message
    assert verdict.source == "exit_code"


def test_non_zero_exit_with_a_ready_marker_is_failed() -> None:
    verdict = classify(evidence(exit_code=1, pid=42, pid_alive=False, **READY_MARKER))
    assert verdict.status == st.FAILED
    assert "does not count" in verdict.message


def test_exit_by_signal_is_named() -> None:
    verdict = classify(evidence(exit_code=137))
    assert verdict.status == st.FAILED
    assert "signal 9" in verdict.message


@pytest.mark.parametrize("log", ["Training complete\n", "Epoch 5/5\nTraining finished\nDONE\n", "COMPLETE"])
def test_log_pattern_never_overrides_a_non_zero_exit(log: str) -> None:
    verdict = classify(evidence(exit_code=1, log_tail=log))
    assert verdict.status == st.FAILED


# --------------------------------------------------------------------------------------------------
# classify: 2. the completion marker


def test_ready_marker_completes_a_run_whose_process_lingers() -> None:
    verdict = classify(evidence(pid=42, pid_alive=True, **READY_MARKER))
    assert verdict.status == st.COMPLETED
    assert verdict.termination_status == st.T_AUTO_COMPLETE
    assert verdict.source == "marker"
    assert "still running" in verdict.message


def test_ready_marker_without_pid_completes() -> None:
    verdict = classify(evidence(**READY_MARKER))
    assert verdict.status == st.COMPLETED
    assert verdict.source == "marker"


def test_ready_marker_beats_a_vanished_pid() -> None:
    verdict = classify(evidence(pid=42, pid_alive=False, **READY_MARKER))
    assert verdict.status == st.COMPLETED


NOT_READY_MARKERS = pytest.mark.parametrize(
    "marker",
    [
        {"marker_size": 0, "marker_mtime": NOW - 60},
        {"marker_size": 20, "marker_mtime": NOW - 1},
        {"marker_size": 20, "marker_mtime": START - 100},
    ],
    ids=["empty", "unstable", "stale"],
)


@NOT_READY_MARKERS
def test_marker_not_ready_leaves_a_live_process_running(marker: dict) -> None:
    verdict = classify(evidence(pid=42, pid_alive=True, **marker))
    assert verdict.status == st.RUNNING
    assert verdict.termination_status == ""


@pytest.mark.parametrize(
    "marker",
    [{"marker_size": 0, "marker_mtime": NOW - 60}, {"marker_size": 20, "marker_mtime": START - 100}],
    ids=["empty", "stale"],
)
def test_marker_that_cannot_count_with_pid_gone_is_lost(marker: dict) -> None:
    verdict = classify(evidence(pid=42, pid_alive=False, **marker))
    assert verdict.status == st.LOST


# --------------------------------------------------------------------------------------------------
# classify: 3. the pid, 4. log patterns


def test_pid_gone_without_exit_code_is_lost_never_success() -> None:
    verdict = classify(evidence(pid=4242, pid_alive=False, log_tail="Training complete\n"))
    assert verdict.status == st.LOST
    assert verdict.termination_status == st.T_LOST
    assert "4242" in verdict.message
    assert verdict.source == "pid"


def test_pid_alive_is_running() -> None:
    verdict = classify(evidence(pid=4242, pid_alive=True, log_tail="Training complete\n"))
    assert verdict.status == st.RUNNING
    assert verdict.source == "pid"


@pytest.mark.parametrize(
    ("log", "word"),
    [
        ("epoch 3\nTraining complete\n", "Training complete"),
        ("Training finished in 3m\n", "Training finished"),
        ("all COMPLETE\n", "COMPLETE"),
        ("DONE\n", "DONE"),
    ],
)
def test_log_pattern_alone_is_only_a_hint(log: str, word: str) -> None:
    verdict = classify(evidence(log_tail=log))
    assert verdict.status == "unknown"
    assert verdict.status not in st.TERMINAL
    assert verdict.source == "log"
    assert word in verdict.message
    assert "hint" in verdict.message


@pytest.mark.parametrize("log", ["", "epoch 1 loss=0.5\n", "INCOMPLETE\n", "completed 3 of 10 batches\n"])
def test_nothing_known_is_unknown(log: str) -> None:
    verdict = classify(evidence(log_tail=log))
    assert verdict.status == "unknown"
    assert verdict.source == "none"


def test_gone_process_with_a_settling_marker_is_not_yet_lost() -> None:
    now = 1000.0
    settling = completion.classify(
        completion.Evidence(now=now, started_at=900.0, marker_size=10, marker_mtime=now - 0.5, pid=42, pid_alive=False)
    )
    assert settling.status == st.RUNNING and settling.termination_status == ""
    settled = completion.classify(
        completion.Evidence(
            now=now + 2, started_at=900.0, marker_size=10, marker_mtime=now - 0.5, pid=42, pid_alive=False
        )
    )
    assert settled.status == st.COMPLETED
    empty = completion.classify(
        completion.Evidence(now=now, started_at=900.0, marker_size=0, marker_mtime=now - 0.5, pid=42, pid_alive=False)
    )
    assert empty.status == st.LOST
