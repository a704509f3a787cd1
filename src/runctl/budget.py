"""A run's spend against its `--max-cost`, as `runs status` shows it: live while the run goes.

The agent writes `budget` into status.json at every poll (spent, max_cost, hourly_price, at); between
two writes the spend moves on at the hourly price, so the controller extends it to now for a run
still going, and says how long the money lasts at the current rate.
"""

from __future__ import annotations

import time
from typing import Any

from .core import status as st
from .core.durations import format_duration
from .core.policies import finite, money, rate


def current(run: dict[str, Any], now: float | None = None) -> dict[str, Any] | None:
    """{"spent", "max_cost", "hourly_price", "left", "seconds_left", "at"} for a run with a budget, else None."""
    budget = run.get("budget")
    if not isinstance(budget, dict):
        return None
    spent, cap, price = (finite(budget.get(key)) for key in ("spent", "max_cost", "hourly_price"))
    if spent is None or cap is None or price is None:
        return None
    at = finite(budget.get("at"))
    if not st.is_terminal(str(run.get("status"))) and at is not None:
        now = time.time() if now is None else now
        spent += price * max(0.0, now - at) / 3600.0
        at = now
    left = max(0.0, cap - spent)
    seconds_left = left / price * 3600.0 if price > 0 else None
    return {
        "spent": round(spent, 9),
        "max_cost": cap,
        "hourly_price": price,
        "left": round(left, 9),
        "seconds_left": None if seconds_left is None else round(seconds_left, 1),
        "at": at,
    }


def describe(view: dict[str, Any], running: bool) -> str:
    """`$4.10 of $25.00 at $3.06/hr; 6h 13m left at this rate` (no time left once the run ended)."""
    text = "$%s of $%s at $%s/hr" % (money(view["spent"]), money(view["max_cost"]), rate(view["hourly_price"]))
    if running and view.get("seconds_left") is not None:
        text += "; %s left at this rate" % format_duration(float(view["seconds_left"]))
    return text
