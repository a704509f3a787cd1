"""Spot interruptions on EC2, end to end: the notice, the final checkpoint, `--auto-resume`.

The instance is a spot instance in the emulator (moto) whose host is a network-namespace sshd test
host with an instance role and an AWS config naming the S3 endpoint (SeaweedFS) and the metadata
service (the IMDSv2 fake), as on EC2. The agent on it polls the fake's `spot/instance-action`; the
test schedules a notice mid-run, as EC2 would, and later plays EC2 taking the instance (terminated,
`Server.SpotInstanceTermination`). The training script is the real example, using the helper
(`runctl.training`): STOP_TRAINING makes it save its checkpoint mid-epoch; RUNCTL_RESUME_FROM
makes it go on from that step.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.test_aws_train import (  # noqa: F401  (aws, project: the fixtures)
    REACH,
    SCRIPT,
    Aws,
    aws,
    hypervisor,
    new_run,
    project,
    run_id_of,
    run_ids,
    started_when,
)
from tests.integration.test_s3_aws import host_events, manifest, role_instance  # noqa: F401  (fixture)
from tests.integration.test_s3_ssh import wheelhouse  # noqa: F401  (the fixture)
from tests.support.aws import Ec2World, FaultProxy, spot_reclaim
from tests.support.imds import Imds
from tests.support.runs import poll
from tests.support.s3server import ACCESS_KEY, SECRET_KEY, S3Server
from tests.support.sshhosts import SshTestHost

pytestmark = pytest.mark.timeout(300)

EPOCHS, STEPS_PER_EPOCH = 2, 20
ARGS = ["--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS_PER_EPOCH), "--delay", "0.15"]
SPOT = {"InstanceMarketOptions": {"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time"}}}


def spot_cli(aws: Aws, s3: S3Server, ec2_env: dict[str, str] | None = None) -> Aws:  # noqa: F811
    """The CLI with EC2 at the emulator (or `ec2_env`) and S3 at SeaweedFS (its credentials; moto
    takes any), and the host's notice polls every 0.2 s instead of 5 s."""
    env = {
        **(ec2_env or aws.world.env()),
        "AWS_ENDPOINT_URL_S3": s3.endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "RUNCTL_SPOT_POLL_INTERVAL": "0.2",
    }
    return Aws(aws.sshenv, aws.world, aws.project, env)


def final_upload_done(host: SshTestHost, run_id: str) -> bool:
    names = [e["event"] for e in host_events(host, run_id)]
    return "ended" in names and "checkpoint_uploads_finished" in names


def interrupt(world: Ec2World, host: SshTestHost, imds: Imds, instance: str, cli: Aws, run_id: str) -> None:
    """Mid-run, the notice; then EC2 takes the instance. EC2 does so at the notice's time: brought
    forward here to once the run has stopped and its final checkpoint is verified, to keep the
    test short. The metadata of the instance launched next has no notice."""
    started_when(cli, run_id, step=8)
    imds.schedule("terminate", at=time.time() + 120)
    poll(lambda: final_upload_done(host, run_id), 90, "the interrupted run's final upload", interval=0.2)
    time.sleep(1.0)
    imds.clear()
    spot_reclaim(world.client(), instance)


def run_log(host: SshTestHost, run_id: str) -> str:
    return (host.home / "runctl" / "proj" / ".runctl" / "runs" / run_id / "training.log").read_text()


