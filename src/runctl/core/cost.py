"""What a host cost: the sum, over its usage intervals in billing states, of duration x hourly price.

Pure and standard-library only, so the controller's store and, later, a budget policy on the host
(`--max-cost`) compute the same figure from the same intervals. An interval is a mapping with
`state`, `from`, `to` (None while it is still open) and `hourly_price` (None when unknown).
"""

from __future__ import annotations

from typing import Any, Collection, Iterable, Mapping, NamedTuple, Optional

# A provider bills compute while its host runs; one that also bills booting or stopping hosts
# (or stopped ones, for their disks) passes its own set.
# Lambda bills from launch to termination: booting, active, unhealthy and terminating.
DEFAULT_BILLING_STATES = frozenset({"running", "booting", "active", "unhealthy", "terminating"})


class Cost(NamedTuple):
    amount: float
    """Currency units (the prices' own), for the billed seconds whose price is known."""
    billed_seconds: float
    """Seconds spent in billing states, priced or not."""
    unpriced_seconds: float
    """Billed seconds with no known price: when non-zero, `amount` is a lower bound."""


def cost(
    intervals: Iterable[Mapping[str, Any]],
    now: float,
    billing_states: Collection[str] = DEFAULT_BILLING_STATES,
    since: Optional[float] = None,
    until: Optional[float] = None,
) -> Cost:
    """The cost of `intervals` clipped to [since, until]; an open interval runs until `now`."""
    amount = billed = unpriced = 0.0
    for interval in intervals:
        if interval.get("state") not in billing_states:
            continue
        start = float(interval["from"])
        end = now if interval.get("to") is None else float(interval["to"])
        if since is not None:
            start = max(start, since)
        if until is not None:
            end = min(end, until)
        seconds = end - start
        if seconds <= 0:
            continue
        billed += seconds
        price = interval.get("hourly_price")
        if price is None:
            unpriced += seconds
        else:
            amount += seconds * float(price) / 3600.0
    return Cost(amount, billed, unpriced)
