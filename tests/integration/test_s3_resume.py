"""`--resume`: the verified checkpoint from S3 on the host before the script starts (RUNCTL_RESUME_FROM).

A real SeaweedFS, real runs. Locally through the CLI; across two SSH test hosts (network
namespaces, each with an instance role from the metadata fake and runctl's tool environment built
from a local wheelhouse): the first host's run uploads, the second resumes from it. A checkpoint
that changed in S3 after `--resume` resolved it fails the run on the host before training.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_s3_checkpoints import finished, start
from tests.integration.test_s3_ssh import wheelhouse  # noqa: F401 - the session fixture
from tests.integration.test_ssh import SshEnv, make_project, remote_project
from tests.support.imds import Imds
from tests.support.runs import events, kill_leftover_runs, run_dir, status_file, write_script
from tests.support.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, aws_only_at
from tests.support.sshhosts import SshTestHost

RESUMABLE = """
    import json, time
    from runctl import training as rt
    source = rt.resume_from()
    begin = 0
    if source is not None:
        begin = json.loads(source.read_text())["step"]
        print("resumed from %s at step %d" % (source, begin))
    else:
        print("training from scratch")
    for step in (begin + 100, begin + 200):
        time.sleep(0.2)
        rt.report(step=step, loss=1.0 / step)
        with rt.atomic_path(rt.checkpoint_dir() / ("step_%d.json" % step)) as tmp:
            tmp.write_text(json.dumps({"step": step}))
    print("trained to step %d" % step)
"""


@pytest.fixture
def env(runctl_home: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This machine's AWS settings point at SeaweedFS only (for `runctl` processes and in-process calls)."""
    return aws_only_at(s3_server, monkeypatch)


@pytest.fixture
def local_project(project: Path) -> Iterator[Path]:
    yield project
    kill_leftover_runs(project)


def test_a_local_run_resumes_from_the_latest_verified_checkpoint(
    cli, env: dict[str, str], local_project: Path, s3_server: S3Server
) -> None:
    bucket = s3_server.make_bucket()
    uri = "s3://%s/ckpts" % bucket
    script = write_script(local_project, "resumable.py", RESUMABLE)
    first = cli("local", "train", script, "--checkpoint-s3", uri, "--wait", "-o", "json")
    assert first.code == 0, first.err
    first_id = json.loads(first.out)["run_id"]
    assert finished(local_project, first_id)["checkpoint_s3"]["uploaded"] == 2

    second = cli("local", "train", script, "--checkpoint-s3", uri, "--resume", "latest", "--wait", "-o", "json")
    assert second.code == 0, second.err
    run_id = json.loads(second.out)["run_id"]
    placed = run_dir(local_project, run_id) / "resume" / "step_200.json"
    assert json.loads(placed.read_text()) == {"step": 200}
    log = (run_dir(local_project, run_id) / "training.log").read_text()
    assert "resumed from %s at step 200" % placed in log
    assert "resume checkpoint verified" in log and "trained to step 400" in log
    assert "from scratch" not in log
    assert status_file(local_project, run_id)["step"] == 400


def test_a_checkpoint_changed_in_s3_after_resolving_fails_the_run_before_training(
    env: dict[str, str], local_project: Path, s3_server: S3Server
) -> None:
    from runctl.s3checkpoints import resolve_resume
    from runctl.store import Store

    client, bucket = s3_server.client(), s3_server.make_bucket()
    data = json.dumps({"step": 700}).encode()
    from runctl.storage import checksums, objects, s3

    entry = {
        "name": "step_700.json", "size": len(data), "mtime": 1.0, "time": 2.0, "step": 700, "epoch": None,
        "key": "p/feed0001/step_700.json", "checksum": checksums.sha256_b64(data), "parts": 1, "part_size": None,
    }  # fmt: skip
    client.put_object(
        Bucket=bucket, Key=entry["key"], Body=data, ChecksumAlgorithm="SHA256", ChecksumSHA256=entry["checksum"]
    )
    manifest = objects.record(objects.new_manifest(bucket, "p", "feed0001"), entry)
    s3.put_json(client, bucket, objects.manifest_key("p", "feed0001"), manifest)
    resume = resolve_resume("latest", {"uri": "s3://%s/p" % bucket}, Store())
    # Between the controller's check and the host's download, the object changes (same size).
    client.put_object(Bucket=bucket, Key=entry["key"], Body=json.dumps({"step": 999}).encode())

    script = write_script(local_project, "resumable.py", RESUMABLE)
    proc = start(env, local_project, script, resume_s3=resume)
    assert proc.returncode == 4, proc.stderr
    assert "not what its manifest says" in proc.stderr and "SHA-256" in proc.stderr, proc.stderr
    assert "resume from another one" in proc.stderr
    run_id = proc.stdout.strip().splitlines()[-1]
    state = status_file(local_project, run_id)
    assert state["status"] == "failed" and not state.get("started_at"), state
    assert "not what its manifest says" in state["termination_message"]
    log = (run_dir(local_project, run_id) / "training.log").read_text()
    assert "from scratch" not in log and "trained" not in log
    assert not (run_dir(local_project, run_id) / "resume" / "step_700.json").exists()
    assert "started" not in [e["event"] for e in events(local_project, run_id)]


