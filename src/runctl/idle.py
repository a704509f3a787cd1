"""The first line of every runctl command: an instance left up with nothing running on it.

A Lambda instance cannot be stopped, and one whose run ended with no controller to terminate it
bills by the hour for nothing. Every command therefore reads the store (no API call, no SSH: it
must cost nothing) and warns, first, of each instance runctl launched that is alive as last seen,
has no live run, and has been so for at least RUNCTL_IDLE_WARN seconds (default 5 minutes), with
its price and the command that terminates it. A run still `running` in the store counts as busy:
`runs list` or `runs status` (which refresh runs) lets the store learn that it ended.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

IDLE_ENV = "RUNCTL_IDLE_WARN"
IDLE_SECONDS = 300.0
# Providers whose instances are warned of, with the states they bill in and the command that ends them.
WATCHED = {"lambda": (("booting", "active", "unhealthy"), "runctl lambda terminate %s")}


def threshold() -> float:
    try:
        return max(0.0, float(os.environ.get(IDLE_ENV) or IDLE_SECONDS))
    except ValueError:
        return IDLE_SECONDS


def idle_hosts(store: Any, now: float, least: float) -> list[dict[str, Any]]:
    """The watched hosts idle for at least `least` seconds: {host_id, idle_seconds, hourly_price, command}."""
    from .core import status as st

    found: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] | None = None
    for provider, (alive, command) in WATCHED.items():
        for host in store.hosts(provider, include_gone=False):
            if host["state"] not in alive or not (host.get("info") or {}).get("managed"):
                continue
            if runs is None:
                runs = store.list(include_all=True)
            mine = [r for r in runs if r.get("host_key") == host["host_key"]]
            if any(not st.is_terminal(r["status"]) for r in mine):
                continue
            since = max([float(r["ended_at"]) for r in mine if r.get("ended_at")] + [float(host["created_at"])])
            if now - since >= least:
                found.append(
                    {
                        "host_id": host["host_id"],
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
        stream.write(
            "runctl: warning: instance %s has been idle for %d minutes at %s; terminate it: %s\n"
            % (host["host_id"], host["idle_seconds"] // 60, price, host["command"])
        )
    stream.flush()
