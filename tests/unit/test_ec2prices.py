"""runctl.providers.ec2prices: on-demand from the Pricing API or the dated table, spot from its history.

The Pricing API has no emulator, so small fakes stand in for the clients; they return the shapes
the API documents (PriceList entries are JSON strings, spot Timestamps are datetimes).
"""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from runctl.core.errors import EXIT_USAGE, UsageError
from runctl.providers import ec2prices
from runctl.providers.ec2prices import TABLE_DATE, on_demand_price, spot_max_price, spot_price

TODAY = datetime.now(timezone.utc).strftime("%Y-%m-%d")


def product(usd: str, sku: str = "ABC123", unit: str = "Hrs") -> str:
    """One PriceList entry as get_products returns it: a JSON document in a string."""
    return json.dumps(
        {
            "product": {"sku": sku, "attributes": {"instanceType": "g5.xlarge", "operatingSystem": "Linux"}},
            "terms": {
                "OnDemand": {
                    sku + ".JRTCKXETXF": {
                        "priceDimensions": {
                            sku + ".JRTCKXETXF.6YS6EN2CT7": {
                                "unit": unit,
                                "pricePerUnit": {"USD": usd},
                                "description": "$%s per On Demand Linux g5.xlarge Instance Hour" % usd,
                            }
                        }
                    }
                }
            },
        }
    )


