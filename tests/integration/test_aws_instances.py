"""`runctl aws create|list|status|start|stop|terminate|wait|exec` as a user runs them: real CLI
processes, real boto3 against moto in server mode (validation on), instances that are real sshd test
hosts at their private IPs (never an address moto invents), a proxy failing chosen EC2 calls.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, RUNCTL, Result
from tests.integration.test_ssh import SshEnv
from tests.support.aws import Ec2World, FaultProxy
from tests.support.runs import poll
from tests.support.sshhosts import SshHosts, SshTestHost

pytestmark = pytest.mark.timeout(180)

G5_TABLE_PRICE = 1.006  # ec2prices' dated table, us-east-1 (moto has no Pricing API)


@dataclass
class Aws:
    """One test's user: a fresh RUNCTL_HOME, the SSH setup of the hosts, the emulator's endpoint."""

    world: Ec2World
    sshenv: SshEnv
    hosts: SshHosts
    home: Path
    cwd: Path

    @property
    def public_key(self) -> str:
        return str(self.hosts.client_key) + ".pub"

    def env(self, proxy: FaultProxy | None = None) -> dict[str, str]:
        return {**(proxy.env() if proxy else self.world.env()), "RUNCTL_HOME": str(self.home)}

    def cli(self, *args: str, proxy: FaultProxy | None = None, env: dict[str, str] | None = None) -> Result:
        return self.sshenv.cli(*args, cwd=self.cwd, env=env if env is not None else self.env(proxy), timeout=150)

    def create(self, host: SshTestHost, *extra: str, proxy: FaultProxy | None = None) -> Result:
        """`aws create` onto `host` (its subnet and address), the test key imported as the key pair."""
        return self.cli(
            "aws", "create", "--instance-type", "g5.xlarge", "--ssh-key", self.public_key, "--ssh-user", "root",
            "--private-ip", host.address, "--address", "private", "--output", "json", *extra, proxy=proxy,
        )  # fmt: skip

    def instances(self) -> list[dict[str, Any]]:
        """Every instance not terminated, as describe_instances shows them."""
        reservations = self.world.client().describe_instances()["Reservations"]
        return [i for r in reservations for i in r["Instances"] if i["State"]["Name"] != "terminated"]

    def instance(self, instance_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.world.client().describe_instances(InstanceIds=[instance_id])["Reservations"][0][
            "Instances"
        ][0]
        return found

    def usage_states(self, instance_id: str) -> list[str]:
        from runctl.store import Store

        return [u["state"] for u in Store(self.home / "runctl.db").usage("aws:" + instance_id)]


def ok(result: Result) -> Any:
    assert result.code == 0, result.err
    return result.json if result.out.strip().startswith(("{", "[")) else result.out


def refused(result: Result, code: int, *words: str) -> None:
    """A bad input's answer: the exit code, one or two lines on stderr naming the problem, no traceback."""
    lines = result.err.strip().splitlines()
    assert result.code == code, result.err
    assert 1 <= len(lines) <= 2, result.err
    assert "Traceback" not in result.err
    for word in words:
        assert word in result.err, result.err


def ssh_rules_to_the_world(world: Ec2World) -> list[str]:
    groups = world.client().describe_security_groups()["SecurityGroups"]
    return [
        g["GroupId"]
        for g in groups
        for rule in g.get("IpPermissions") or []
        if any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges") or [])
        and rule.get("FromPort", 0) <= 22 <= rule.get("ToPort", 65535)
    ]


# ---- create ------------------------------------------------------------------------------------


