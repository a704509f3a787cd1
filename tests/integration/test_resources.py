"""`runctl resources list|sweep` and `runctl cost` as a user runs them: real CLI processes, real
boto3 against moto in server mode and the Lambda API fake, usage intervals recorded by real state
changes made through runctl commands (list, stop, start, launch).

The clock is made visible through the store: once an instance is stopped, every billing interval
is closed, so its cost is exactly the sum of its running intervals x their price, whatever the time
the listing ran.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RUNCTL, Result
from tests.integration.test_aws_instances import Aws, ok, refused
from tests.integration.test_aws_train import QUICK, REACH, SCRIPT, run_id_of
from tests.integration.test_aws_train import project as project  # the fixture
from tests.integration.test_lambda import TYPE as LAMBDA_TYPE
from tests.support.lambda_fake import LambdaFake

pytestmark = pytest.mark.timeout(180)

MANAGED = {"runctl:managed": "true"}


def no_lambda(aws: Aws) -> dict[str, str]:
    """The user's environment with AWS credentials and no Lambda key anywhere."""
    empty = aws.cwd / "user-home"
    empty.mkdir(exist_ok=True)
    return {**aws.env(), "HOME": str(empty), "LAMBDA_API_KEY": ""}


def launch(aws: Aws, host: int, **tags: str) -> str:
    """An instance made outside runctl (the test's own run_instances), with these tags."""
    return aws.world.launch_for(aws.hosts[host], tags=tags or None)


def state_of(aws: Aws, instance_id: str) -> str:
    return str(aws.instance(instance_id)["State"]["Name"])


