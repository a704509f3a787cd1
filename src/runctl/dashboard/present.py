"""What the dashboard's API returns for a run and a host: the controller's view of a run with what a
page shows beside it (its badge in seed 004's words, progress, cost), in the words `runs status` and
the HTML report use (runctl.verdict, runctl.run_report)."""

from __future__ import annotations

import time
from typing import Any

from .. import controller, idle, run_report, verdict
from ..core import status as st
from ..store import Store
from ..usage import run_cost


def run_summary(db: Store, row: dict[str, Any], view: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run as the runs page lists it: the view plus badge, progress text, $/hr and cost so far."""
    from ..budget import current
    from ..cli.render import progress

    run = dict(view if view is not None else controller.view(row))
    mark = verdict.badge(run)
    run["badge"] = {"tone": mark.tone, "icon": mark.icon, "label": mark.label, "message": mark.message}
    run["progress"] = progress({**run, "eta_seconds": None})  # the ETA has its own column
    cost = run_cost(db, row)
    if cost is not None:
        run["cost"] = cost
    budget = current(run)
    if budget is not None:
        run["budget"] = budget
    spec = row.get("spec") or {}
    run["hourly_price"] = (cost or {}).get("hourly_price") or spec.get("hourly_price")
    if cost is not None and cost.get("hourly_price") is not None:
        run["cost_so_far"] = cost["amount"]
    elif run["hourly_price"] and run.get("started_at"):
        end = run.get("ended_at") or time.time()
        run["cost_so_far"] = round(float(run["hourly_price"]) * (float(end) - float(run["started_at"])) / 3600, 6)
    run["active"] = not st.is_terminal(run["status"])
    return run


def run_details(db: Store, row: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Everything the run page shows besides the live series: how it ended, checkpoints (on the host,
    downloaded, verified in S3), the event timeline, and what could not be read."""
    data = run_report.collect(db, row, summary)
    data.pop("metrics", None)
    data.pop("log_tail", None)
    data["end_reason"] = [{"kind": kind, "text": text} for kind, text in verdict.end_reason(summary)]
    return data


def host_summaries(db: Store, now: float | None = None) -> list[dict[str, Any]]:
    """The store's hosts with state, $/hr, cost so far, idle time, and a warning for one that has no
    active run and is still billing."""
    from ..core.durations import format_duration

    now = time.time() if now is None else now
    runs = db.list(include_all=True)
    out = []
    for host in db.hosts():
        key = host["host_key"]
        mine = [r for r in runs if r.get("host_key") == key]
        active = [r["run_id"] for r in mine if not st.is_terminal(r["status"])]
        since = idle.idle_since(host, mine, db.usage(key))
        idle_seconds = None if since is None else max(0.0, now - since)
        warning = None
        if idle_seconds is not None:
            price = "$%.2f/hr" % host["hourly_price"] if host.get("hourly_price") is not None else "an unknown price"
            command = idle.WATCHED[host["provider"]][1] % host["host_id"]
            warning = "no active run for %s and still billing at %s; end it: %s" % (
                format_duration(idle_seconds),
                price,
                command,
            )
        out.append(
            {
                "host_key": key,
                "provider": host["provider"],
                "host_id": host["host_id"],
                "address": host.get("address"),
                "region": host.get("region"),
                "instance_type": host.get("instance_type"),
                "state": host["state"],
                "hourly_price": host.get("hourly_price"),
                "billing": idle.billing(host["provider"], host["state"]),
                "cost_so_far": round(db.host_cost(key, now=now).amount, 6),
                "active_runs": active,
                "runs": len(mine),
                "idle_seconds": idle_seconds,
                "warning": warning,
                "managed": bool((host.get("info") or {}).get("managed")),
            }
        )
    return out
