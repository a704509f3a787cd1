"""Checkpoint uploads from an SSH test host: the agent there builds runctl's tool environment (boto3)
once, and the uploader uses the host's own credentials: an instance role served by the metadata fake.

The host (a network namespace) reaches SeaweedFS and the metadata fake at the root side of a test
veth. Its ~/.aws/config names only the region, the S3 endpoint and the metadata endpoint, as a
machine with an instance role has: no key is on the host or in the run's spec. A host in a namespace
has no route to a package registry, so its pip configuration names a local wheelhouse (made here
with `pip download`), as a host behind a private package mirror would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RUNCTL
from tests.integration.test_s3_checkpoints import MANIFEST, START
from tests.integration.test_ssh import SshEnv, make_project, remote_project
from tests.support.imds import Imds
from tests.support.runs import poll
from tests.support.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server
from tests.support.sshhosts import SshTestHost

START_SSH = START.replace(
    'StartRequest("local", script)', 'StartRequest("ssh", script, options={"dest": extra.pop("dest")})'
)
START_SSH = START_SSH.replace('providers.get("local")', 'providers.get("ssh")')

SAVES = {
    "train.py": """
        import time
        from runctl import training as rt
        for epoch in (1, 2):
            time.sleep(0.2)  # an epoch's work: a checkpoint is dated by the last step reported before it
            rt.report(step=epoch * 50, epoch=epoch, loss=1.0 / epoch)
            with rt.atomic_path(rt.checkpoint_dir() / ("checkpoint_epoch_%d.pt" % epoch)) as tmp:
                tmp.write_bytes(b"%d" % epoch * 4096)
        print("trained")
    """
}


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """boto3 and its dependencies as wheels, for hosts that cannot reach a package index."""
    target = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(target), "boto3>=1.28"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


@pytest.fixture
def role_host(sshenv: SshEnv, s3_server: S3Server, imds: Imds, wheelhouse: Path) -> Iterator[SshTestHost]:
    """The first test host, with an instance role (the fake's), an AWS config naming the endpoints,
    and pip pointed at the wheelhouse."""
    host = sshenv.hosts[0]
    if not host.netns:
        pytest.skip("needs network-namespace test hosts (root, ip netns)")
    pip_conf = host.home / ".config" / "pip" / "pip.conf"
    pip_conf.parent.mkdir(parents=True, exist_ok=True)
    pip_conf.write_text("[global]\nno-index = true\nfind-links = %s\n" % wheelhouse)
    imds.set_role("runctl-test-role", ACCESS_KEY, SECRET_KEY, token="")
    aws = host.home / ".aws"
    aws.mkdir(exist_ok=True)
    (aws / "config").write_text(
        "[default]\nregion = %s\nendpoint_url = %s\nec2_metadata_service_endpoint = %s\n"
        % (REGION, s3_server.endpoint, imds.endpoint)
    )
    try:
        yield host
    finally:
        shutil.rmtree(aws, ignore_errors=True)
        pip_conf.unlink()


def test_a_run_on_an_ssh_host_uploads_with_the_hosts_own_role(
    sshenv: SshEnv, role_host: SshTestHost, s3_server: S3Server, imds: Imds, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    project = make_project(tmp_path, "s3-role", SAVES)
    extra = {"dest": sshenv.dest(role_host), "checkpoint_s3": {"uri": "s3://%s/runs" % bucket, "stable_seconds": 0.3}}
    proc = subprocess.run(
        [sys.executable, "-c", START_SSH, "train.py", json.dumps(extra)],
        cwd=str(project),
        capture_output=True,
        text=True,
        timeout=600,  # the first run on a host builds the tool environment
        env=sshenv.environ(),
    )
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.strip().splitlines()[-1]
    run = remote_project(role_host, "s3-role") / ".runctl" / "runs" / run_id

    def ended() -> dict[str, object]:
        try:
            state = json.loads((run / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return state if (state.get("checkpoint_s3") or {}).get("phase") in ("done", "failed") else {}

    state = poll(ended, 300, "the run's end and its final upload on the host")
    assert state["status"] == "completed", state
    assert state["checkpoint_s3"]["phase"] == "done", state["checkpoint_s3"]
    body = s3_server.client().get_object(Bucket=bucket, Key="runs/%s/%s" % (run_id, MANIFEST))["Body"].read()
    listed = json.loads(body)["checkpoints"]
    assert [(e["name"], e["step"], e["size"]) for e in listed] == [
        ("checkpoint_epoch_1.pt", 50, 4096),
        ("checkpoint_epoch_2.pt", 100, 4096),
    ]
    # The host got its credentials from the role, through the IMDSv2 token flow.
    paths = [(method, path) for method, path, _ in imds.requests]
    assert ("PUT", "/latest/api/token") in paths
    assert ("GET", "/latest/meta-data/iam/security-credentials/runctl-test-role") in paths
    log = (run / "training.log").read_text()
    assert "trained" in log
    assert "checkpoints go to s3://%s/runs" % bucket in log
    # boto3 came from runctl's tool environment on the host (the host's python3 has none).
    tools = sorted((role_host.home / ".runctl" / "venvs").glob("runctl-tools-*"))
    assert [p for p in tools if p.is_dir()], "no tool environment was built on the host"

    # The report, written here from the run dir on the host, shows the checkpoints verified in S3.
    report = tmp_path / "report.html"
    shown = subprocess.run(
        [*RUNCTL, "runs", "report", run_id, "--html", str(report)],
        cwd=str(project),
        capture_output=True,
        text=True,
        timeout=120,
        env=sshenv.environ(),
    )
    assert shown.returncode == 0, shown.stderr
    page = report.read_text()
    assert "Training Complete" in page and "completed (auto_complete)" in page
    for epoch in (1, 2):
        assert "runs/%s/checkpoint_epoch_%d.pt" % (run_id, epoch) in page
    assert "s3://%s/runs" % bucket in page and page.count("\u2714 verified") == 2
    assert '<path class="raw" data-points="2"' in page  # the loss the host's script reported
    assert ">ssh<" in page and "trained" in page
