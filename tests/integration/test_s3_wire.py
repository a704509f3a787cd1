"""`--checkpoint-s3` and `--forward-aws-credentials` through the real CLI: a real SeaweedFS, real runs.

A local run with the example training script (runctl.training's atomic saves) uploads while it
trains, and `runs status` shows the verified count. On a network-namespace SSH host with no AWS
configuration at all, `--forward-aws-credentials` gives it credentials in a 0600 file that no
process's command line, log, spec or store ever holds, and that is gone after the run; a wrong
secret, or no credentials, is exit 4 at the start with the fix, and the script never ran.

SeaweedFS has no STS and refuses session tokens, so the runs forward `=static` keys; where session
credentials come from (STS GetSessionToken, or the user's own) is checked against moto's STS.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RUNCTL, Result
from tests.integration.test_s3_checkpoints import MANIFEST
from tests.integration.test_s3_ssh import wheelhouse  # noqa: F401  (the fixture)
from tests.integration.test_ssh import SshEnv, make_project, remote_project
from tests.support.aws import MotoEmulator
from tests.support.runs import events, kill_leftover_runs, poll, status_file
from tests.support.s3server import SECRET_KEY, S3Server
from tests.support.sshhosts import SshTestHost

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "training" / "train_with_checkpoints.py"


def user_env(s3: S3Server, **extra: str) -> dict[str, str]:
    """The controller's environment: the S3 emulator's endpoint and keys, nothing else of AWS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3.env(), **extra)
    return env


def manifest(s3: S3Server, bucket: str, key: str) -> dict[str, Any]:
    return json.loads(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())  # type: ignore[no-any-return]


# ---- a local run ------------------------------------------------------------------------------


@pytest.fixture
def local_project(project: Path) -> Iterator[Path]:
    (project / "training").mkdir()
    shutil.copy(EXAMPLE, project / "training" / EXAMPLE.name)
    yield project
    kill_leftover_runs(project)


def test_local_train_uploads_during_the_run_and_runs_status_shows_the_verified_count(
    cli: Any, local_project: Path, s3_server: S3Server
) -> None:
    bucket = s3_server.make_bucket()
    env = user_env(s3_server)
    script = "training/" + EXAMPLE.name
    args = ("--epochs", "3", "--steps-per-epoch", "8", "--delay", "0.15")  # 1.2 s an epoch
    uri = "s3://%s/runs/" % bucket
    done: Result = cli("local", "train", script, "--checkpoint-s3", uri, "--wait", "--", *args, env=env)
    assert done.code == 0, done.err
    run_id = done.err.split("run ", 1)[1].split()[0]
    prefix = "runs/%s/" % run_id
    last = "checkpoint 3 uploaded and verified: checkpoint_epoch_3.json (s3://%s/%scheckpoint_epoch_3.json)"
    assert last % (bucket, prefix) in done.err, done.err
    # Uploaded while it trained: the first checkpoint was verified before the script exited.
    exited = float(status_file(local_project, run_id)["exited_at"])
    uploads = [e for e in events(local_project, run_id) if e["event"] == "checkpoint_uploaded"]
    assert len(uploads) == 3 and min(float(e["t"]) for e in uploads) < exited
    shown = cli("runs", "status", run_id, "-o", "json", env=env)
    assert shown.code == 0, shown.err
    s3 = shown.json["checkpoint_s3"]
    assert (s3["phase"], s3["uploaded"], s3["last"], s3["error"]) == ("done", 3, "checkpoint_epoch_3.json", None)
    text = cli("runs", "status", run_id, env=env)
    assert "checkpoint 3 uploaded and verified" in text.out
    # The bucket itself: the manifest lists the three, and each object is the file on disk.
    listed = manifest(s3_server, bucket, prefix + MANIFEST)["checkpoints"]
    assert [e["name"] for e in listed] == ["checkpoint_epoch_%d.json" % n for n in (1, 2, 3)]
    for entry in listed:
        body = s3_server.client().get_object(Bucket=bucket, Key=prefix + entry["name"])["Body"].read()
        assert body == (local_project / "checkpoints" / entry["name"]).read_bytes()


# ---- an SSH host with no AWS configuration --------------------------------------------------------

SLOW_SAVES = {
    "train.py": """
        import time
        from pathlib import Path
        from runctl import training as rt
        Path("trained").write_text("yes")
        for epoch in (1, 2, 3):
            time.sleep(0.7)
            rt.report(step=epoch * 10, epoch=epoch, loss=1.0 / epoch)
            rt.atomic_write(rt.checkpoint_dir() / ("checkpoint_epoch_%d.pt" % epoch), b"%d" % epoch * 2048)
        print("trained")
    """
}


@pytest.fixture
def bare_host(sshenv: SshEnv, wheelhouse: Path) -> Iterator[SshTestHost]:  # noqa: F811
    """A test host with no AWS credentials or configuration; pip pointed at the local wheelhouse
    (a namespace host has no route to a package index) for runctl's tool environment."""
    host = sshenv.hosts[0]
    if not host.netns:
        pytest.skip("needs network-namespace test hosts (root, ip netns)")
    shutil.rmtree(host.home / ".aws", ignore_errors=True)
    pip_conf = host.home / ".config" / "pip" / "pip.conf"
    pip_conf.parent.mkdir(parents=True, exist_ok=True)
    pip_conf.write_text("[global]\nno-index = true\nfind-links = %s\n" % wheelhouse)
    try:
        yield host
    finally:
        pip_conf.unlink()


