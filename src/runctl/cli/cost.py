"""`runctl cost`: what was spent, per host, run or day, from the store's usage intervals (runctl.spend).

No cloud call: the intervals are what runctl observed (every `list`, `status`, start, stop and run);
`runctl resources list` records the states the clouds show now first, when the store is behind.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Annotated

import typer

from . import options as o
from .aws_instances import money
from .common import ListOutput, emit_csv, emit_json, say, store, table

command = typer.Typer(rich_markup_mode=None, add_completion=False)


class By(str, Enum):
    host = "host"
    run = "run"
    day = "day"


FIELDS = {
    "host": ["host_id", "platform", "name", "instance_type", "region", "state"],
    "run": ["run_id", "name", "status", "host_id", "platform"],
    "day": ["day", "hosts"],
}
FIGURES = ["amount", "billed_seconds", "unpriced_seconds", "price_source"]


@command.command()
def cost(
    since: Annotated[
        str | None, typer.Option("--since", help="Only spend after this: a DURATION back (7d) or a DATE (2026-11-30)")
    ] = None,
    by: Annotated[By, typer.Option("--by", help="host, run (its share of its host's time) or day (UTC)")] = By.host,
    output: Annotated[ListOutput, typer.Option(*o.OUTPUT, help="text, json or csv")] = ListOutput.text,
) -> None:
    """Spend from recorded usage (every start and stop), each figure with its price source."""
    from ..core.durations import format_duration
    from ..spend import parse_since, spend

    now = time.time()
    start = parse_since(since, now) if since is not None else None
    rows = spend(store(), by.value, start, now)
    fields = FIELDS[by.value] + FIGURES
    if output == ListOutput.json:
        emit_json(rows)
        return
    if output == ListOutput.csv:
        emit_csv(fields, rows)
        return
    if not rows:
        say("no recorded usage%s" % (" since %s" % since if since else ""))
        return
    heads = [f.upper().replace("_", " ") for f in FIELDS[by.value]] + ["COST $", "BILLED", "PRICE SOURCE"]
    cells = [
        [str(r[f]) if r[f] is not None else "-" for f in FIELDS[by.value]]
        + [
            ("at least " if r["unpriced_seconds"] else "") + money(r["amount"]),
            format_duration(r["billed_seconds"]),
            r["price_source"] or "price unknown",
        ]
        for r in rows
    ]
    table(heads, cells)
    total = sum(r["amount"] for r in rows)
    say("total $%s%s" % (money(total), " since %s" % since if since else ""))
