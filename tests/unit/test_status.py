"""runctl.core.status: monotonic statuses and what they mean for exit codes."""

from __future__ import annotations

import itertools

import pytest

from runctl.core import status as st
from runctl.core.errors import EXIT_OK, EXIT_RUN_FAILED

ACTIVE = list(st.ACTIVE_ORDER)
TERMINAL = sorted(st.TERMINAL)


def test_documented_order() -> None:
    assert st.ACTIVE_ORDER == ("pending", "provisioning", "syncing", "setting_up", "running", "stopping")
    assert set(st.TERMINAL) == {"completed", "failed", "stopped", "interrupted", "lost"}
    assert set(st.ALL) == set(st.ACTIVE_ORDER) | set(st.TERMINAL)


@pytest.mark.parametrize(("current", "new"), list(itertools.combinations_with_replacement(ACTIVE, 2)))
def test_active_statuses_move_forward(current: str, new: str) -> None:
    assert st.can_advance(current, new)


@pytest.mark.parametrize(("current", "new"), [(b, a) for a, b in itertools.combinations(ACTIVE, 2)])
def test_active_statuses_never_move_back(current: str, new: str) -> None:
    assert not st.can_advance(current, new)


@pytest.mark.parametrize(("current", "new"), list(itertools.product(ACTIVE, TERMINAL)))
def test_any_active_status_can_end(current: str, new: str) -> None:
    assert st.can_advance(current, new)


@pytest.mark.parametrize(("current", "new"), list(itertools.product(TERMINAL, ACTIVE + TERMINAL)))
def test_terminal_status_never_changes(current: str, new: str) -> None:
    assert not st.can_advance(current, new)


@pytest.mark.parametrize("new", ["unknown", "", "RUNNING"])
def test_unknown_status_is_refused(new: str) -> None:
    assert not st.can_advance(st.RUNNING, new)


def test_is_terminal() -> None:
    assert all(st.is_terminal(s) for s in TERMINAL)
    assert not any(st.is_terminal(s) for s in [*ACTIVE, "unknown"])


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (st.COMPLETED, EXIT_OK),
        (st.FAILED, EXIT_RUN_FAILED),
        (st.STOPPED, EXIT_RUN_FAILED),
        (st.LOST, EXIT_RUN_FAILED),
        (st.INTERRUPTED, EXIT_RUN_FAILED),
        (None, EXIT_RUN_FAILED),
        ("unknown", EXIT_RUN_FAILED),
    ],
)
def test_exit_code_for(status: str | None, code: int) -> None:
    assert st.exit_code_for(status) == code


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        (st.T_AUTO_COMPLETE, st.COMPLETED),
        (st.T_AUTO_LOW_LOSS, st.COMPLETED),
        (st.T_USER_STOP, st.STOPPED),
        (st.T_HANG, st.STOPPED),
        (st.T_MAX_DURATION, st.STOPPED),
        (st.T_DIVERGED, st.FAILED),
        (st.T_FAILED, st.FAILED),
        (st.T_LOST, st.LOST),
        (st.T_SPOT, st.INTERRUPTED),
    ],
)
def test_status_for_termination(reason: str, status: str) -> None:
    assert st.STATUS_FOR_TERMINATION[reason] == status
    assert st.is_terminal(status)
