"""The first line of every runctl command: an instance left up with nothing running on it.

An instance whose run ended with no controller to stop or terminate it bills by the hour for
nothing. Every command therefore reads the store (no API call, no SSH: it must cost nothing) and
warns, first, of each instance runctl launched that is billing as last seen, has no live run, and
has been so for at least RUNCTL_IDLE_WARN seconds (default 10 minutes), with its price and the
command that ends its bill. A run still `running` in the store counts as busy: `runs list` or
`runs status` (which refresh runs) lets the store learn that it ended.

`resources list` shows the same idle time (`idle_seconds`), from the same `idle_since`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

IDLE_ENV = "RUNCTL_IDLE_WARN"
IDLE_SECONDS = 600.0
# Providers whose instances are warned of, with the states they bill compute in and the command that
# ends that bill (a stopped EC2 instance pays for its disk only; a Lambda one cannot be stopped).
WATCHED = {
    "aws": (("pending", "running"), "runctl aws stop %s"),
    "lambda": (("booting", "active", "unhealthy"), "runctl lambda terminate %s"),
}


def threshold() -> float:
    try:
        return max(0.0, float(os.environ.get(IDLE_ENV) or IDLE_SECONDS))
    except ValueError:
        return IDLE_SECONDS


def billing(provider: str, state: str | None) -> bool:
    """Whether a host of `provider` in `state` is billing for compute."""
    alive = WATCHED.get(provider)
    return alive is not None and state in alive[0]


def idle_since(
    host: Mapping[str, Any], runs: Iterable[Mapping[str, Any]], intervals: Sequence[Mapping[str, Any]]
) -> float | None:
    """Since when the billing host has had no live run, or None (not billing, or a run is live).

    The later of: its last run's end, and the start of its current billing streak (the usage
    intervals, newest first, while they are in billing states), so an instance started again
    an hour after its last run is idle from its start, not for an hour already.
    """
    from .core import status as st

    if not billing(str(host.get("provider")), host.get("state")):
        return None
    mine = list(runs)
    if any(not st.is_terminal(r["status"]) for r in mine):
        return None
    streak = float(host["created_at"])
    for interval in reversed(intervals):
        if not billing(str(host.get("provider")), interval.get("state")):
            break
        streak = float(interval["from"])
    return max([float(r["ended_at"]) for r in mine if r.get("ended_at")] + [streak])


def idle_hosts(store: Any, now: float, least: float) -> list[dict[str, Any]]:
    """The watched managed hosts idle for at least `least` seconds: {host_id, idle_seconds, hourly_price, command}."""
    found: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] | None = None
    for provider, (_, command) in WATCHED.items():
        for host in store.hosts(provider, include_gone=False):
            if not billing(provider, host["state"]) or not (host.get("info") or {}).get("managed"):
                continue
            if runs is None:
                runs = store.list(include_all=True)
            mine = [r for r in runs if r.get("host_key") == host["host_key"]]
            since = idle_since(host, mine, store.usage(host["host_key"]))
            if since is not None and now - since >= least:
                found.append(
                    {
                        "host_id": host["host_id"],
                        "provider": provider,
                        "idle_seconds": now - since,
                        "hourly_price": host.get("hourly_price"),
                        "command": command % host["host_id"],
                    }
                )
    return found


def warn(stream: TextIO = sys.stderr) -> None:
    """Write the warnings, if any; never fails the command (the store may not exist yet)."""
    from . import paths

    try:
        database = paths.database_if_exists()
        if database is None:
            return
        from .store import Store

        store = Store(database)
        try:
            idle = idle_hosts(store, time.time(), threshold())
        finally:
            store.close()
    except Exception:  # a warning must never break the command it precedes
        return
    for host in idle:
        price = "$%.2f/hr" % host["hourly_price"] if host["hourly_price"] is not None else "an unknown price"
        verb = "stop" if host["provider"] == "aws" else "terminate"
        stream.write(
            "runctl: warning: instance %s has been idle for %d minutes at %s; %s it: %s\n"
            % (host["host_id"], host["idle_seconds"] // 60, price, verb, host["command"])
        )
    stream.flush()
