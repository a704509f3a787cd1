"""What an EC2 instance costs per hour, so usage intervals carry a price and `aws list` shows $/hr.

On-demand: the AWS Pricing API when it answers (its answers cached for a day, so listing 200
instances costs no API call per instance), else a dated table of us-east-1 Linux prices; outside
us-east-1 the table is an approximation and the source string says so. Spot: the newest entry of
`describe_spot_price_history`. Clients are passed in (duck-typed), so this module never imports
boto3: the Pricing client comes from `pricing_client_factory()` (the Pricing API answers in
us-east-1 whatever the instance's region).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from ..core.errors import UsageError
from ..core.fsutil import atomic_write_json, private_dir, read_json

# On-demand Linux, shared tenancy, us-east-1, USD per hour, as AWS published them on TABLE_DATE
# (after the June 2025 cut for P4d and P5). Used when the Pricing API cannot be asked.
TABLE_DATE = "2026-11-01"
TABLE_REGION = "us-east-1"
ON_DEMAND_USD: Mapping[str, float] = {
    "g4dn.xlarge": 0.526,
    "g4dn.2xlarge": 0.752,
    "g4dn.4xlarge": 1.204,
    "g4dn.12xlarge": 3.912,
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.4xlarge": 1.624,
    "g5.12xlarge": 5.672,
    "g5.48xlarge": 16.288,
    "g6.xlarge": 0.8048,
    "g6.2xlarge": 0.9776,
    "g6.12xlarge": 4.6016,
    "g6e.xlarge": 1.861,
    "g6e.12xlarge": 10.49264,
    "p3.2xlarge": 3.06,
    "p3.8xlarge": 12.24,
    "p4d.24xlarge": 21.96,
    "p5.48xlarge": 55.04,
    "trn1.2xlarge": 1.34375,
    "inf2.xlarge": 0.7582,
    "t3.micro": 0.0104,
    "t3.small": 0.0208,
    "t3.medium": 0.0416,
    "t3.large": 0.0832,
    "m5.large": 0.096,
    "m5.xlarge": 0.192,
    "c5.xlarge": 0.17,
}

# The Pricing API's `location` names; other regions are asked by `regionCode`.
LOCATIONS: Mapping[str, str] = {
    "us-east-1": "US East (N. Virginia)",
    "us-east-2": "US East (Ohio)",
    "us-west-1": "US West (N. California)",
    "us-west-2": "US West (Oregon)",
    "ca-central-1": "Canada (Central)",
    "eu-west-1": "EU (Ireland)",
    "eu-west-2": "EU (London)",
    "eu-west-3": "EU (Paris)",
    "eu-central-1": "EU (Frankfurt)",
    "eu-north-1": "EU (Stockholm)",
    "ap-south-1": "Asia Pacific (Mumbai)",
    "ap-northeast-1": "Asia Pacific (Tokyo)",
    "ap-northeast-2": "Asia Pacific (Seoul)",
    "ap-southeast-1": "Asia Pacific (Singapore)",
    "ap-southeast-2": "Asia Pacific (Sydney)",
    "sa-east-1": "South America (Sao Paulo)",
}

CACHE_FILE = "prices.json"
CACHE_TTL = 24 * 3600.0
# After a failed API call, the table is used without asking again for this long (`aws list` of
# many instances behind a firewall must not wait on the API once per instance).
FAILURE_TTL = 3600.0
_FAILED = "_api_failed_at"


def pricing_filters(instance_type: str, region: str) -> list[dict[str, str]]:
    """The get_products filters for on-demand Linux, shared tenancy, no preinstalled software."""
    where = ("location", LOCATIONS[region]) if region in LOCATIONS else ("regionCode", region)
    fields = [
        ("instanceType", instance_type),
        where,
        ("operatingSystem", "Linux"),
        ("tenancy", "Shared"),
        ("preInstalledSw", "NA"),
        ("capacitystatus", "Used"),
    ]
    return [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in fields]


def parse_price_list(price_list: list[Any]) -> float | None:
    """The hourly USD on-demand price in a get_products PriceList (JSON strings), or None.

    Several products may match the filters (e.g. with and without a license): the lowest non-zero
    hourly price is the plain Linux one.
    """
    prices = []
    for item in price_list:
        product = json.loads(item) if isinstance(item, (str, bytes)) else item
        for term in (product.get("terms", {}).get("OnDemand") or {}).values():
            for dimension in (term.get("priceDimensions") or {}).values():
                usd = (dimension.get("pricePerUnit") or {}).get("USD")
                if usd is not None and str(dimension.get("unit", "Hrs")).lower().startswith("hr"):
                    price = float(usd)
                    if price > 0:
                        prices.append(price)
    return min(prices) if prices else None


def table_price(instance_type: str, region: str) -> tuple[float | None, str]:
    price = ON_DEMAND_USD.get(instance_type)
    if price is None:
        return None, "unknown type"
    if region == TABLE_REGION:
        return price, "table %s" % TABLE_DATE
    return price, "table %s (%s price; approximate in %s)" % (TABLE_DATE, TABLE_REGION, region)


def _read_cache(cache_dir: str | None) -> dict[str, Any]:
    return (read_json(os.path.join(cache_dir, CACHE_FILE)) or {}) if cache_dir else {}


def _write_cache(cache_dir: str | None, cache: dict[str, Any]) -> None:
    if not cache_dir:
        return
    try:
        atomic_write_json(os.path.join(private_dir(cache_dir), CACHE_FILE), cache, fsync=False)
    except OSError:
        pass  # a price cache that cannot be written only costs an API call next time


def on_demand_price(
    instance_type: str,
    region: str,
    pricing_client_factory: Callable[[], Any] | None = None,
    cache_dir: str | None = None,
) -> tuple[float | None, str]:
    """(USD per hour, where it came from); (None, "unknown type") when neither API nor table knows it.

    Any failure of the API (no credentials, no network, an emulator without it) falls back to the
    table silently: a price is shown, never an error.
    """
    key = "%s|%s" % (region, instance_type)
    cache = _read_cache(cache_dir)
    now = time.time()
    entry = cache.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("price"), (int, float)):
        if 0 <= now - float(entry.get("at", 0)) < CACHE_TTL:
            return float(entry["price"]), "pricing-api %s" % entry.get("date", "?")
    failed = cache.get(_FAILED)
    recently_failed = isinstance(failed, (int, float)) and 0 <= now - failed < FAILURE_TTL
    if pricing_client_factory is not None and not recently_failed:
        try:
            client = pricing_client_factory()
            answer = client.get_products(
                ServiceCode="AmazonEC2", Filters=pricing_filters(instance_type, region), MaxResults=10
            )
            price = parse_price_list(list(answer.get("PriceList") or []))
        except Exception:
            cache[_FAILED] = now
            _write_cache(cache_dir, cache)
            return table_price(instance_type, region)
        if price is not None:
            date = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d")
            cache[key] = {"price": price, "at": now, "date": date}
            cache.pop(_FAILED, None)
            _write_cache(cache_dir, cache)
            return price, "pricing-api %s" % date
    return table_price(instance_type, region)


def _when(value: Any) -> float:
    """A spot history Timestamp (datetime from boto3, or ISO text) as epoch seconds; unknown sorts first."""
    try:
        if isinstance(value, datetime):
            stamp = value
        else:
            stamp = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=timezone.utc)
        return stamp.timestamp()
    except (TypeError, ValueError, OverflowError):
        return float("-inf")


def spot_price(ec2_client: Any, instance_type: str, availability_zone: str | None = None) -> tuple[float | None, str]:
    """The newest Linux spot price of `instance_type` (in that zone when given), and its source.

    Asking from now returns the price in effect in each zone; the newest entry wins (the highest on
    a tie, so a cost is never understated). (None, reason) when the call fails or lists nothing.
    """
    request: dict[str, Any] = {
        "InstanceTypes": [instance_type],
        "ProductDescriptions": ["Linux/UNIX"],
        "StartTime": datetime.now(timezone.utc),
        "MaxResults": 100,
    }
    if availability_zone:
        request["AvailabilityZone"] = availability_zone
    try:
        history = ec2_client.describe_spot_price_history(**request).get("SpotPriceHistory") or []
        entries = [
            (_when(item.get("Timestamp")), float(item["SpotPrice"]), str(item.get("AvailabilityZone", "")))
            for item in history
            if item.get("InstanceType", instance_type) == instance_type
            and (not availability_zone or item.get("AvailabilityZone") == availability_zone)
        ]
    except Exception as exc:
        return None, "spot price unknown: %s" % (str(exc).splitlines() or [type(exc).__name__])[0]
    if not entries:
        return None, "spot price unknown: no history for %s" % instance_type
    _, price, zone = max(entries)
    return price, "spot-history %s" % zone if zone else "spot-history"


def spot_max_price(
    instance_type: str,
    region: str,
    given: float | None,
    pricing_client_factory: Callable[[], Any] | None = None,
    cache_dir: str | None = None,
) -> float:
    """The spot bid: the user's `--max-price`, else the on-demand price (never a made-up number)."""
    if given is not None:
        if not (given > 0 and math.isfinite(given)):
            raise UsageError(
                "--max-price %s is not a positive price" % given, "pass USD per hour, e.g. --max-price 0.5"
            )
        return float(given)
    price, _ = on_demand_price(instance_type, region, pricing_client_factory, cache_dir)
    if price is None:
        raise UsageError(
            "no on-demand price known for %s" % instance_type, "pass --max-price USD (the most you pay per hour)"
        )
    return price