def test_create_waits_for_ssh_starts_the_watchdog_and_tags_everything(aws: Aws) -> None:
    host, other = aws.hosts[0], aws.hosts[1]
    result = aws.create(host, "--name", "trainer", "--tag", "team=nlp", "--idle-stop", "30m", "--wait")
    made = ok(result)
    assert (made["state"], made["private_ip"], made["address"]) == ("running", host.address, "private")
    assert "idle-stop 30m" in result.err
    # The watchdog runs on the host with the idle-stop given.
    config = json.loads((host.home / ".runctl/watchdog/config.json").read_text())
    assert config["idle_stop"] == 1800.0
    state = poll(lambda: _json(host.home / ".runctl/watchdog/state.json"), 10, "the watchdog's state file")
    assert state["status"] == "watching" and made["watchdog"]["ok"]

    tags = {t["Key"]: t["Value"] for t in aws.instance(made["instance_id"])["Tags"]}
    assert tags["Name"] == "trainer" and tags["team"] == "nlp"
    assert tags["runctl:managed"] == "true" and "@" in tags["runctl:created-by"]
    assert (tags["runctl:idle-stop"], tags["runctl:on-shutdown"], tags["runctl:ssh-user"]) == ("30m", "stop", "root")
    assert (tags["runctl:address"], tags["runctl:identity"]) == ("private", str(aws.hosts.client_key))
    ec2 = aws.world.client()
    volumes = ec2.describe_volumes()["Volumes"]
    assert volumes and all({"Key": "runctl:managed", "Value": "true"} in v.get("Tags", []) for v in volumes)
    assert _shutdown_behaviour(aws, made["instance_id"]) == "stop"
    assert ssh_rules_to_the_world(aws.world) == []

    # How to reach it is remembered: exec needs no SSH flags.
    assert ok(aws.cli("aws", "exec", "trainer", "--", "sh", "-c", "echo $HOME")).strip() == str(host.home)

    # A second create with the same public key reuses the key pair imported by the first.
    second = ok(aws.create(other, "--on-shutdown", "terminate"))
    pairs = [p for p in ec2.describe_key_pairs()["KeyPairs"] if p["KeyName"] != aws.world.key_name]
    assert [p["KeyName"] for p in pairs] == [made["key_name"]] == [second["key_name"]]
    assert {"Key": "runctl:managed", "Value": "true"} in pairs[0]["Tags"]
    assert second["on_shutdown"] == "terminate" and second["idle_stop"] == "15m"
    assert _shutdown_behaviour(aws, second["instance_id"]) == "terminate"


def _shutdown_behaviour(aws: Aws, instance_id: str) -> str:
    answer = aws.world.client().describe_instance_attribute(
        InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior"
    )
    return str(answer["InstanceInitiatedShutdownBehavior"]["Value"])


def _json(path: Path) -> dict[str, Any] | None:
    try:
        value: dict[str, Any] = json.loads(path.read_text())
        return value
    except (OSError, ValueError):
        return None


def test_ssh_from_makes_a_group_for_that_range_only(aws: Aws) -> None:
    made = ok(aws.create(aws.hosts[0], "--ssh-from", "10.231.0.1/32", "--volume-size", "120"))
    assert [v["Size"] for v in aws.world.client().describe_volumes()["Volumes"]] == [120]
    group = aws.world.client().describe_security_groups(GroupIds=[made["security_group"]])["SecurityGroups"][0]
    assert [r["CidrIp"] for p in group["IpPermissions"] for r in p["IpRanges"]] == ["10.231.0.1/32"]
    assert {"Key": "runctl:managed", "Value": "true"} in group["Tags"]
    assert ssh_rules_to_the_world(aws.world) == []


def test_a_step_failing_after_the_launch_names_the_instance_and_how_to_terminate_it(aws: Aws) -> None:
    host = aws.hosts[0]
    blocker = host.home / ".runctl" / "watchdog"
    saved = blocker.with_name("watchdog.saved")
    blocker.parent.mkdir(parents=True, exist_ok=True)
    if blocker.exists():
        blocker.rename(saved)  # an earlier test's watchdog directory
    blocker.write_text("a file where the watchdog's directory goes\n")
    try:
        failed = aws.create(host, "--wait")
    finally:
        blocker.unlink()
        if saved.exists():
            saved.rename(blocker)
    assert failed.code == 4 and "Traceback" not in failed.err
    [instance] = aws.instances()
    assert "could not start the idle watchdog" in failed.err
    assert "instance %s exists" % instance["InstanceId"] in failed.err
    assert "runctl aws terminate %s" % instance["InstanceId"] in failed.err
    # The store knew it before the failure: it lists with its price.
    listed = ok(aws.cli("aws", "list", "--output", "json"))
    assert [i["instance_id"] for i in listed] == [instance["InstanceId"]] and listed[0]["hourly_price"]