def test_a_spot_notice_mid_run_stops_it_interrupted_with_the_final_checkpoint_verified(
    aws: Aws,  # noqa: F811
    role_instance: SshTestHost,  # noqa: F811
    s3_server: S3Server,
    imds: Imds,
) -> None:
    bucket = s3_server.make_bucket()
    instance = aws.world.launch_for(role_instance, **SPOT)
    cli = spot_cli(aws, s3_server)
    before = run_ids(cli)
    waiter = cli.popen(
        "aws", "train", instance, SCRIPT, *REACH, "--checkpoint-s3", "s3://%s/ck" % bucket, "--stop-grace", "10m",
        "--wait", "--", *ARGS,
    )  # fmt: skip
    run_id = new_run(cli, before)
    started_when(cli, run_id, step=5)
    notice = imds.schedule("terminate", at=time.time() + 120)
    _out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 1, err
    run = cli.status(run_id)
    assert (run["status"], run["termination_status"]) == ("interrupted", "spot_interruption")
    assert run["termination_message"] == (
        "spot interruption notice: EC2 will terminate this instance at %s" % notice["time"]
    )
    assert "interrupted (spot_interruption)" in err
    # The script saw STOP_TRAINING and saved its checkpoint mid-epoch; the uploader verified it.
    listed = manifest(s3_server, bucket, run_id)
    final = listed["checkpoints"][-1]
    assert listed["latest"] == final["name"] == "checkpoint_epoch_1.json"
    body = s3_server.client().get_object(Bucket=bucket, Key=final["key"])["Body"].read()
    saved = json.loads(body)
    assert saved["epoch_complete"] is False and saved["step"] == final["step"] >= 5
    assert saved["step"] < STEPS_PER_EPOCH, "stopped at the notice, not at the end of the epoch"
    # The stop was compressed to fit the two minutes, though the run asked for a 10-minute grace.
    seen = host_events(role_instance, run_id)
    noticed = next(e for e in seen if e["event"] == "spot_interruption_notice")
    assert noticed["action"] == "terminate" and noticed["time"] == notice["time"]
    assert noticed["grace"] + noticed["term_grace"] + 30 + 10 <= noticed["seconds_left"] + 0.5
    assert noticed["grace"] < 600
    stop = next(e for e in seen if e["event"] == "stop_initiated")
    assert stop["termination_status"] == "spot_interruption" and stop["grace"] == noticed["grace"]
    names = [e["event"] for e in seen]
    assert "signal" not in names, "the script stopped on STOP_TRAINING: no SIGTERM was needed"
    uploaded = [i for i, e in enumerate(seen) if e["event"] == "checkpoint_uploaded" and e.get("step") == saved["step"]]
    assert uploaded and names.index("spot_interruption_notice") < uploaded[-1] < names.index(
        "checkpoint_uploads_finished"
    )
    assert names.count("spot_watch_error") == 0
    assert "[runctl] spot interruption notice: EC2 will terminate this instance" in run_log(role_instance, run_id)
    # The agent polled with an IMDSv2 token, at the interval the spec gave it.
    gets = [status for method, path, status in imds.requests if method == "GET" and path.endswith("instance-action")]
    assert gets.count(404) >= 3 and gets[-1] == 200


def test_an_on_demand_instance_is_not_watched(aws: Aws, s3_server: S3Server, imds: Imds) -> None:  # noqa: F811
    host = aws.world.hosts[0]
    instance = aws.world.launch_for(host)
    cli = spot_cli(aws, s3_server)
    done = cli.train(instance, "--wait", script_args=("--epochs", "1", "--steps-per-epoch", "3", "--delay", "0"))
    assert done.code == 0, done.err
    run_id = run_id_of(done)
    spec = json.loads((host.home / "runctl" / "proj" / ".runctl" / "runs" / run_id / "spec.json").read_text())
    assert spec["spot"] is None and spec["attempt"] is None
    assert imds.requests == []


