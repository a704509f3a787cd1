"""Every instance on the platforms the user has credentials for, runctl's and others', with what it
cost so far: one row shape across EC2 and Lambda for `resources list` and `resources sweep`.

Cost comes from the store's usage intervals (every observed start and stop counted), never from
EC2's `LaunchTime`, which resets on each start. Listing observes every instance first (the same
`observe` as `aws list` / `lambda list`), so the store learns the states the cloud shows now.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .core.errors import HostError, RunctlError, UsageError
from .store import Store

PLATFORMS = ("aws", "lambda")
# A host the store holds as alive that its cloud no longer lists is taken as gone only when the store
# has not heard of it for this long: a launch in flight elsewhere may not be listed yet.
VANISHED_SECONDS = 300.0
FIELDS = [
    "id", "name", "platform", "region", "type", "state", "hourly_price", "price_source", "running_seconds",
    "cost", "estimated_cost", "managed", "protected", "active_run", "idle_seconds",
]  # fmt: skip


@dataclass
class Seen:
    """One instance as its platform shows it now (already recorded in the store)."""

    platform: str
    id: str
    name: str
    region: str
    type: str
    state: str
    managed: bool
    protected: bool
    hourly_price: float | None
    price_source: str | None


def missing_credentials(platform: str) -> HostError | None:
    """Why `platform` cannot be listed here (no credentials, no region), or None; no cloud call."""
    if platform == "aws":
        from .providers.ec2api import has_credentials

        if not has_credentials():
            return HostError(
                "no AWS credentials found",
                "set AWS_PROFILE (aws configure, or aws sso login), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            )
        return None
    from .providers.lambda_api import api_key

    try:
        api_key()
    except UsageError as exc:
        return HostError(exc.message, exc.hint)
    return None


def aws_seen(db: Store, region: str | None, all_regions: bool) -> list[Seen]:
    """Every EC2 instance not terminated, in the region (or every region the account has)."""
    from .providers.aws import Ec2Instances, Prices, observe_all

    first = Ec2Instances(region)
    clouds = [first]
    if all_regions:  # clients made here (a session is not thread-safe), regions read in parallel
        clouds += [Ec2Instances(name, session=first.ec2.session) for name in first.regions() if name != first.region]
    with ThreadPoolExecutor(max_workers=min(8, len(clouds))) as pool:
        described = list(pool.map(lambda cloud: cloud.describe(), clouds))  # terminated ones too: recorded
    found: list[Seen] = []
    for cloud, instances in zip(clouds, described, strict=True):
        prices = Prices(cloud, ask_api=False)  # the table or the day's cache: no Pricing API call per listing
        observe_all(db, instances, prices)
        forget_vanished(db, "aws", {i.id for i in instances}, cloud.region)
        for i in instances:
            if i.state == "terminated":
                continue
            price, source = prices.of(i)
            found.append(Seen("aws", i.id, i.name, i.region, i.type, i.state, i.managed, i.protected, price, source))
    return found


def lambda_seen(db: Store) -> list[Seen]:
    """Every Lambda instance of the account not gone."""
    from .providers.lambda_labs import GONE_STATES, PRICE_SOURCE, LambdaCloud, launched_here, observe

    listed = LambdaCloud().instances()
    with db.transaction():
        for i in listed:  # gone ones too: their last interval is closed
            observe(db, i)
    forget_vanished(db, "lambda", {i.id for i in listed}, None)
    instances = [i for i in listed if i.status not in GONE_STATES]
    return [
        Seen(
            "lambda",
            i.id,
            i.name,
            i.region,
            i.type,
            i.status,
            launched_here(db, i),
            i.protected,
            i.hourly_price,
            PRICE_SOURCE if i.price_cents is not None else None,
        )
        for i in instances
    ]


def forget_vanished(db: Store, provider: str, listed: set[str], region: str | None) -> None:
    """Hosts the store holds as alive that the cloud no longer lists (terminated elsewhere, gone from
    its listing since) are recorded terminated now, so their cost and the idle warning stop growing."""
    now = time.time()
    for host in db.hosts(provider, include_gone=False):
        if host["host_id"] in listed or (region is not None and host.get("region") != region):
            continue
        if float(host["updated_at"]) < now - VANISHED_SECONDS:
            db.record_host_state(host["host_key"], "terminated", t=now)


def gather(
    db: Store, platforms: list[str], named: bool, region: str | None, all_regions: bool, say: Callable[[str], None]
) -> tuple[list[Seen], list[str]]:
    """The instances of `platforms`, and the platforms that failed to answer.

    One without credentials is skipped with a line, unless it was named. Of several, one whose API
    fails is said so (the rows of the others still count; the caller exits 4); a named one raises.
    """
    found: list[Seen] = []
    failed: list[str] = []
    for platform in platforms:
        problem = missing_credentials(platform)
        if problem is not None:
            if named:
                raise problem
            say("runctl: skipping %s: %s (%s)" % (platform, problem.message, problem.hint))
            continue
        try:
            found += aws_seen(db, region, all_regions) if platform == "aws" else lambda_seen(db)
        except RunctlError as exc:
            if named:
                raise
            say("runctl: %s not listed: %s%s" % (platform, exc.message, " (%s)" % exc.hint if exc.hint else ""))
            failed.append(platform)
    return found, failed


def rows(db: Store, seen: list[Seen], now: float | None = None) -> list[dict[str, Any]]:
    """The listing's rows (FIELDS), from the store's usage and runs; idle time for runctl's only."""
    from .core import status as st
    from .core.cost import cost
    from .idle import idle_since

    now = time.time() if now is None else now
    hosts = {h["host_key"]: h for h in db.hosts()}
    usage: dict[str, list[dict[str, Any]]] = {}
    for platform in {s.platform for s in seen}:
        usage.update(db.usage_by_host(platform))
    runs: dict[str, list[dict[str, Any]]] = {}
    for run in db.list(include_all=True):
        runs.setdefault(str(run.get("host_key")), []).append(run)
    found = []
    for s in seen:
        key = "%s:%s" % (s.platform, s.id)
        intervals = usage.get(key, [])
        spent = cost(intervals, now)
        mine = runs.get(key, [])
        live = [r for r in mine if not st.is_terminal(r["status"])]
        host = hosts.get(key)
        since = idle_since(host, mine, intervals) if host is not None and s.managed else None
        amount = round(spent.amount, 6)
        found.append(
            {
                "id": s.id,
                "name": s.name,
                "platform": s.platform,
                "region": s.region,
                "type": s.type,
                "state": s.state,
                "hourly_price": s.hourly_price,
                "price_source": s.price_source,
                "running_seconds": round(spent.billed_seconds, 3),
                "cost": amount,
                "estimated_cost": amount,
                "managed": s.managed,
                "protected": s.protected,
                "active_run": live[0]["run_id"] if live else None,
                "idle_seconds": None if since is None else round(max(0.0, now - since), 3),
            }
        )
    return found