def listing(aws: Aws, *args: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    found = ok(aws.cli("resources", "list", *args, "-o", "json", env=env or no_lambda(aws)))
    assert isinstance(found, list)
    return found


def usage(aws: Aws, instance_id: str) -> list[dict[str, Any]]:
    from runctl.store import Store

    store = Store(aws.home / "runctl.db")
    try:
        return store.usage("aws:" + instance_id)
    finally:
        store.close()


def cell(value: Any) -> str:
    """A JSON value as the CSV writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def test_cost_over_a_stop_start_cycle_is_the_sum_of_running_intervals_and_csv_matches_json(aws: Aws) -> None:
    instance_id = launch(aws, 0, Name="cycled", **MANAGED)
    foreign = launch(aws, 1, Name="theirs")
    first = {r["id"]: r for r in listing(aws, "--platform", "aws")}
    assert first[instance_id]["managed"] is True and first[foreign]["managed"] is False
    assert first[instance_id]["hourly_price"] == pytest.approx(1.006)
    ok(aws.cli("aws", "stop", instance_id))
    time.sleep(1.0)  # a stopped stretch that must not be billed
    ok(aws.cli("aws", "start", instance_id))
    aws.world.hypervisor.wait_for(instance_id, "running")  # type: ignore[union-attr]
    ok(aws.cli("aws", "stop", instance_id))
    ok(aws.cli("aws", "stop", foreign))  # every interval closed: the figures no longer move with the clock

    rows = listing(aws, "--platform", "aws")
    row = next(r for r in rows if r["id"] == instance_id)
    intervals = usage(aws, instance_id)
    running = [i for i in intervals if i["state"] == "running"]
    assert len(running) == 2, intervals  # both starts counted, not one span since LaunchTime
    assert all(i["to"] is not None for i in running)
    expected = sum((i["to"] - i["from"]) * i["hourly_price"] / 3600 for i in running)
    assert row["cost"] == pytest.approx(expected, abs=2e-6)
    assert row["estimated_cost"] == row["cost"]
    assert row["running_seconds"] == pytest.approx(sum(i["to"] - i["from"] for i in running), abs=0.01)
    whole = running[-1]["to"] - running[0]["from"]
    assert row["running_seconds"] < whole - 0.9, "the stopped stretch was billed"
    assert row["state"] == "stopped" and row["idle_seconds"] is None and row["active_run"] is None
    assert {"platform": "aws", "region": "us-east-1", "type": "g5.xlarge", "name": "cycled"}.items() <= row.items()

    spent = ok(aws.cli("cost", "--by", "host", "-o", "json", env=no_lambda(aws)))
    mine = next(r for r in spent if r["host_id"] == instance_id)
    assert mine["amount"] == pytest.approx(expected, abs=2e-6)
    assert mine["price_source"]
    days = ok(aws.cli("cost", "--by", "day", "--since", "1d", "-o", "json", env=no_lambda(aws)))
    assert sum(d["amount"] for d in days) == pytest.approx(sum(r["amount"] for r in spent), abs=1e-5)

    text = aws.cli("resources", "list", "--platform", "aws", "-o", "csv", env=no_lambda(aws))
    parsed = list(csv.DictReader(io.StringIO(ok(text))))
    assert len(parsed) == len(rows) >= 2
    for json_row, csv_row in zip(
        sorted(rows, key=lambda r: r["id"]), sorted(parsed, key=lambda r: r["id"]), strict=True
    ):
        assert {k: cell(v) for k, v in json_row.items()} == csv_row


def test_a_run_is_charged_its_share_of_its_hosts_time_and_the_rest_shows_as_no_run(aws: Aws, project: Path) -> None:
    instance_id = launch(aws, 0, **MANAGED)
    listing(aws, "--platform", "aws")  # seen running before the run: time no run is charged for
    trained = aws.sshenv.cli(
        "aws", "train", instance_id, SCRIPT, *REACH, "--sync-code", "--wait", "--", "--epochs", "1", *QUICK,
        cwd=project, env=aws.env(), timeout=150,
    )  # fmt: skip
    assert trained.code == 0, trained.err
    run_id = run_id_of(trained)
    time.sleep(0.5)  # idle after the run
    ok(aws.cli("aws", "stop", instance_id))
    by_run = [
        r for r in ok(aws.cli("cost", "--by", "run", "-o", "json", env=no_lambda(aws))) if r["host_id"] == instance_id
    ]
    by_host = ok(aws.cli("cost", "--by", "host", "-o", "json", env=no_lambda(aws)))
    total = next(r for r in by_host if r["host_id"] == instance_id)
    run = next(r for r in by_run if r["run_id"] == run_id)
    rest = next(r for r in by_run if r["run_id"] is None)
    assert run["status"] == "completed" and run["amount"] > 0 and rest["amount"] > 0
    assert run["amount"] + rest["amount"] == pytest.approx(total["amount"], abs=2e-6)
    from runctl.store import Store

    store = Store(aws.home / "runctl.db")
    row = store.get(run_id)
    store.close()
    assert row is not None
    assert run["billed_seconds"] <= row["ended_at"] - row["created_at"] + 0.01, "charged only while the run lived"
    assert run["price_source"] == total["price_source"]


def test_an_instance_terminated_elsewhere_stops_costing(aws: Aws) -> None:
    instance_id = launch(aws, 0, **MANAGED)
    listing(aws, "--platform", "aws")
    aws.world.client().terminate_instances(InstanceIds=[instance_id])  # outside runctl
    aws.world.hypervisor.wait_for(instance_id, "terminated")  # type: ignore[union-attr]
    assert instance_id not in [r["id"] for r in listing(aws, "--platform", "aws")]
    intervals = usage(aws, instance_id)
    assert intervals and all(i["to"] is not None for i in intervals), "its last interval is closed"
    first = ok(aws.cli("cost", "-o", "json", env=no_lambda(aws)))
    time.sleep(0.3)
    assert ok(aws.cli("cost", "-o", "json", env=no_lambda(aws))) == first


def test_csv_of_nothing_still_has_its_header(aws: Aws) -> None:
    text = ok(aws.cli("resources", "list", "--platform", "aws", "-o", "csv", env=no_lambda(aws)))
    assert text.splitlines() == [text.splitlines()[0]] and text.startswith("id,name,platform,region,type,state,")
    spent = ok(aws.cli("cost", "--by", "run", "-o", "csv", env=no_lambda(aws)))
    assert spent.startswith("run_id,")


def test_sweep_stops_only_an_idle_managed_instance_and_dry_run_changes_nothing(aws: Aws) -> None:
    idle = launch(aws, 0, Name="forgotten", **MANAGED)
    guarded = launch(aws, 1, Name="keep", **MANAGED, **{"runctl:protect": "true"})
    beside = aws.hosts[1].name  # in the same subnet, at an address moto picks (never connected to)
    foreign = aws.world.client().run_instances(
        ImageId=next(iter(aws.world.amis.values())), InstanceType="t3.micro", MinCount=1, MaxCount=1,
        SubnetId=aws.world.subnets[beside],
    )["Instances"][0]["InstanceId"]  # fmt: skip
    ec2 = aws.world.client()
    mine = [{"ResourceType": "volume", "Tags": [{"Key": "runctl:managed", "Value": "true"}]}]
    volume = ec2.create_volume(Size=8, AvailabilityZone="us-east-1a", TagSpecifications=mine)["VolumeId"]
    ec2.create_volume(Size=9, AvailabilityZone="us-east-1a")  # not runctl's: not listed
    pair = [{"ResourceType": "key-pair", "Tags": [{"Key": "runctl:managed", "Value": "true"}]}]
    ec2.create_key_pair(KeyName="runctl-made", TagSpecifications=pair)
    listing(aws, "--platform", "aws")  # first seen now: idle from here
    time.sleep(1.2)

    refused(aws.cli("resources", "sweep", "--platform", "aws", "--idle", "1s", env=no_lambda(aws)), 2, "--yes")
    planned = aws.cli(
        "resources", "sweep", "--platform", "aws", "--idle", "1s", "--dry-run", "-o", "json", env=no_lambda(aws)
    )
    plan = ok(planned)
    assert [c["id"] for c in plan["candidates"]] == [idle]
    assert plan["released"] == [] and plan["hourly_saved"] == pytest.approx(1.006)
    assert "would stop %s" % idle in planned.err and "$1.006/hr would be saved" in planned.err
    assert {state_of(aws, i) for i in (idle, guarded, foreign)} == {"running"}
    assert sorted((x["kind"], x["detail"] if x["kind"] == "key-pair" else x["id"]) for x in plan["leftovers"]) == [
        ("key-pair", "runctl-made"),
        ("volume", volume),
    ]
    assert "left over (not deleted): volume %s" % volume in planned.err

    done = ok(
        aws.cli("resources", "sweep", "--platform", "aws", "--idle", "1s", "--yes", "-o", "json", env=no_lambda(aws))
    )
    assert [(d["id"], d["ok"]) for d in done["released"]] == [(idle, True)]
    assert done["released"][0]["state"] in ("stopping", "stopped")
    assert state_of(aws, idle) in ("stopping", "stopped")
    assert state_of(aws, guarded) == "running" and state_of(aws, foreign) == "running"
    assert usage(aws, idle)[-1]["state"] in ("stopping", "stopped"), "the stop is recorded"
    assert [v["VolumeId"] for v in ec2.describe_volumes(VolumeIds=[volume])["Volumes"]] == [volume], "listed only"


def test_the_idle_warning_names_an_ec2_instance_and_how_to_stop_it(aws: Aws) -> None:
    instance_id = launch(aws, 0, **MANAGED)
    listing(aws, "--platform", "aws")
    warned = aws.cli("runs", "list", env={**no_lambda(aws), "RUNCTL_IDLE_WARN": "0"})
    first = ok(warned) is not None and warned.err.splitlines()[0]
    assert first.startswith("runctl: warning: instance %s has been idle for 0 minutes at $1.01/hr" % instance_id)
    assert first.endswith("stop it: runctl aws stop %s" % instance_id)
    assert instance_id not in aws.cli("runs", "list", env=no_lambda(aws)).err, "idle under 10 minutes"
    ok(aws.cli("aws", "stop", instance_id))
    assert instance_id not in aws.cli("runs", "list", env={**no_lambda(aws), "RUNCTL_IDLE_WARN": "0"}).err


def test_missing_lambda_credentials_skip_lambda_unless_it_is_named(aws: Aws) -> None:
    instance_id = launch(aws, 0, **MANAGED)
    listed = aws.cli("resources", "list", "--platform", "all", "-o", "json", env=no_lambda(aws))
    assert [r["id"] for r in ok(listed)] == [instance_id]
    text = aws.cli("resources", "list", env=no_lambda(aws))
    assert instance_id in ok(text) and "COST $" in text.out and "g5.xlarge" in text.out
    assert "1 instances" in text.err and "$1.006/hr now" in text.err
    assert [line for line in listed.err.splitlines() if "lambda" in line.lower()] == [listed.err.strip()]
    assert "skipping lambda" in listed.err and "LAMBDA_API_KEY" in listed.err
    refused(aws.cli("resources", "list", "--platform", "lambda", env=no_lambda(aws)), 4, "no Lambda API key")
    down = {**no_lambda(aws), "LAMBDA_API_KEY": "k", "RUNCTL_LAMBDA_API_URL": "http://127.0.0.1:9/api/v1"}
    down.update(RUNCTL_LAMBDA_BACKOFF="0.01,0.02", RUNCTL_LAMBDA_RATE="0,0")
    partial = aws.cli("resources", "list", "--platform", "all", "-o", "json", env=down)
    assert partial.code == 4 and [r["id"] for r in partial.json] == [instance_id], "EC2's rows still printed"
    assert "lambda not listed" in partial.err and len(partial.err.strip().splitlines()) == 1


def test_both_platforms_listed_and_only_runctls_idle_lambda_instance_swept(aws: Aws, lambda_world: LambdaFake) -> None:
    env = {**aws.env(), **lambda_world.env()}
    instance_id = launch(aws, 0, **MANAGED)
    launched = aws.cli("lambda", "launch", "--instance-type", LAMBDA_TYPE, "--wait", "-o", "json", env=env)
    lambda_id = ok(launched)["id"]
    from runctl.providers.lambda_api import LambdaApi

    theirs = LambdaApi(lambda_world.key, lambda_world.url)  # another tool of the user's, no runctl tags
    body = {"region_name": "us-east-1", "instance_type_name": LAMBDA_TYPE, "ssh_key_names": ["runctl-test"]}
    foreign = theirs.launch(body)[0]
    theirs.close()
    try:
        rows = {r["id"]: r for r in listing(aws, env=env)}
        assert rows[instance_id]["platform"] == "aws"
        assert rows[lambda_id]["platform"] == "lambda" and rows[lambda_id]["managed"] is True
        assert rows[foreign]["managed"] is False and rows[foreign]["idle_seconds"] is None
        assert rows[lambda_id]["hourly_price"] == pytest.approx(0.75)
        swept = ok(
            aws.cli("resources", "sweep", "--platform", "lambda", "--idle", "0s", "--yes", "-o", "json", env=env)
        )
        assert [(d["id"], d["action"], d["state"]) for d in swept["released"]] == [
            (lambda_id, "terminate", "terminated")
        ]
        assert state_of(aws, instance_id) == "running", "--platform lambda leaves EC2 alone"
        assert [i.id for i in lambda_world.live()] == [foreign], "not runctl's: never swept"
    finally:
        for left in lambda_world.live():
            lambda_world.instances[left.id].terminate_at = 0.0


def test_all_regions_finds_an_instance_outside_the_default_region(aws: Aws) -> None:
    import boto3

    west = boto3.client(
        "ec2", region_name="us-west-2", endpoint_url=aws.world.emulator.url,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    image = west.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
    far = west.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1)["Instances"][0]
    here = launch(aws, 0, **MANAGED)
    assert [r["id"] for r in listing(aws, "--platform", "aws")] == [here]
    rows = {r["id"]: r for r in listing(aws, "--platform", "aws", "--all-regions")}
    assert set(rows) == {here, far["InstanceId"]}
    assert rows[far["InstanceId"]]["region"] == "us-west-2" and rows[far["InstanceId"]]["managed"] is False


@pytest.mark.parametrize(
    "args,words",
    [
        (("cost", "--since", "last tuesday"), ("--since", "7d")),
        (("cost", "--since", "2999-01-01"), ("future",)),
        (("cost", "--by", "week"), ("--by", "week")),
        (("resources", "list", "--platform", "gcp"), ("--platform", "gcp")),
        (("resources", "sweep", "--idle", "soon", "--dry-run"), ("--idle",)),
        (("resources", "sweep", "--dry-run", "--yes"), ("--dry-run",)),
    ],
)
def test_bad_input_is_one_or_two_lines_and_exit_2(
    args: tuple[str, ...], words: tuple[str, ...], tmp_path: Path
) -> None:
    import os
    import subprocess

    env = {**os.environ, "RUNCTL_HOME": str(tmp_path), "HOME": str(tmp_path), "LAMBDA_API_KEY": ""}
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    proc = subprocess.run([*RUNCTL, *args], capture_output=True, text=True, env=env, timeout=60)
    refused(Result(proc.returncode, proc.stdout, proc.stderr), 2, *words)
    assert not list(tmp_path.glob("*.db")), "nothing created"