def popen(sshenv: SshEnv, project: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*RUNCTL, *args],
        cwd=str(project),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=sshenv.environ(env),
    )


def started_lines(proc: subprocess.Popen[str]) -> list[str]:
    """stderr of a `train --wait` up to its "run ID (NAME) started" line (the last one returned)."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("run ") and " started " in line:
            return seen
    raise AssertionError("no run id in the output of train:\n" + "".join(seen))


def command_lines_holding(secret: str) -> list[str]:
    """The command lines of this machine's processes (the namespace hosts' too) that hold `secret`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if secret.encode() in line:
                found.append(line.replace(b"\0", b" ").decode("utf-8", "replace"))
    return found


def test_ssh_train_with_forwarded_session_credentials_keeps_them_private_and_removes_them(
    sshenv: SshEnv, bare_host: SshTestHost, s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    project = make_project(tmp_path, "s3-fwd", SLOW_SAVES)
    env = user_env(s3_server)
    uri = "s3://%s/fw" % bucket
    proc = popen(
        sshenv, project, env, "ssh", "train", sshenv.dest(bare_host), "train.py", "--checkpoint-s3", uri,
        "--forward-aws-credentials=static", "--wait",
    )  # fmt: skip
    try:
        head = started_lines(proc)
        run_id = head[-1].split()[1]
        secrets = bare_host.home / ".runctl" / "secrets" / run_id
        creds = secrets / "aws-credentials"
        run = remote_project(bare_host, "s3-fwd") / ".runctl" / "runs" / run_id
        poll(lambda: (run / "status.json").exists() and json.loads((run / "status.json").read_text()).get("pid"),
             120, "the script running")  # fmt: skip
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
        assert SECRET_KEY in creds.read_text()
        assert command_lines_holding(SECRET_KEY) == []
        spec = (run / "spec.json").read_text()
        assert str(creds) in spec and SECRET_KEY not in spec
        _, rest = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(head) + rest
    assert proc.returncode == 0, err
    assert "--forward-aws-credentials=static puts your long-lived AWS keys on the host" in err
    assert "forwarded static AWS credentials to" in err and "0600; deleted when the run ends" in err
    assert "checkpoint 3 uploaded and verified: checkpoint_epoch_3.pt" in err, err
    poll(lambda: not creds.exists(), 10, "the credentials file to be removed")
    assert not secrets.exists()
    listed = manifest(s3_server, bucket, "fw/%s/%s" % (run_id, MANIFEST))["checkpoints"]
    assert [(e["name"], e["size"]) for e in listed] == [("checkpoint_epoch_%d.pt" % n, 2048) for n in (1, 2, 3)]
    # Never in a log, the run's records on the host, or the controller's store.
    for path in [*run.iterdir(), *sshenv.home.glob("runctl.db*")]:
        if path.is_file():
            data = path.read_bytes()
            assert SECRET_KEY.encode() not in data, path


@pytest.mark.parametrize("case", ["wrong secret forwarded", "no credentials"])
def test_a_host_that_cannot_use_the_bucket_is_exit_4_at_start_and_nothing_trained(
    sshenv: SshEnv, bare_host: SshTestHost, s3_server: S3Server, tmp_path: Path, case: str
) -> None:
    bucket = s3_server.make_bucket()
    project = make_project(tmp_path, "s3-bad-%d" % len(case), SLOW_SAVES)
    forwarded = case == "wrong secret forwarded"
    env = user_env(s3_server, AWS_SECRET_ACCESS_KEY="not-the-secret")
    flags = ["--forward-aws-credentials=static"] if forwarded else []
    result = sshenv.cli(
        "ssh", "train", sshenv.dest(bare_host), "train.py", "--checkpoint-s3", "s3://%s/x" % bucket, *flags,
        cwd=project, env=env, timeout=300,
    )  # fmt: skip
    assert result.code == 4, result.err
    lines = result.err.strip().splitlines()
    assert "did not start" in lines[-2], result.err
    if forwarded:
        assert "SignatureDoesNotMatch" in lines[-2] and "forwarded from this machine were refused" in lines[-1]
    else:
        assert "add --forward-aws-credentials" in lines[-1], result.err
    remote = remote_project(bare_host, project.name)
    assert not (remote / "trained").exists(), "the script ran without a usable bucket"
    assert s3_server.keys(bucket) == []
    poll(lambda: not any((bare_host.home / ".runctl" / "secrets").glob("*/aws-credentials")), 10, "no credentials left")


def test_forwarded_credentials_are_session_ones_from_sts_or_the_users_own(
    moto_emulator: MotoEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runctl.checkpoint_s3 import credentials

    said: list[str] = []
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "long-lived-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_emulator.url)
    from_sts = credentials("session", said.append)
    assert from_sts.kind == "session (STS)" and from_sts.token and from_sts.expires
    assert from_sts.secret_key != "long-lived-secret" and said == []
    assert b"aws_session_token = " in from_sts.shared_file()
    static = credentials("static", said.append)
    assert (static.kind, static.secret_key, static.token) == ("static", "long-lived-secret", None)
    assert len(said) == 1 and "long-lived AWS keys" in said[0]
    monkeypatch.setenv("AWS_SESSION_TOKEN", "the-users-own-token")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9")  # never asked: nothing listens there
    own = credentials("session", said.append)
    assert (own.kind, own.token) == ("session (yours)", "the-users-own-token")