class FakePricing:
    def __init__(self, price_list: list[str] | None = None, error: Exception | None = None) -> None:
        self.price_list = price_list or []
        self.error = error
        self.calls: list[dict[str, Any]] = []

    def get_products(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return {"PriceList": self.price_list, "FormatVersion": "aws_v1"}


class FakeEc2:
    def __init__(self, history: list[dict[str, Any]] | None = None, error: Exception | None = None) -> None:
        self.history = history or []
        self.error = error
        self.calls: list[dict[str, Any]] = []

    def describe_spot_price_history(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        zone = kwargs.get("AvailabilityZone")
        return {"SpotPriceHistory": [h for h in self.history if not zone or h["AvailabilityZone"] == zone]}


def spot(zone: str, usd: str, minutes_ago: int, instance_type: str = "g5.xlarge") -> dict[str, Any]:
    return {
        "AvailabilityZone": zone,
        "InstanceType": instance_type,
        "ProductDescription": "Linux/UNIX",
        "SpotPrice": usd,
        "Timestamp": datetime.now(timezone.utc) - timedelta(minutes=minutes_ago),
    }


def test_api_answer_is_parsed_cached_privately_and_reused(tmp_path: Path) -> None:
    client = FakePricing([product("1.0060000000")])
    made: list[FakePricing] = []

    def factory() -> FakePricing:
        made.append(client)
        return client

    assert on_demand_price("g5.xlarge", "eu-west-1", factory, str(tmp_path)) == (1.006, "pricing-api " + TODAY)
    filters = {f["Field"]: f["Value"] for f in client.calls[0]["Filters"]}
    assert client.calls[0]["ServiceCode"] == "AmazonEC2"
    assert filters == {
        "instanceType": "g5.xlarge",
        "location": "EU (Ireland)",
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    cache = tmp_path / "prices.json"
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600
    assert on_demand_price("g5.xlarge", "eu-west-1", factory, str(tmp_path)) == (1.006, "pricing-api " + TODAY)
    assert len(client.calls) == 1 and len(made) == 1  # the second answer came from the cache


def test_cache_expires_after_a_day(tmp_path: Path) -> None:
    client = FakePricing([product("1.1")])
    on_demand_price("g5.xlarge", "us-east-1", lambda: client, str(tmp_path))
    data = json.loads((tmp_path / "prices.json").read_text())
    data["us-east-1|g5.xlarge"]["at"] -= ec2prices.CACHE_TTL + 1
    (tmp_path / "prices.json").write_text(json.dumps(data))
    client.price_list = [product("1.2")]
    assert on_demand_price("g5.xlarge", "us-east-1", lambda: client, str(tmp_path))[0] == 1.2
    assert len(client.calls) == 2


def test_lowest_hourly_usd_wins_and_zero_or_non_hourly_entries_are_ignored() -> None:
    answer = [product("0.0000000000", "FREE"), product("5.0", "UPFRONT", unit="Quantity"), product("1.3", "B")]
    answer.append(product("1.006", "A"))
    assert on_demand_price("g5.xlarge", "us-east-1", lambda: FakePricing(answer))[0] == 1.006


def test_regions_without_a_location_name_are_asked_by_region_code() -> None:
    client = FakePricing([product("1.5")])
    on_demand_price("g5.xlarge", "ap-southeast-3", lambda: client)
    filters = {f["Field"]: f["Value"] for f in client.calls[0]["Filters"]}
    assert filters["regionCode"] == "ap-southeast-3" and "location" not in filters


@pytest.mark.parametrize(
    "client",
    [
        FakePricing(error=ConnectionError("Could not connect to the endpoint URL")),
        FakePricing(error=PermissionError("AccessDeniedException: pricing:GetProducts")),
        FakePricing(["{not json"]),
        FakePricing([]),  # an emulator that answers nothing
    ],
)
def test_api_failure_falls_back_to_the_table(client: FakePricing, tmp_path: Path) -> None:
    assert on_demand_price("g4dn.xlarge", "us-east-1", lambda: client, str(tmp_path)) == (0.526, "table " + TABLE_DATE)


def test_factory_failure_falls_back_and_the_api_is_not_asked_again_soon(tmp_path: Path) -> None:
    calls = []

    def no_credentials() -> FakePricing:
        calls.append(1)
        raise RuntimeError("Unable to locate credentials")

    for _ in range(3):
        assert on_demand_price("g5.xlarge", "us-east-1", no_credentials, str(tmp_path))[0] == 1.006
    assert len(calls) == 1


def test_without_the_api_the_table_answers_and_says_where_it_is_approximate() -> None:
    assert on_demand_price("p5.48xlarge", "us-east-1") == (
        ec2prices.ON_DEMAND_USD["p5.48xlarge"],
        "table " + TABLE_DATE,
    )
    price, source = on_demand_price("g5.xlarge", "eu-west-1")
    assert price == 1.006
    assert source == "table %s (us-east-1 price; approximate in eu-west-1)" % TABLE_DATE


def test_unknown_type_has_no_price(tmp_path: Path) -> None:
    assert on_demand_price("x9.mega", "us-east-1") == (None, "unknown type")
    assert on_demand_price("x9.mega", "us-east-1", lambda: FakePricing([]), str(tmp_path)) == (None, "unknown type")


def test_a_corrupt_or_unwritable_cache_never_fails_a_lookup(tmp_path: Path) -> None:
    (tmp_path / "prices.json").write_text("{garbage")
    assert on_demand_price("g5.xlarge", "us-east-1", lambda: FakePricing([product("1.0")]), str(tmp_path))[0] == 1.0
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert on_demand_price("g5.xlarge", "us-east-1", lambda: FakePricing([product("1.0")]), str(blocked))[0] == 1.0


def test_table_covers_the_documented_types() -> None:
    for name in ("g4dn.12xlarge", "g5.48xlarge", "g6.2xlarge", "g6e.12xlarge", "p3.8xlarge", "p4d.24xlarge"):
        assert ec2prices.ON_DEMAND_USD[name] > 0
    for name in ("trn1.2xlarge", "inf2.xlarge", "t3.micro", "t3.large", "m5.xlarge", "c5.xlarge"):
        assert ec2prices.ON_DEMAND_USD[name] > 0


def test_spot_newest_entry_wins() -> None:
    ec2 = FakeEc2([spot("us-east-1a", "0.40", 90), spot("us-east-1b", "0.31", 5), spot("us-east-1c", "0.35", 30)])
    assert spot_price(ec2, "g5.xlarge") == (0.31, "spot-history us-east-1b")
    request = ec2.calls[0]
    assert request["InstanceTypes"] == ["g5.xlarge"] and request["ProductDescriptions"] == ["Linux/UNIX"]
    assert "AvailabilityZone" not in request


def test_spot_in_one_zone() -> None:
    ec2 = FakeEc2([spot("us-east-1a", "0.40", 90), spot("us-east-1a", "0.42", 10), spot("us-east-1b", "0.31", 1)])
    assert spot_price(ec2, "g5.xlarge", "us-east-1a") == (0.42, "spot-history us-east-1a")
    assert ec2.calls[0]["AvailabilityZone"] == "us-east-1a"


def test_spot_ignores_other_types_and_zones_the_answer_carries() -> None:
    ec2 = FakeEc2([spot("us-east-1a", "9.0", 1, "p5.48xlarge"), spot("us-east-1a", "0.5", 60)])
    ec2.describe_spot_price_history = lambda **kw: {"SpotPriceHistory": ec2.history}  # type: ignore[method-assign]
    assert spot_price(ec2, "g5.xlarge", "us-east-1a") == (0.5, "spot-history us-east-1a")
    assert spot_price(ec2, "g5.xlarge", "us-east-1b")[0] is None


def test_spot_failures_say_why() -> None:
    price, reason = spot_price(FakeEc2(error=RuntimeError("RequestLimitExceeded: slow down\nmore")), "g5.xlarge")
    assert price is None and reason == "spot price unknown: RequestLimitExceeded: slow down"
    assert spot_price(FakeEc2([]), "g5.xlarge") == (None, "spot price unknown: no history for g5.xlarge")
    garbled = FakeEc2([dict(spot("us-east-1a", "n/a", 1))])
    assert spot_price(garbled, "g5.xlarge")[0] is None


def test_max_price_is_the_users_or_the_on_demand_price() -> None:
    assert spot_max_price("g5.xlarge", "us-east-1", 0.5) == 0.5
    assert spot_max_price("x9.mega", "us-east-1", 2.0) == 2.0
    assert spot_max_price("g5.xlarge", "us-east-1", None) == 1.006
    assert spot_max_price("g5.xlarge", "us-east-1", None, lambda: FakePricing([product("1.111")])) == 1.111


@pytest.mark.parametrize(
    ("instance_type", "given", "says"), [("x9.mega", None, "no on-demand price known for x9.mega")]
)
def test_max_price_unknown_is_a_usage_error(instance_type: str, given: float | None, says: str) -> None:
    with pytest.raises(UsageError) as caught:
        spot_max_price(instance_type, "us-east-1", given)
    assert caught.value.exit_code == EXIT_USAGE
    assert caught.value.message == says and "--max-price USD" in str(caught.value.hint)


@pytest.mark.parametrize("given", [0.0, -1.0, float("nan"), float("inf")])
def test_max_price_must_be_a_positive_number(given: float) -> None:
    with pytest.raises(UsageError, match="not a positive price"):
        spot_max_price("g5.xlarge", "us-east-1", given)
