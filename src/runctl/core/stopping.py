"""The stop sequence as a pure function of (requests, graces, clock, process state).

A stop is STOP_TRAINING, then SIGTERM to everything of the run, then SIGKILL. Each stop request
says how long the script may take: `grace` seconds before SIGTERM. A later request can only hurry
the sequence, never delay it: the earliest deadline of all requests wins. A request that arrives
after SIGTERM was sent bounds the time to SIGKILL the same way, so `runctl runs stop --now` twice
ends any run at once. No grace is unbounded: every grace is capped at MAX_GRACE.

Nothing here touches processes or clocks; the agent passes its monotonic time in.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, NamedTuple, Optional

MAX_GRACE = 3600.0  # one hour: the longest any stop may wait, documented in the README
SIGTERM = "SIGTERM"
SIGKILL = "SIGKILL"


def clamp_grace(value: Any, default: float) -> float:
    """`value` as a grace in [0, MAX_GRACE]; `default` (itself clamped) when absent or not a number."""
    try:
        number = float(value) if value is not None else float(default)
    except (TypeError, ValueError):
        number = float(default)
    if math.isnan(number):
        number = float(default)
    return min(max(number, 0.0), MAX_GRACE)


def request_key(request: Dict[str, Any]) -> Any:
    """What tells one stop request (stop_request.json) from the next: its id, else its time and grace."""
    return request.get("id") or (request.get("t"), request.get("grace"))


class Request(NamedTuple):
    at: float  # when the agent received it (its monotonic clock)
    grace: float  # seconds the script gets: before SIGTERM, or before SIGKILL once SIGTERM was sent


def term_deadline(requests: List[Request]) -> Optional[float]:
    """When SIGTERM is due: the earliest deadline of all requests."""
    return min((r.at + r.grace for r in requests), default=None)


def kill_deadline(requests: List[Request], term_grace: float, term_sent_at: Optional[float]) -> Optional[float]:
    """When SIGKILL is due: `term_grace` after SIGTERM, sooner if a request after SIGTERM asks for less."""
    if term_sent_at is None:
        return None
    deadline = term_sent_at + term_grace
    for request in requests:
        if request.at > term_sent_at:
            deadline = min(deadline, request.at + request.grace)
    return deadline


def next_signal(
    requests: List[Request],
    term_grace: float,
    now: float,
    term_sent_at: Optional[float],
    kill_sent: bool,
    alive: bool = True,
) -> Optional[str]:
    """The signal to send now (SIGTERM, SIGKILL) or None: nothing is due, or nothing is left to stop."""
    if not alive or not requests or kill_sent:
        return None
    if term_sent_at is None:
        due = term_deadline(requests)
        return SIGTERM if due is not None and now >= due else None
    due = kill_deadline(requests, term_grace, term_sent_at)
    return SIGKILL if due is not None and now >= due else None


class Sequence:
    """One run's stop: the requests received and the signals sent so far (the state next_signal reads)."""

    def __init__(self, term_grace: float) -> None:
        self.term_grace = clamp_grace(term_grace, 10.0)
        self.requests: List[Request] = []
        self.term_sent_at: Optional[float] = None
        self.kill_sent_at: Optional[float] = None

    def add(self, at: float, grace: float) -> bool:
        """Record a request; True when it brings the next signal forward."""
        before = self.next_deadline()
        self.requests.append(Request(at, clamp_grace(grace, 0.0)))
        after = self.next_deadline()
        return before is not None and after is not None and after < before

    def next_deadline(self) -> Optional[float]:
        if self.kill_sent_at is not None:
            return None
        if self.term_sent_at is None:
            return term_deadline(self.requests)
        return kill_deadline(self.requests, self.term_grace, self.term_sent_at)

    def due(self, now: float, alive: bool = True) -> Optional[str]:
        return next_signal(self.requests, self.term_grace, now, self.term_sent_at, self.kill_sent_at is not None, alive)

    def sent(self, signal_name: str, now: float) -> None:
        if signal_name == SIGTERM:
            self.term_sent_at = now
        elif signal_name == SIGKILL:
            self.kill_sent_at = now
