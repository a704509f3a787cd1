"""What a run's host cost while the run lived, from the store's usage intervals (`core.cost`).

A run on a host runctl can price (EC2, Lambda) shows the host's hourly price and the cost so far of
the time the run held it: from the run's creation (provisioning is paid too) to its end, or now.
"""

from __future__ import annotations

import time
from typing import Any

from .store import Store


def run_cost(store: Store, row: dict[str, Any], now: float | None = None) -> dict[str, Any] | None:
    """{"hourly_price", "price_source", "amount", "billed_seconds", "unpriced_seconds", "host_state"},
    or None for a run on a host with no usage record (local, SSH)."""
    key = row.get("host_key")
    host = store.host(key) if key else None
    if not key or host is None or not store.usage(key):
        return None
    now = time.time() if now is None else now
    since = now if row.get("created_at") is None else float(row["created_at"])
    until = now if row.get("ended_at") is None else float(row["ended_at"])
    spent = store.host_cost(key, now=now, since=since, until=max(until, since))
    return {
        "host_id": host["host_id"],
        "instance_type": host.get("instance_type"),
        "hourly_price": host.get("hourly_price"),
        "price_source": host.get("price_source"),
        "amount": round(spent.amount, 6),
        "billed_seconds": round(spent.billed_seconds, 3),
        "unpriced_seconds": round(spent.unpriced_seconds, 3),
        "host_state": host.get("state"),
    }


def describe(cost: dict[str, Any]) -> str:
    """One line for people: `$0.42 so far at $1.006/hr (g5.xlarge, table 2026-11-01)`."""
    if cost.get("hourly_price") is None:
        return "price unknown (%s)" % (cost.get("instance_type") or "unknown type")
    return "%s$%.4f so far at $%.4g/hr (%s, %s)" % (
        "at least " if cost.get("unpriced_seconds") else "",
        cost["amount"],
        cost["hourly_price"],
        cost.get("instance_type") or "?",
        cost.get("price_source") or "price source unknown",
    )