# ---- across SSH hosts ------------------------------------------------------------------------------


@pytest.fixture
def role_hosts(
    sshenv: SshEnv,
    s3_server: S3Server,
    imds: Imds,
    wheelhouse: Path,  # noqa: F811
) -> Iterator[list[SshTestHost]]:
    """Both test hosts with an instance role (the fake's), an AWS config naming the endpoints, and
    pip pointed at the wheelhouse: machines that share a bucket and nothing else."""
    hosts = sshenv.hosts[:2]
    if len(hosts) < 2 or not all(h.netns for h in hosts):
        pytest.skip("needs two network-namespace test hosts (root, ip netns)")
    imds.set_role("runctl-test-role", ACCESS_KEY, SECRET_KEY, token="")
    for host in hosts:
        pip_conf = host.home / ".config" / "pip" / "pip.conf"
        pip_conf.parent.mkdir(parents=True, exist_ok=True)
        pip_conf.write_text("[global]\nno-index = true\nfind-links = %s\n" % wheelhouse)
        (host.home / ".aws").mkdir(exist_ok=True)
        (host.home / ".aws" / "config").write_text(
            "[default]\nregion = %s\nendpoint_url = %s\nec2_metadata_service_endpoint = %s\n"
            % (REGION, s3_server.endpoint, imds.endpoint)
        )
    try:
        yield hosts
    finally:
        for host in hosts:
            shutil.rmtree(host.home / ".aws", ignore_errors=True)
            (host.home / ".config" / "pip" / "pip.conf").unlink()


def test_a_run_resumes_on_a_second_ssh_host_from_what_the_first_uploaded(
    sshenv: SshEnv, role_hosts: list[SshTestHost], s3_server: S3Server, tmp_path: Path
) -> None:
    first_host, second_host = role_hosts
    bucket = s3_server.make_bucket()
    uri = "s3://%s/team" % bucket
    project = make_project(tmp_path, "s3-resume", {"resumable.py": RESUMABLE})
    env = sshenv.environ({k: v for k, v in s3_server.env().items()})
    first = sshenv.cli(
        "ssh", "train", sshenv.dest(first_host), "resumable.py", "--checkpoint-s3", uri, "--wait", "-o", "json",
        cwd=project, timeout=600, env=env,
    )  # fmt: skip
    assert first.code == 0, first.err
    first_id = json.loads(first.out)["run_id"]
    listed = sshenv.cli("checkpoint", "latest", first_id, "-o", "json", cwd=project, env=env)
    assert listed.code == 0 and listed.json["name"] == "step_200.json", listed.out + listed.err

    second = sshenv.cli(
        "ssh", "train", sshenv.dest(second_host), "resumable.py", "--checkpoint-s3", uri, "--resume", "latest",
        "--wait", "-o", "json", cwd=project, timeout=600, env=env,
    )  # fmt: skip
    assert second.code == 0, second.err
    run_id = json.loads(second.out)["run_id"]
    there = remote_project(second_host, "s3-resume") / ".runctl" / "runs" / run_id
    placed = there / "resume" / "step_200.json"
    assert json.loads(placed.read_text()) == {"step": 200}
    log = (there / "training.log").read_text()
    assert "resumed from %s at step 200" % placed in log, log
    assert "trained to step 400" in log and "from scratch" not in log
    assert not (remote_project(first_host, "s3-resume") / ".runctl" / "runs" / run_id).exists()
    shown = sshenv.cli("runs", "status", run_id, cwd=project, env=env)
    assert "resumed from %s/step_200.json (step 200)" % first_id in shown.out, shown.out
