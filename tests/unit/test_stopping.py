"""The stop sequence as a pure function: requests, graces and a clock in, the signal due out."""

from __future__ import annotations

import math

import pytest

from runctl.core.stopping import (
    MAX_GRACE,
    SIGKILL,
    SIGTERM,
    Request,
    Sequence,
    clamp_grace,
    kill_deadline,
    next_signal,
    term_deadline,
)


def test_one_request_sigterm_after_its_grace_then_sigkill_after_term_grace() -> None:
    requests = [Request(100.0, 30.0)]
    assert next_signal(requests, 10.0, 129.9, None, False) is None
    assert next_signal(requests, 10.0, 130.0, None, False) == SIGTERM
    assert next_signal(requests, 10.0, 139.9, 130.0, False) is None
    assert next_signal(requests, 10.0, 140.0, 130.0, False) == SIGKILL
    assert next_signal(requests, 10.0, 1e9, 130.0, True) is None, "nothing after SIGKILL"


def test_nothing_is_due_without_a_request_or_once_the_process_is_gone() -> None:
    assert next_signal([], 10.0, 1e9, None, False) is None
    assert next_signal([Request(0.0, 0.0)], 10.0, 5.0, None, False, alive=False) is None


def test_a_second_request_with_a_shorter_grace_hurries_sigterm() -> None:
    requests = [Request(0.0, 3600.0), Request(50.0, 0.0)]
    assert term_deadline(requests) == 50.0
    assert next_signal(requests, 10.0, 50.0, None, False) == SIGTERM


def test_a_later_request_never_delays_the_stop() -> None:
    requests = [Request(0.0, 5.0), Request(4.0, 600.0)]
    assert term_deadline(requests) == 5.0
    assert next_signal(requests, 10.0, 5.0, None, False) == SIGTERM


def test_a_request_after_sigterm_bounds_the_time_to_sigkill() -> None:
    before = [Request(0.0, 0.0)]
    assert kill_deadline(before, 10.0, 0.0) == 10.0
    now_again = [*before, Request(2.0, 0.0)]
    assert kill_deadline(now_again, 10.0, 0.0) == 2.0
    assert next_signal(now_again, 10.0, 2.0, 0.0, False) == SIGKILL
    # A request after SIGTERM with a longer grace than what is left changes nothing.
    assert kill_deadline([*before, Request(2.0, 30.0)], 10.0, 0.0) == 10.0
    assert kill_deadline(before, 10.0, None) is None


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [
        (None, 30.0, 30.0),
        (5, 30.0, 5.0),
        (-1, 30.0, 0.0),
        (1e12, 30.0, MAX_GRACE),
        (math.inf, 30.0, MAX_GRACE),
        (math.nan, 30.0, 30.0),
        ("soon", 30.0, 30.0),
        (None, 1e9, MAX_GRACE),
    ],
)
def test_every_grace_is_bounded(value: object, default: float, expected: float) -> None:
    assert clamp_grace(value, default) == expected


def test_sequence_state_an_unbounded_first_grace_is_hurried_by_now() -> None:
    seq = Sequence(term_grace=10.0)
    assert seq.add(0.0, 1e12) is False, "the first request has nothing to hurry"
    assert seq.next_deadline() == MAX_GRACE
    assert seq.due(100.0) is None
    assert seq.add(100.0, 0.0) is True
    assert seq.due(100.0) == SIGTERM
    seq.sent(SIGTERM, 100.0)
    assert seq.due(105.0) is None
    assert seq.add(105.0, 0.0) is True, "--now again after SIGTERM: SIGKILL at once"
    assert seq.due(105.0) == SIGKILL
    seq.sent(SIGKILL, 105.0)
    assert seq.due(1e9) is None and seq.next_deadline() is None
