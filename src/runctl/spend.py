"""What was spent, from the store's usage intervals alone (no cloud call): per host, per run, per day.

Each figure is `core.cost` over the intervals clipped to a window, with the price sources of the
intervals it used (the dated price table, spot price history, the Lambda API), so a reader knows
how good the number is. A run is charged its share of its host's time while it lived: the host's
cost over the run's lifetime, split evenly between runs live on the host at the same moment; the
rest of a host's time shows as its `(no run)` row, the money an idle host cost.
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timezone
from typing import Any

from .core import status as st
from .core.cost import Cost, cost
from .core.durations import duration_seconds, within_bounds
from .core.errors import UsageError
from .store import Store

BY = ("host", "run", "day")
DAY = 86400.0


def parse_since(text: str, now: float) -> float:
    """`--since` as a time: a duration back from now (7d, 12h) or a UTC date / ISO 8601 time."""
    seconds = duration_seconds(text)
    if seconds is not None and within_bounds(seconds):
        return now - seconds
    try:
        stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            "invalid --since %r" % text, "use a duration back from now (7d, 12h) or a date (2026-11-30)"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    if stamp.timestamp() > now:
        raise UsageError("--since %r is in the future" % text, "use a past date, or a duration such as 7d")
    return stamp.timestamp()


def sources(intervals: list[dict[str, Any]], since: float, until: float) -> str:
    """The price sources of the priced intervals overlapping [since, until], in order, each once."""
    seen: list[str] = []
    for i in intervals:
        end = until if i["to"] is None else float(i["to"])
        if float(i["from"]) < until and end > since and i.get("price_source") and i["price_source"] not in seen:
            seen.append(str(i["price_source"]))
    return "; ".join(seen)


def figure(spent: Cost, source: str) -> dict[str, Any]:
    return {
        "amount": round(spent.amount, 6),
        "billed_seconds": round(spent.billed_seconds, 3),
        "unpriced_seconds": round(spent.unpriced_seconds, 3),
        "price_source": source or None,
    }


def by_host(db: Store, since: float | None, now: float) -> list[dict[str, Any]]:
    found = []
    start = since if since is not None else 0.0
    for host in db.hosts():
        intervals = db.usage(host["host_key"], since=since)
        spent = cost(intervals, now, since=since)
        if not intervals or (spent.billed_seconds <= 0 and since is not None):
            continue
        found.append(
            {
                "host_id": host["host_id"],
                "platform": host["provider"],
                "name": (host.get("info") or {}).get("name") or "",
                "instance_type": host.get("instance_type"),
                "region": host.get("region"),
                "state": host["state"],
                **figure(spent, sources(intervals, start, now)),
            }
        )
    return sorted(found, key=lambda r: (-r["amount"], r["platform"], r["host_id"]))


def run_windows(runs: list[dict[str, Any]], since: float | None, now: float) -> dict[str, tuple[float, float]]:
    """Each run's lifetime clipped to [since, now]: from its creation (provisioning is paid too) to its end."""
    windows = {}
    for run in runs:
        start = float(run["created_at"])
        end = now if run.get("ended_at") is None or not st.is_terminal(run["status"]) else float(run["ended_at"])
        start = max(start, since) if since is not None else start
        if end > start:
            windows[run["run_id"]] = (start, end)
    return windows


def shares(intervals: list[dict[str, Any]], windows: dict[str, tuple[float, float]], now: float) -> dict[str, Cost]:
    """Each run's share of the host's cost: every stretch of time split evenly between the runs live in it."""
    points = sorted({t for window in windows.values() for t in window})
    owed = {run_id: [0.0, 0.0, 0.0] for run_id in windows}
    for a, b in itertools.pairwise(points):
        live = [run_id for run_id, (s, e) in windows.items() if s <= a and e >= b]
        if not live:
            continue
        part = cost(intervals, now, since=a, until=b)
        for run_id in live:
            for n, value in enumerate(part):
                owed[run_id][n] += value / len(live)
    return {run_id: Cost(*values) for run_id, values in owed.items()}


def by_run(db: Store, since: float | None, now: float) -> list[dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for run in db.list(include_all=True):
        if run.get("host_key"):
            runs.setdefault(str(run["host_key"]), []).append(run)
    found = []
    for host in db.hosts():
        key = host["host_key"]
        intervals = db.usage(key, since=since)
        if not intervals:
            continue
        mine = {r["run_id"]: r for r in runs.get(key, [])}
        windows = run_windows(list(mine.values()), since, now)
        charged = shares(intervals, windows, now)
        for run_id, spent in charged.items():
            run = mine[run_id]
            found.append(
                {
                    "run_id": run_id,
                    "name": run["name"],
                    "status": run["status"],
                    "host_id": host["host_id"],
                    "platform": host["provider"],
                    **figure(spent, sources(intervals, *windows[run_id])),
                }
            )
        total = cost(intervals, now, since=since)
        rest = Cost(*(max(0.0, t - sum(c[n] for c in charged.values())) for n, t in enumerate(total)))
        if rest.billed_seconds > 0.0005:
            found.append(
                {
                    "run_id": None,
                    "name": "(no run)",
                    "status": None,
                    "host_id": host["host_id"],
                    "platform": host["provider"],
                    **figure(rest, sources(intervals, since or 0.0, now)),
                }
            )
    return sorted(found, key=lambda r: (-r["amount"], r["host_id"], r["run_id"] or ""))


def by_day(db: Store, since: float | None, now: float) -> list[dict[str, Any]]:
    """Per UTC day: every interval split at midnight, so a night's run counts on both days."""
    days: dict[float, list[Any]] = {}
    for host in db.hosts():
        for interval in db.usage(host["host_key"], since=since):
            start = max(float(interval["from"]), since) if since is not None else float(interval["from"])
            end = now if interval["to"] is None else float(interval["to"])
            day = start - start % DAY
            while day < end:
                spent = cost([interval], now, since=max(day, start), until=min(day + DAY, end))
                if spent.billed_seconds > 0:
                    entry = days.setdefault(day, [0.0, 0.0, 0.0, set(), []])
                    for n in range(3):
                        entry[n] += spent[n]
                    entry[3].add(host["host_key"])
                    source = interval.get("price_source")
                    if source and source not in entry[4]:
                        entry[4].append(source)
                day += DAY
    return [
        {
            "day": time.strftime("%Y-%m-%d", time.gmtime(day)),
            "hosts": len(entry[3]),
            **figure(Cost(entry[0], entry[1], entry[2]), "; ".join(entry[4])),
        }
        for day, entry in sorted(days.items())
    ]


def spend(db: Store, by: str, since: float | None, now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    return {"host": by_host, "run": by_run, "day": by_day}[by](db, since, now)
