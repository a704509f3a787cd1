"""The EC2 test harness itself (tests/support/aws.py): the emulator refuses what AWS refuses, an
instance is its test host, power-offs and stops act like EC2's, and the fault proxy fails on cue.

The provider's tests build on these; a harness that silently did less would let them pass falsely.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.integration.test_ssh import SshEnv
from tests.support.aws import DLAMI_NAME, UBUNTU_NAME, VPC_CIDR, Ec2World, FaultProxy, Hypervisor
from tests.support.runs import poll
from tests.support.sshhosts import SshHosts, SshTestHost

pytestmark = pytest.mark.timeout(120)


def _instance(world: Ec2World, instance_id: str) -> dict[str, Any]:
    reservations = world.client().describe_instances(InstanceIds=[instance_id])["Reservations"]
    instance: dict[str, Any] = reservations[0]["Instances"][0]
    return instance


def _hypervisor(world: Ec2World) -> Hypervisor:
    assert world.hypervisor is not None
    return world.hypervisor


def _down(host: SshTestHost) -> bool:
    return host.sshd_pid() is None and not host.is_reachable(0.3)


def test_the_emulator_refuses_unknown_instance_types_amis_and_key_pairs(ec2_world: Ec2World) -> None:
    host = ec2_world.hosts[0]
    bad: list[tuple[dict[str, Any], str]] = [
        ({"instance_type": "g99.mega"}, "InvalidInstanceType.NotFound"),
        ({"image_id": "ami-0123456789abcdef0"}, "InvalidAMIID.NotFound"),
        ({"KeyName": "no-such-key"}, "InvalidKeyPair.NotFound"),
    ]
    for kwargs, code in bad:
        with pytest.raises(ClientError) as caught:
            ec2_world.launch_for(host, **kwargs)
        assert caught.value.response["Error"]["Code"] == code
    assert ec2_world.client().describe_instances()["Reservations"] == []


def test_a_cli_subprocess_reaches_the_emulator_through_env_alone(ec2_world: Ec2World, tmp_path: Path) -> None:
    # AWS_ENDPOINT_URL and the empty config files are all a runctl subprocess gets.
    code = "import boto3; print(boto3.client('ec2').describe_vpcs()['Vpcs'][-1]['CidrBlock'])"
    env = {**os.environ, "HOME": str(tmp_path), **ec2_world.env()}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert (proc.returncode, proc.stdout.strip()) == (0, VPC_CIDR), proc.stderr


def test_realistic_amis_are_found_by_name_and_owner(ec2_world: Ec2World) -> None:
    ec2 = ec2_world.client()
    name_filter = [{"Name": "name", "Values": ["Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"]}]
    images = ec2.describe_images(Owners=["amazon"], Filters=name_filter)["Images"]
    newest = max(images, key=lambda image: image["CreationDate"])
    assert len(images) == 2 and newest["Name"] == DLAMI_NAME
    ubuntu = ec2.describe_images(Owners=["099720109477"], Filters=[{"Name": "name", "Values": [UBUNTU_NAME]}])
    assert [image["ImageId"] for image in ubuntu["Images"]] == [ec2_world.amis[UBUNTU_NAME]]


def test_an_instance_is_its_host_at_the_private_ip_with_no_public_one(ec2_world: Ec2World, ec2_sshenv: SshEnv) -> None:
    for host in ec2_world.hosts:
        instance = _instance(ec2_world, ec2_world.launch_for(host))
        assert instance["PrivateIpAddress"] == host.address
        assert "PublicIpAddress" not in instance
        # What runctl's ssh will do: the private IP, user and key from RUNCTL_SSH_CONFIG.
        argv = ["ssh", "-F", str(ec2_sshenv.config), "-o", "BatchMode=yes", instance["PrivateIpAddress"], "echo $HOME"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert (proc.returncode, proc.stdout.strip()) == (0, str(host.home)), proc.stderr


def test_a_terminated_instance_frees_its_address_for_a_new_launch(ec2_world: Ec2World) -> None:
    host = ec2_world.hosts[0]
    first = ec2_world.launch_for(host)
    ec2_world.client().terminate_instances(InstanceIds=[first])
    _hypervisor(ec2_world).wait_for(first, "terminated")
    second = ec2_world.launch_for(host)
    _hypervisor(ec2_world).wait_for(second, "running")
    assert _instance(ec2_world, second)["PrivateIpAddress"] == host.address
    assert host.run("echo booted").stdout.strip() == "booted"


@pytest.mark.parametrize(("behaviour", "end_state"), [("stop", "stopped"), ("terminate", "terminated")])
def test_a_power_off_inside_the_host_stops_or_terminates_its_instance(
    ec2_world: Ec2World, behaviour: str, end_state: str
) -> None:
    host = ec2_world.hosts[1]
    instance_id = ec2_world.launch_for(host, shutdown_behavior=behaviour)
    hypervisor = _hypervisor(ec2_world)
    hypervisor.wait_for(instance_id, "running")
    calls_before = len(host.poweroff_calls())
    host.check_poweroff_fake()  # the call below must reach the fake, never this machine's power-off
    host.run("/sbin/shutdown -h now", timeout=20)
    hypervisor.wait_for(instance_id, end_state)
    assert _down(host)
    assert [argv for _, argv in host.poweroff_calls()[calls_before:]] == [["/sbin/shutdown", "-h", "now"]]
    assert [(i, action) for _, i, action in hypervisor.actions] == [(instance_id, behaviour), (instance_id, "down")]
    if behaviour == "stop":
        ec2_world.client().start_instances(InstanceIds=[instance_id])
        hypervisor.wait_for(instance_id, "running")
        host.check_poweroff_fake()
        assert host.run("echo back").stdout.strip() == "back"


def test_a_stop_from_outside_ends_the_hosts_processes_and_keeps_its_files(ec2_world: Ec2World) -> None:
    host = ec2_world.hosts[0]
    instance_id = ec2_world.launch_for(host)
    hypervisor = _hypervisor(ec2_world)
    hypervisor.wait_for(instance_id, "running")
    started = host.run("echo on-disk > kept.txt; nohup sleep 300 >/dev/null 2>&1 & echo $!")
    sleeper = int(started.stdout.strip())
    assert Path(f"/proc/{sleeper}").exists()
    ec2_world.client().stop_instances(InstanceIds=[instance_id])
    hypervisor.wait_for(instance_id, "stopped")
    poll(lambda: not Path(f"/proc/{sleeper}").exists(), 5, "the training process to die with the machine")
    assert _down(host)
    ec2_world.client().start_instances(InstanceIds=[instance_id])
    hypervisor.wait_for(instance_id, "running")
    assert host.run(shlex.join(["cat", "kept.txt"])).stdout == "on-disk\n"


def test_the_fault_proxy_fails_the_first_two_stop_calls(ec2_world: Ec2World, fault_proxy: FaultProxy) -> None:
    instance_id = ec2_world.launch_for(ec2_world.hosts[0])
    fault_proxy.fail("StopInstances", 2)
    fault_proxy.fail("DescribeInstances", 1, status=503, code="RequestLimitExceeded", message="Request limit exceeded.")
    ec2 = fault_proxy.client(attempts=1)  # no botocore retries: every failure shows
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            ec2.stop_instances(InstanceIds=[instance_id])
        error = caught.value.response
        assert (error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Code"]) == (503, "ServiceUnavailable")
    assert _instance(ec2_world, instance_id)["State"]["Name"] == "running"
    assert ec2.stop_instances(InstanceIds=[instance_id])["StoppingInstances"][0]["InstanceId"] == instance_id
    with pytest.raises(ClientError, match="RequestLimitExceeded"):
        ec2.describe_instances(InstanceIds=[instance_id])
    assert ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"] in (
        "stopping",
        "stopped",
    )
    assert len(fault_proxy.calls("StopInstances")) == 3
    env = fault_proxy.env()
    assert env["AWS_ENDPOINT_URL"] == fault_proxy.url and Path(env["AWS_CONFIG_FILE"]).read_text() == ""


def test_the_fault_proxy_can_reset_the_connection(ec2_world: Ec2World, fault_proxy: FaultProxy) -> None:
    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

    fault_proxy.fail("DescribeInstances", 1, reset=True)
    ec2 = fault_proxy.client(attempts=1)
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        ec2.describe_instances()
    assert ec2.describe_instances()["Reservations"] == []


def test_hosts_come_back_clean_after_each_test(ec2_hosts: SshHosts) -> None:
    # Runs after the tests above (same module): the previous teardown booted every host again.
    for host in ec2_hosts:
        host.check_poweroff_fake()
        assert host.run("echo up").stdout.strip() == "up"
