"""`runctl workflow run`: create or start an instance, train, wait, pull checkpoints, release it;
and whatever fails (the script, the placement, a Ctrl-C), nothing it made or started is left running.

Real components: the moto server, instances at the private IP of a network-namespace sshd test
host (tests/support/aws.py), the hypervisor for power-offs and stops, the runctl CLI as processes.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from runctl.providers import ec2tags
from tests.integration.test_aws_train import QUICK, REACH, SCRIPT, SLOW, Aws, pulled, run_id_of, started_when
from tests.integration.test_aws_train import project as project
from tests.integration.test_ssh import SshEnv
from tests.support.aws import Ec2World
from tests.support.sshhosts import SshTestHost

pytestmark = pytest.mark.timeout(240)

LIVE = ("pending", "running", "stopping", "shutting-down")


@pytest.fixture
def aws(ec2_sshenv: SshEnv, ec2_world: Ec2World, project: Path) -> Aws:
    return Aws(ec2_sshenv, ec2_world, project)


def create_flags(aws: Aws, host: SshTestHost) -> list[str]:
    """aws create's flags for an instance that is `host` (its subnet and private IP)."""
    return [
        "--instance-type", "g5.xlarge", "--key-name", aws.world.key_name, "--subnet", aws.world.subnets[host.name],
        "--security-group", aws.world.security_groups[host.name], "--private-ip", host.address,
        "--idle-stop", "off",
    ]  # fmt: skip


def live_instances(aws: Aws) -> list[str]:
    reservations = aws.world.client().describe_instances()["Reservations"]
    return [i["InstanceId"] for r in reservations for i in r["Instances"] if i["State"]["Name"] in LIVE]


def test_workflow_7_on_an_existing_instance_trains_pulls_and_terminates_it(aws: Aws) -> None:
    host = aws.world.hosts[0]
    instance = aws.world.launch_for(host, tags={ec2tags.MANAGED: "true", "Name": "wf"})
    result = aws.cli("workflow", "run", instance, SCRIPT, *REACH, "--", "--epochs", "2", *QUICK)
    assert result.code == 0, result.err
    run_id = run_id_of(result)
    assert sorted(pulled(aws.project, run_id)) == ["checkpoint_epoch_1.json", "checkpoint_epoch_2.json"]
    assert aws.state(instance) == "terminated", "runctl's own instance is terminated once its checkpoints are home"
    assert aws.status(run_id)["status"] == "completed"


def test_an_instance_runctl_did_not_make_is_started_and_stopped_not_terminated(aws: Aws) -> None:
    host = aws.world.hosts[0]
    instance = aws.world.launch_for(host)
    ec2 = aws.world.client()
    ec2.stop_instances(InstanceIds=[instance])
    aws.world.hypervisor.wait_for(instance, "stopped")  # type: ignore[union-attr]
    result = aws.cli("workflow", "run", instance, SCRIPT, *REACH, "--", "--epochs", "1", *QUICK)
    assert result.code == 0, result.err
    assert "not created by runctl" in result.err and "stopped, not terminated" in result.err
    assert aws.state(instance) == "stopped"


def test_workflow_with_instance_type_creates_trains_and_terminates(aws: Aws) -> None:
    host = aws.world.hosts[0]
    result = aws.cli(
        "workflow", "run", *create_flags(aws, host), SCRIPT, *REACH, "--", "--epochs", "2", *QUICK, timeout=180
    )
    assert result.code == 0, result.err
    run_id = run_id_of(result)
    assert len(pulled(aws.project, run_id)) == 2
    assert live_instances(aws) == []


def test_a_failing_script_still_releases_the_instance_it_made(aws: Aws) -> None:
    host = aws.world.hosts[0]
    result = aws.cli("workflow", "run", *create_flags(aws, host), SCRIPT, *REACH, "--", "--epochs", "nope")
    assert result.code == 1, result.err
    assert live_instances(aws) == []


def test_a_placement_refused_after_create_terminates_the_new_instance(aws: Aws) -> None:
    host = aws.world.hosts[0]
    result = aws.cli("workflow", "run", *create_flags(aws, host), SCRIPT, *REACH, "--remote-dir", "/")
    assert result.code == 2, result.err
    assert "root directory" in result.err and "Traceback" not in result.err
    assert live_instances(aws) == []


def test_bad_input_creates_nothing(aws: Aws) -> None:
    host = aws.world.hosts[0]
    missing = aws.cli("workflow", "run", *create_flags(aws, host), "no_such_script.py", *REACH)
    assert missing.code == 2 and "no_such_script.py" in missing.err
    both = aws.cli("workflow", "run", "i-0123456789abcdef0", SCRIPT, "--instance-type", "g5.xlarge")
    assert both.code == 2 and "not both" in both.err
    none = aws.cli("workflow", "run", "i-0123456789abcdef0")
    assert none.code == 2 and "no SCRIPT" in none.err
    bad_ami = aws.cli("workflow", "run", *create_flags(aws, host), "--ami", "ami-00000000000000000", SCRIPT, *REACH)
    assert bad_ami.code == 2, bad_ami.err
    for result in (missing, both, none, bad_ami):
        assert "Traceback" not in result.err and len(result.err.strip().splitlines()) <= 2, result.err
    assert live_instances(aws) == []


def test_ctrl_c_stops_the_run_gracefully_pulls_and_releases(aws: Aws) -> None:
    host = aws.world.hosts[0]
    instance = aws.world.launch_for(host, tags={ec2tags.MANAGED: "true"})
    proc = aws.popen("workflow", "run", instance, SCRIPT, *REACH, "--", *SLOW)
    deadline = time.monotonic() + 60
    run_id = None
    while run_id is None and time.monotonic() < deadline:
        live = [r for r in aws.cli("runs", "list", "-o", "json").json if r["status"] == "running"]
        run_id = live[0]["run_id"] if live else None
        time.sleep(0.3)
    assert run_id is not None
    started_when(aws, run_id, step=2)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopping run" in err and "Traceback" not in err
    run = aws.status(run_id)
    assert run["status"] == "stopped" and run["termination_status"] == "user_stop"
    assert pulled(aws.project, run_id), "the checkpoint saved on the stop came home"
    assert aws.state(instance) == "terminated"