def test_auto_resume_continues_from_the_final_checkpoint_on_a_new_spot_instance_and_completes(
    aws: Aws,  # noqa: F811
    role_instance: SshTestHost,  # noqa: F811
    s3_server: S3Server,
    imds: Imds,
) -> None:
    bucket = s3_server.make_bucket()
    instance = aws.world.launch_for(role_instance, **SPOT)
    cli = spot_cli(aws, s3_server)
    before = run_ids(cli)
    waiter = cli.popen(
        "aws", "train", instance, SCRIPT, *REACH, "--checkpoint-s3", "s3://%s/ck" % bucket, "--auto-resume", "1",
        "--wait", "--", *ARGS,
    )  # fmt: skip
    first = new_run(cli, before)
    interrupt(aws.world, role_instance, imds, instance, cli, first)
    out, err = waiter.communicate(timeout=240)
    assert waiter.returncode == 0, err
    runs = run_ids(cli) - before
    assert len(runs) == 2, runs
    second = (runs - {first}).pop()
    interrupted, resumed = cli.status(first), cli.status(second)
    assert (interrupted["status"], interrupted["termination_status"]) == ("interrupted", "spot_interruption")
    assert resumed["status"] == "completed", resumed
    # What the first run verified last is what the second started from.
    final = manifest(s3_server, bucket, first)["checkpoints"][-1]
    assert final["name"] == "checkpoint_epoch_1.json" and 8 <= final["step"] < STEPS_PER_EPOCH
    assert resumed["resumed_from"]["run_id"] == first and resumed["resumed_from"]["step"] == final["step"]
    shown = interrupted["checkpoint_s3"]
    assert shown["uploaded"] >= 1 and shown["last"] == final["name"], "runs status says what S3 verified"
    assert "Resumed from" in out and "step %d" % final["step"] in out
    # On a new instance, spot like the first, at the address the first gave back.
    described = [r["Instances"][0] for r in aws.world.client().describe_instances()["Reservations"]]
    relaunched = [i for i in described if i["InstanceId"] != instance]
    assert len(relaunched) == 1 and relaunched[0]["InstanceLifecycle"] == "spot"
    assert relaunched[0]["PrivateIpAddress"] == role_instance.address
    # Nothing lost, nothing done twice: the steps add up to one uninterrupted run's.
    assert resumed["step"] == EPOCHS * STEPS_PER_EPOCH
    assert "Training complete: %d epochs, %d steps" % (EPOCHS, EPOCHS * STEPS_PER_EPOCH) in out
    steps_second = EPOCHS * STEPS_PER_EPOCH - final["step"]
    log = run_log(role_instance, second)
    assert log.count("epoch 1/%d" % EPOCHS) == 1 and "epoch 2/%d" % EPOCHS in log
    assert steps_second > 0
    # The chain, as runs status shows it.
    chain = resumed["auto_resume"]
    assert chain == {
        "attempt": 2,
        "attempts": 2,
        "auto_resume": 1,
        "previous_runs": [first],
        "resumed_from": first,
        "steps_not_lost": final["step"],
        "checkpoint": "checkpoint_epoch_1.json",
    }
    assert interrupted["auto_resume"]["attempt"] == 1 and interrupted["auto_resume"]["previous_runs"] == []
    text = cli.cli("runs", "status", second)
    assert text.code == 0, text.err
    assert "attempt 2 of 2 (--auto-resume 1); after %s; %d steps not lost" % (first, final["step"]) in text.out
    assert "relaunching (attempt 2 of 2" in err
    assert hypervisor(aws.world).errors == []


def test_with_no_spot_capacity_the_relaunch_falls_back_to_on_demand(
    aws: Aws,  # noqa: F811
    role_instance: SshTestHost,  # noqa: F811
    s3_server: S3Server,
    imds: Imds,
    fault_proxy: FaultProxy,
) -> None:
    bucket = s3_server.make_bucket()
    instance = aws.world.launch_for(role_instance, **SPOT)
    fault_proxy.fail("RunInstances", 1, status=500, code="InsufficientInstanceCapacity", message="no capacity")
    cli = spot_cli(aws, s3_server, fault_proxy.env())
    before = run_ids(cli)
    waiter = cli.popen(
        "aws", "train", instance, SCRIPT, *REACH, "--checkpoint-s3", "s3://%s/ck" % bucket, "--auto-resume", "2",
        "--spot-fallback", "on-demand", "--wait", "--", *ARGS,
    )  # fmt: skip
    first = new_run(cli, before)
    interrupt(aws.world, role_instance, imds, instance, cli, first)
    out, err = waiter.communicate(timeout=240)
    assert waiter.returncode == 0, err
    assert "no spot capacity for g5.xlarge" in err and "launching on-demand instead" in err
    assert len(fault_proxy.calls("RunInstances")) == 2, "spot first, then on-demand"
    described = [r["Instances"][0] for r in aws.world.client().describe_instances()["Reservations"]]
    relaunched = [i for i in described if i["InstanceId"] != instance]
    assert len(relaunched) == 1 and relaunched[0].get("InstanceLifecycle") != "spot"
    second = (run_ids(cli) - before - {first}).pop()
    resumed = cli.status(second)
    assert resumed["status"] == "completed" and resumed["step"] == EPOCHS * STEPS_PER_EPOCH
    assert resumed["auto_resume"]["attempt"] == 2 and resumed["auto_resume"]["attempts"] == 3
    spec = json.loads((role_instance.home / "runctl" / "proj" / ".runctl" / "runs" / second / "spec.json").read_text())
    assert spec["spot"] is None, "an on-demand instance is not watched for notices"
    assert "Training complete" in out
