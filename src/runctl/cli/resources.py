"""`runctl resources list|sweep`: every instance on every platform with credentials, and the sweep
of runctl's idle ones. Thin: parse, gather (runctl.resources), release (runctl.sweep), render.
"""

from __future__ import annotations

import sys
import time
from enum import Enum
from typing import Annotated, Any

import typer

from ..core.errors import UsageError
from . import options as o
from .aws_instances import money
from .common import ListOutput, Output, duration_option, emit_csv, emit_json, say, store, table

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)


class Platform(str, Enum):
    aws = "aws"
    lambda_ = "lambda"
    all = "all"


PlatformOpt = Annotated[Platform, typer.Option("--platform", help="aws, lambda or all (those with credentials)")]
RegionOpt = Annotated[str | None, typer.Option("--region", help="AWS region (default: AWS_REGION or the profile's)")]
DEFAULT_IDLE = "30m"


def platforms_of(platform: Platform) -> tuple[list[str], bool]:
    """The platforms to look at, and whether they were named (then missing credentials are an error)."""
    from ..resources import PLATFORMS

    return (list(PLATFORMS), False) if platform == Platform.all else ([platform.value], True)


def listing(platform: Platform, region: str | None, all_regions: bool) -> tuple[Any, list[dict[str, Any]], bool]:
    """The store, the rows, and whether a platform failed to answer (the command then exits 4)."""
    from ..resources import gather, rows

    wanted, named = platforms_of(platform)
    db = store()
    seen, failed = gather(db, wanted, named, region, all_regions, say)
    return db, rows(db, seen, time.time()), bool(failed)


def minutes(seconds: float | None) -> str:
    from ..core.durations import format_duration

    return "-" if seconds is None else format_duration(seconds)


def flags(row: dict[str, Any]) -> str:
    found = ([] if row["managed"] else ["not-runctl"]) + (["protected"] if row["protected"] else [])
    return ",".join(found) or "-"


@app.command("list")
def list_(
    platform: PlatformOpt = Platform.all,
    all_regions: Annotated[bool, typer.Option("--all-regions", help="AWS: every region of the account")] = False,
    region: RegionOpt = None,
    output: Annotated[ListOutput, typer.Option(*o.OUTPUT, help="text, json or csv")] = ListOutput.text,
) -> None:
    """Every instance (runctl's and others'): $/hr, running time and cost from recorded usage, run, idle time."""
    from ..resources import FIELDS

    _, found, failed = listing(platform, region, all_regions)
    if output == ListOutput.json:
        emit_json(found)
    elif output == ListOutput.csv:
        emit_csv(FIELDS, found)
    elif not found:
        say("no instances")
    else:
        show(found)
    if failed:
        raise typer.Exit(4)


def show(found: list[dict[str, Any]]) -> None:
    heads = ["ID", "NAME", "PLATFORM", "REGION", "TYPE", "STATE", "$/HR", "RUNNING", "COST $", "RUN", "IDLE", "FLAGS"]
    cells = [
        [
            r["id"],
            r["name"] or "-",
            r["platform"],
            r["region"] or "-",
            r["type"] or "-",
            r["state"],
            money(r["hourly_price"]),
            minutes(r["running_seconds"]),
            money(r["cost"]),
            r["active_run"] or "-",
            minutes(r["idle_seconds"]),
            flags(r),
        ]
        for r in found
    ]
    table(heads, cells)
    total = sum(r["cost"] for r in found)
    hourly = sum(r["hourly_price"] or 0.0 for r in found if r["state"] in ("running", "pending", "active", "booting"))
    say("%d instances, $%s so far, $%s/hr now" % (len(found), money(total), money(hourly)))


@app.command()
def sweep(
    platform: PlatformOpt = Platform.all,
    idle: Annotated[str, typer.Option("--idle", help="Idle at least this long (DURATION)")] = DEFAULT_IDLE,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be released, change nothing")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Release without asking")] = False,
    region: RegionOpt = None,
    output: o.OutputOpt = Output.text,
) -> None:
    """Stop (EC2) or terminate (Lambda) runctl's instances idle with no run; never protected or others' ones."""
    from ..resources import missing_credentials
    from ..sweep import action_of, candidates, leftovers
    from ..sweep import sweep as release_all

    least = duration_option(idle, "--idle")
    if dry_run and yes:
        raise UsageError("--dry-run and --yes contradict each other", "pass one of them")
    if not dry_run and not yes and not sys.stdin.isatty():
        raise UsageError("sweep releases instances: not asking without a terminal", "pass --yes, or --dry-run first")
    db, found, failed = listing(platform, region, False)
    chosen = candidates(found, least or 0.0)
    saved = sum(r["hourly_price"] or 0.0 for r in chosen)
    extra = leftovers(region) if "aws" in platforms_of(platform)[0] and missing_credentials("aws") is None else []
    plan = [
        {"id": r["id"], "platform": r["platform"], "action": action_of(r), "idle_seconds": r["idle_seconds"],
         "hourly_price": r["hourly_price"]}
        for r in chosen
    ]  # fmt: skip
    for r in plan:
        say(
            "%s %s %s: idle %s, $%s/hr"
            % (
                "would" if dry_run else "will",
                r["action"],
                r["id"],
                minutes(r["idle_seconds"]),
                money(r["hourly_price"]),
            )
        )
    say("%d idle instances, $%s/hr %s" % (len(plan), money(saved), "would be saved" if dry_run else "to save"))
    for thing in extra:
        say(
            "left over (not deleted): %s %s in %s (%s)" % (thing["kind"], thing["id"], thing["region"], thing["detail"])
        )
    if not dry_run and plan and not yes and not typer.confirm("release them?", default=False):
        raise typer.Abort()
    done = [] if dry_run else release_all(db, chosen, say)
    result = {"dry_run": dry_run, "candidates": plan, "released": done, "hourly_saved": saved, "leftovers": extra}
    if output == Output.json:
        emit_json(result)
    if failed or any(not d["ok"] for d in done):
        raise typer.Exit(4)
