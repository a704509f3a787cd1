"""`aws train --checkpoint-s3 --on-end terminate`: the final checkpoint verified in S3 is the proof.

The instance (moto, at a network-namespace sshd host with the power-off fake) has an instance role
(the metadata fake) and an AWS config naming the S3 endpoint (SeaweedFS), as a real instance with a
role would: no key goes to it. With the controller present, S3 verification lets it terminate with
no pull; with the controller SIGKILLed mid-run, the host powers itself off (its shutdown behaviour
terminate) only once its uploader has verified the final checkpoint, read back from the bucket here.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_aws_train import (  # noqa: F401  (aws, project: the fixtures)
    QUICK,
    REACH,
    SCRIPT,
    SLOW,
    Aws,
    aws,
    end_result,
    hypervisor,
    new_run,
    project,
    run_id_of,
    run_ids,
    started_when,
)
from tests.integration.test_s3_checkpoints import MANIFEST
from tests.integration.test_s3_ssh import wheelhouse  # noqa: F401  (the fixture)
from tests.support.imds import Imds
from tests.support.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server
from tests.support.sshhosts import SshTestHost

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def role_instance(aws: Aws, s3_server: S3Server, imds: Imds, wheelhouse: Path) -> Iterator[SshTestHost]:  # noqa: F811
    """The first instance host with an instance role and an AWS config naming the S3 and metadata
    endpoints; pip pointed at the wheelhouse for runctl's tool environment (boto3)."""
    host = aws.world.hosts[0]
    host.check_poweroff_fake()
    imds.set_role("runctl-test-role", ACCESS_KEY, SECRET_KEY)
    config = host.home / ".aws" / "config"
    config.parent.mkdir(exist_ok=True)
    config.write_text(
        "[default]\nregion = %s\nendpoint_url = %s\nec2_metadata_service_endpoint = %s\n"
        % (REGION, s3_server.endpoint, imds.endpoint)
    )
    pip_conf = host.home / ".config" / "pip" / "pip.conf"
    pip_conf.parent.mkdir(parents=True, exist_ok=True)
    pip_conf.write_text("[global]\nno-index = true\nfind-links = %s\n" % wheelhouse)
    try:
        yield host
    finally:
        shutil.rmtree(config.parent, ignore_errors=True)
        pip_conf.unlink()


def manifest(s3: S3Server, bucket: str, run_id: str) -> dict[str, Any]:
    key = "ck/%s/%s" % (run_id, MANIFEST)
    return json.loads(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())  # type: ignore[no-any-return]


def host_events(host: SshTestHost, run_id: str) -> list[dict[str, Any]]:
    path = host.home / "runctl" / "proj" / ".runctl" / "runs" / run_id / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_with_the_controller_present_s3_verification_lets_terminate_go_ahead_without_a_pull(
    aws: Aws,  # noqa: F811
    role_instance: SshTestHost,
    s3_server: S3Server,
) -> None:
    bucket = s3_server.make_bucket()
    instance = aws.world.launch_for(role_instance)
    done = aws.train(
        instance, "--checkpoint-s3", "s3://%s/ck" % bucket, "--on-end", "terminate", "--no-download-checkpoints",
        "--wait", script_args=("--epochs", "2", *QUICK), timeout=240,
    )  # fmt: skip
    assert done.code == 0, done.err
    run_id = run_id_of(done)
    assert aws.state(instance) == "terminated"
    result = end_result(aws, run_id)
    assert (result["action"], result["release"]["state"]) == ("terminate", "terminated")
    in_s3 = result["proof"]["checkpoints_in_s3"]
    assert in_s3["held"] is True and sorted(v["name"] for v in in_s3["verified"]) == [
        "checkpoint_epoch_1.json",
        "checkpoint_epoch_2.json",
    ]
    assert "checkpoints_downloaded" not in result["proof"], "nothing was pulled: S3 was the proof"
    assert "2 checkpoint(s) verified in s3://%s/ck" % bucket in done.err
    assert role_instance.poweroff_calls() == [], "the controller claimed the step"
    assert manifest(s3_server, bucket, run_id)["latest"] == "checkpoint_epoch_2.json"


def test_with_the_controller_killed_the_host_terminates_itself_once_the_final_checkpoint_is_in_s3(
    aws: Aws,  # noqa: F811
    role_instance: SshTestHost,
    s3_server: S3Server,
) -> None:
    bucket = s3_server.make_bucket()
    instance = aws.world.launch_for(role_instance)
    before = run_ids(aws)
    waiter = aws.popen(
        "aws", "train", instance, SCRIPT, *REACH, "--checkpoint-s3", "s3://%s/ck" % bucket,
        "--on-end", "terminate", "--wait", "--", *SLOW,
    )  # fmt: skip
    run_id = new_run(aws, before)
    started_when(aws, run_id)
    waiter.send_signal(signal.SIGKILL)
    waiter.wait(10)
    try:
        hypervisor(aws.world).wait_for(instance, "terminated", timeout=90)
    except Exception as exc:
        told = waiter.stderr.read() if waiter.stderr else ""
        run = role_instance.home / "runctl" / "proj" / ".runctl" / "runs" / run_id
        on_end = json.loads((run / "spec.json").read_text()).get("on_end")
        raise AssertionError(
            "%s\n%s\non_end %s\n%s" % (exc, told, on_end, (run / "events.jsonl").read_text()[-3000:])
        ) from exc
    assert len(role_instance.poweroff_calls()) == 1, "the agent powered the host off"
    # The bucket holds every checkpoint of the run, verified; the last one is the final epoch's.
    listed = manifest(s3_server, bucket, run_id)
    assert [e["name"] for e in listed["checkpoints"]] == ["checkpoint_epoch_%d.json" % n for n in (1, 2, 3)]
    assert listed["latest"] == "checkpoint_epoch_3.json"
    body = s3_server.client().get_object(Bucket=bucket, Key="ck/%s/checkpoint_epoch_3.json" % run_id)["Body"].read()
    assert json.loads(body)["epoch"] == 3
    # The power-off came only after the final checkpoint's verified upload, with that as its proof.
    seen = host_events(role_instance, run_id)
    names = [e["event"] for e in seen]
    final = max(
        i
        for i, e in enumerate(seen)
        if e.get("name") == "checkpoint_epoch_3.json" and e["event"] == "checkpoint_uploaded"
    )
    assert final < names.index("on_end_started")
    started = next(e for e in seen if e["event"] == "on_end_started")
    assert started["proof"]["checkpoints_in_s3"]["held"] is True