def test_ctrl_c_during_create_terminates_what_it_launched(aws: Aws) -> None:
    host = aws.hosts[0]
    nobody = host.address.rsplit(".", 1)[0] + ".77"  # in the host's subnet, no machine there: SSH never answers
    args = ["aws", "create", "--instance-type", "g5.xlarge", "--ssh-key", aws.public_key, "--private-ip", nobody,
            "--address", "private", "--ssh-from", "10.231.0.1/32", "--wait"]  # fmt: skip
    proc = subprocess.Popen(
        [*RUNCTL, *args], cwd=aws.cwd, env=aws.sshenv.environ(aws.env()), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = ""
    while "waiting for SSH" not in seen:
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, seen + err
    assert "Traceback" not in err and "is terminated" in err
    assert aws.instances() == []
    groups = aws.world.client().describe_security_groups()["SecurityGroups"]
    assert not [g for g in groups if g["GroupName"].startswith("runctl-")]  # its SSH group went with it


def test_stop_ends_a_live_run_gracefully_and_pulls_its_checkpoints_first(aws: Aws) -> None:
    from runctl.store import Store

    host = aws.hosts[0]
    made = ok(aws.create(host, "--name", "busy", "--wait"))
    project = aws.cwd / "proj"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'proj'\nversion = '0'\n")
    shutil.copy(EXAMPLES / "train_stub.py", project / "train_stub.py")
    started = aws.sshenv.cli(
        "ssh", "train", host.address, "train_stub.py", "--", "--epochs", "50", "--steps-per-epoch", "40",
        cwd=project, env=aws.env(),
    )  # fmt: skip
    run_id = ok(started).strip()
    Store(aws.home / "runctl.db").set_run_host(run_id, "aws:" + made["instance_id"])
    poll(lambda: (host.home / "runctl").exists(), 20, "the run to start")
    listed = ok(aws.cli("aws", "list", "--output", "json"))
    assert [r["run_id"] for r in listed[0]["runs"]] == [run_id]

    stopped = aws.cli("aws", "stop", "busy", "--output", "json")
    assert ok(stopped)["state"] == "stopped"
    assert "stopping run %s" % run_id in stopped.err
    run = ok(aws.sshenv.cli("runs", "status", run_id, "-o", "json", cwd=project, env=aws.env()))
    assert run["status"] == "stopped" and run["termination_status"] == "user_stop"
    assert list((project / "checkpoints" / run_id).rglob("*.json")), stopped.err
    assert aws.instance(made["instance_id"])["State"]["Name"] == "stopped"


# ---- list and status ---------------------------------------------------------------------------


def test_list_and_status_show_price_cost_runs_and_last_run(aws: Aws) -> None:
    from runctl.providers import ec2tags

    made = ok(aws.create(aws.hosts[0], "--name", "lister"))
    foreign = aws.world.launch_for(aws.hosts[1], tags={"Name": "theirs"})
    ok(aws.cli("aws", "status", "lister"))  # seen running from now: billed from here on
    refused(aws.create(aws.hosts[1], "--name", "lister"), 2, "named 'lister' exists already", made["instance_id"])
    listed = ok(aws.cli("aws", "list", "--output", "json"))
    assert [i["instance_id"] for i in listed] == [made["instance_id"]]
    row = listed[0]
    assert (row["name"], row["state"], row["instance_type"], row["lifecycle"]) == ("lister", "running", "g5.xlarge",
                                                                                  "on-demand")  # fmt: skip
    assert row["hourly_price"] == G5_TABLE_PRICE and "table" in row["price_source"]
    assert row["cost_so_far"] > 0 and row["uptime_seconds"] is not None
    assert row["runs"] == [] and row["flags"] == []

    everything = {i["instance_id"]: i for i in ok(aws.cli("aws", "list", "--all", "--output", "json"))}
    assert set(everything) == {made["instance_id"], foreign} and "not-runctl" in everything[foreign]["flags"]
    csv = aws.cli("aws", "list", "--output", "csv")
    assert csv.code == 0 and csv.out.splitlines()[0].startswith("instance_id,name,state,instance_type")
    text = aws.cli("aws", "list")
    assert text.code == 0 and made["instance_id"] in text.out and "lister" in text.out

    meta = {"run_id": "r-abc", "script": "train.py", "status": "completed", "last_checkpoint": "ckpt_3.pt"}
    tags = ec2tags.metadata_tags(meta, {})
    aws.world.client().create_tags(Resources=[made["instance_id"]], Tags=ec2tags.as_list(tags))
    status = ok(aws.cli("aws", "status", "lister", "--output", "json"))
    assert status["last_run"] == meta
    assert status["state"] == "running" and status["shutdown_behaviour"] == "stop"
    assert (status["ssh_user"], status["address_kind"], status["idle_stop"]) == ("root", "private", "15m")
    assert status["hourly_price"] == G5_TABLE_PRICE and status["cost_so_far"] > 0
    text = aws.cli("aws", "status", made["instance_id"])
    assert text.code == 0 and "r-abc" in text.out and "$1.006/hr" in text.out


# ---- start, stop, terminate --------------------------------------------------------------------


def test_stop_start_terminate_are_confirmed_and_recorded_as_usage(aws: Aws) -> None:
    host = aws.hosts[0]
    made = ok(aws.create(host, "--name", "cycle", "--wait"))
    instance_id = made["instance_id"]
    stopped = ok(aws.cli("aws", "stop", "cycle", "--output", "json"))
    assert stopped["state"] == "stopped" and aws.instance(instance_id)["State"]["Name"] == "stopped"
    poll(lambda: not host.is_reachable(0.3), 10, "the host to go down with its instance")
    again = aws.cli("aws", "stop", "cycle")
    assert again.code == 0 and "already stopped" in again.err

    start = aws.cli("aws", "start", "cycle", "--wait", "--output", "json")
    assert ok(start)["state"] == "running"
    # `start --wait` re-armed the watchdog the stop ended.
    assert "idle watchdog on %s" % instance_id in start.err
    poll(lambda: (_json(host.home / ".runctl/watchdog/state.json") or {}).get("status") == "watching", 10, "watchdog")

    gone = ok(aws.cli("aws", "terminate", "cycle", "--wait", "--output", "json"))
    assert gone["state"] == "terminated" and aws.instance(instance_id)["State"]["Name"] == "terminated"
    states = aws.usage_states(instance_id)
    assert states[0] in ("pending", "running") and "stopped" in states
    assert states.index("stopped") < len(states) - 1 and states[-1] == "running"  # terminated closes the last


def test_stop_retries_a_failing_api_and_a_final_failure_is_flagged(aws: Aws, fault_proxy: FaultProxy) -> None:
    made = ok(aws.create(aws.hosts[0]))
    instance_id = made["instance_id"]
    fault_proxy.fail("StopInstances", 2)
    stopped = ok(aws.cli("aws", "stop", instance_id, "--output", "json", proxy=fault_proxy))
    assert stopped["state"] == "stopped" and len(fault_proxy.calls("StopInstances")) == 3
    ok(aws.cli("aws", "start", instance_id))

    fault_proxy.fail("StopInstances", 100)
    failed = aws.cli("aws", "stop", instance_id, proxy=fault_proxy)
    assert failed.code == 4, failed.err
    assert "aws ec2 stop-instances --region us-east-1 --instance-ids %s" % instance_id in failed.err
    assert "Traceback" not in failed.err
    assert aws.instance(instance_id)["State"]["Name"] == "running"
    listed = ok(aws.cli("aws", "list", "--output", "json"))
    assert listed[0]["flags"] == ["release-failed"] and "stop failed" in listed[0]["release_failed"]
    # A later stop that goes through clears the flag.
    ok(aws.cli("aws", "stop", instance_id))
    assert ok(aws.cli("aws", "list", "--output", "json"))[0]["flags"] == []


def test_terminate_refuses_protected_and_foreign_instances_without_force(aws: Aws) -> None:
    made = ok(aws.create(aws.hosts[0], "--name", "precious"))
    aws.world.client().create_tags(Resources=[made["instance_id"]], Tags=[{"Key": "runctl:protect", "Value": "true"}])
    refused(aws.cli("aws", "terminate", "precious"), 2, "protected", "--force")
    assert aws.instance(made["instance_id"])["State"]["Name"] == "running"
    assert ok(aws.cli("aws", "terminate", "precious", "--force", "--output", "json"))["state"] == "terminated"

    foreign = aws.world.launch_for(aws.hosts[1], tags={"Name": "theirs"})
    refused(aws.cli("aws", "terminate", "theirs"), 2, "not created by runctl", "--force")
    assert aws.instance(foreign)["State"]["Name"] == "running"
    assert ok(aws.cli("aws", "terminate", foreign, "--force", "--output", "json"))["state"] == "terminated"


# ---- spot --------------------------------------------------------------------------------------


def test_spot_bids_the_on_demand_price_and_falls_back_only_when_asked(aws: Aws, fault_proxy: FaultProxy) -> None:
    spot = ok(aws.create(aws.hosts[0], "--spot"))
    assert spot["lifecycle"] == "spot" and spot["max_price"] == G5_TABLE_PRICE
    assert "spot-history" in spot["price_source"]
    listed = ok(aws.cli("aws", "list", "--output", "json"))
    assert listed[0]["lifecycle"] == "spot" and "spot-history" in listed[0]["price_source"]

    capacity = {"status": 500, "code": "InsufficientInstanceCapacity", "message": "No g5.xlarge capacity."}
    fault_proxy.fail("RunInstances", 1, **capacity)  # type: ignore[arg-type]
    fallback = aws.create(aws.hosts[1], "--spot", "--spot-fallback", "on-demand", proxy=fault_proxy)
    made = ok(fallback)
    assert made["lifecycle"] == "on-demand" and made["spot_fallback_used"]
    assert "launching on-demand instead" in fallback.err
    ok(aws.cli("aws", "terminate", made["instance_id"]))

    before = len(aws.instances())
    fault_proxy.fail("RunInstances", 1, **capacity)  # type: ignore[arg-type]
    failed = aws.create(aws.hosts[1], "--spot", proxy=fault_proxy)
    assert failed.code == 4 and "no spot capacity" in failed.err and "--spot-fallback on-demand" in failed.err
    assert "Traceback" not in failed.err and len(aws.instances()) == before


# ---- wait --------------------------------------------------------------------------------------


def test_wait_reaches_a_state_or_times_out_with_exit_3(aws: Aws) -> None:
    made = ok(aws.create(aws.hosts[0], "--name", "waiter"))
    ssh = aws.cli("aws", "wait", "waiter", "--state", "ssh", "--timeout", "60")
    assert ssh.code == 0 and "answering SSH" in ssh.err
    late = aws.cli("aws", "wait", "waiter", "--state", "stopped", "--timeout", "1")
    assert late.code == 3 and "still running" in late.err and "Traceback" not in late.err
    refused(aws.cli("aws", "wait", "waiter", "--timeout", "soon"), 2, "--timeout")
    assert aws.instance(made["instance_id"])["State"]["Name"] == "running"


# ---- bad input ---------------------------------------------------------------------------------


def test_bad_input_creates_nothing_and_says_what_to_do(aws: Aws, fault_proxy: FaultProxy) -> None:
    host = aws.hosts[0]
    base = ["aws", "create", "--instance-type", "g5.xlarge", "--key-name", "runctl-test", "--private-ip", host.address,
            "--security-group", aws.world.security_groups[host.name], "--ami", aws.world.amis[_dlami()]]  # fmt: skip

    def bad_create(*changes: str) -> list[str]:
        args = list(base)
        for flag, value in zip(changes[::2], changes[1::2], strict=True):
            args[args.index(flag) + 1] = value
        return args

    no_credentials = {k: v for k, v in aws.env().items() if not k.startswith("AWS_ACCESS") and "SECRET" not in k}
    no_credentials["AWS_EC2_METADATA_DISABLED"] = "true"
    cases: list[tuple[list[str], dict[str, str] | None, int, tuple[str, ...]]] = [
        (base, no_credentials, 4, ("no AWS credentials", "AWS_PROFILE")),
        (["aws", "list"], no_credentials, 4, ("no AWS credentials",)),
        (bad_create("--instance-type", "g99.mega"), None, 2, ("g99.mega",)),
        (bad_create("--ami", "ami-0123456789abcdef0"), None, 2, ("ami-0123456789abcdef0",)),
        (bad_create("--key-name", "no-such-key"), None, 2, ("no-such-key", "--ssh-key")),
        ([*base, "--region", "mars-north-1"], None, 2, ("unknown AWS region", "--region")),
        ([*base, "--ami", "x", "--image-name", "y*"], None, 2, ("--ami and --image-name",)),
        ([*base, "--idle-stop", "soon"], None, 2, ("--idle-stop",)),
        ([*base, "--tag", "novalue"], None, 2, ("--tag",)),
        ([*base, "--max-price", "0.5"], None, 2, ("--max-price without --spot",)),
        (bad_create("--private-ip", "192.0.2.9"), None, 2, ("192.0.2.9",)),
        (["aws", "status", "i-0123456789abcdef0"], None, 2, ("i-0123456789abcdef0", "runctl aws list")),
        (["aws", "stop", "nobody"], None, 2, ("no instance named 'nobody'",)),
        (["aws", "status", "i-xyz"], None, 2, ("invalid instance id",)),
    ]
    before = len(aws.instances())
    for args, env, code, words in cases:
        refused(aws.cli(*args, env=env), code, *words)
        assert len(aws.instances()) == before, args

    # Unauthorized: the cloud's refusal, exit 4, nothing made.
    fault_proxy.fail("RunInstances", 1, status=403, code="UnauthorizedOperation", message="You are not authorized.")
    refused(aws.cli(*base, proxy=fault_proxy), 4, "not allowed to call ec2:RunInstances")
    fault_proxy.fail("DescribeInstances", 1, status=403, code="UnauthorizedOperation", message="Not authorized.")
    refused(aws.cli("aws", "list", proxy=fault_proxy), 4, "not allowed", "DescribeInstances")
    assert len(aws.instances()) == before

    # Ambiguous name; then instances in the wrong state.
    twins = [aws.world.launch_for(h, tags={"Name": "twin"}) for h in aws.hosts]
    refused(aws.cli("aws", "terminate", "twin", "--force"), 2, "2 instances are named 'twin'", twins[0])
    aws.world.client().stop_instances(InstanceIds=[twins[0]])
    refused(aws.cli("aws", "exec", twins[0], "--", "true"), 4, "stopped", "runctl aws start")
    aws.world.client().terminate_instances(InstanceIds=[twins[1]])
    refused(aws.cli("aws", "start", twins[1]), 2, "terminated")
    refused(aws.cli("aws", "stop", twins[1]), 2, "terminated")
    assert [i["InstanceId"] for i in aws.instances()] == [twins[0]]


def _dlami() -> str:
    from tests.support.aws import DLAMI_NAME

    return DLAMI_NAME
