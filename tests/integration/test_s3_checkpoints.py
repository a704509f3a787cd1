"""Checkpoints uploaded to S3 while the run goes, verified: a real SeaweedFS, real runs, real agents.

Runs are started the way `runctl local train` starts them (the start pipeline: a store record, the
agent zip), with a `checkpoint_s3` block in the spec, as the `--checkpoint-s3` flag will set it.
What the uploader did is read back from the bucket itself (objects, checksums, the manifest), and
from the run dir (status.json, events.jsonl).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runctl.core.errors import HostError
from runctl.storage import checksums
from runctl.storage.s3 import check_s3_access
from tests.support import s3server
from tests.support.runs import events, kill_leftover_runs, poll, run_dir, status_file, write_script
from tests.support.s3server import S3Server

START = textwrap.dedent(
    """
    import json, sys
    from runctl import providers
    from runctl.core.errors import RunctlError
    from runctl.pipeline import Start, build_spec
    from runctl.providers.base import StartRequest
    from runctl.store import Store

    script, extra = sys.argv[1], json.loads(sys.argv[2])
    provider, request = providers.get("local"), StartRequest("local", script)
    spec, root = build_spec(provider, request)
    for key, value in extra.items():
        setattr(spec, key, value)
    try:
        Start(Store(), provider, request, spec, root).run()
    except RunctlError as exc:
        print(spec.run_id)
        sys.stderr.write("error: %s (%s)" % (exc.message, exc.hint or ""))
        sys.exit(exc.exit_code)
    print(spec.run_id)
    """
)
FAST = {"stable_seconds": 0.3}  # a checkpoint counts once unchanged this long (and no longer open)
MANIFEST = ".runctl-manifest.json"


@pytest.fixture(autouse=True)
def _cleanup(project: Path) -> Iterator[None]:
    yield
    kill_leftover_runs(project)
    for state in (project / ".runctl" / "runs").glob("*/checkpoint_s3.json"):
        with contextlib.suppress(OSError, ValueError, TypeError):
            os.kill(int(json.loads(state.read_text())["pid"]), signal.SIGKILL)  # an uploader a failed test left


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.make_bucket()


@pytest.fixture
def env(runctl_home: Path, s3_server: S3Server) -> dict[str, str]:
    """The controller's environment, which the local agent (the host here) inherits: its own credentials."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out.update(s3_server.env())
    return out


def start(env: dict[str, str], project: Path, script: str, **spec: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", START, script, json.dumps(spec)],
        cwd=str(project),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def started(env: dict[str, str], project: Path, script: str, **spec: Any) -> str:
    proc = start(env, project, script, **spec)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def finished(project: Path, run_id: str, timeout: float = 60) -> dict[str, Any]:
    """status.json once the run has ended and the uploader's final pass is over."""

    def done() -> dict[str, Any]:
        state = status_file(project, run_id)
        final = (state.get("checkpoint_s3") or {}).get("phase") in ("done", "failed")
        return state if final and state.get("status") in ("completed", "failed", "stopped") else {}

    return poll(done, timeout, "the run's end and its final upload")  # type: ignore[no-any-return]


def manifest(s3: S3Server, bucket: str, prefix: str, run_id: str) -> dict[str, Any]:
    body = s3.client().get_object(Bucket=bucket, Key="%s/%s/%s" % (prefix, run_id, MANIFEST))["Body"].read()
    return json.loads(body)  # type: ignore[no-any-return]


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def uploaded(project: Path, run_id: str) -> list[dict[str, Any]]:
    return [e for e in events(project, run_id) if e["event"] == "checkpoint_uploaded"]


# ---- uploads during the run -----------------------------------------------------------------------

# Saves with the helper's atomic writes; after the first it waits until the uploader has verified it,
# so that upload provably happened while the run went on. Then a directory checkpoint (save_pretrained
# style) and a last file.
ATOMIC = """
    import json, os, sys, time
    from runctl import training as rt

    def verified():
        try:
            with open(os.path.join(os.environ["RUNCTL_RUN_DIR"], "checkpoint_s3.json")) as f:
                return json.load(f).get("uploaded", 0)
        except (OSError, ValueError):
            return 0

    d = rt.checkpoint_dir()
    rt.report(step=100, epoch=1, loss=0.9)
    with rt.atomic_path(d / "checkpoint_epoch_1.pt") as tmp:
        tmp.write_bytes(b"one" * 1000)
    deadline = time.time() + 30
    while verified() < 1 and time.time() < deadline:
        time.sleep(0.05)
    print("first verified while running:", verified() >= 1, flush=True)
    rt.report(step=200, epoch=2, loss=0.5)
    with rt.atomic_path(d / "hf-200") as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text('{"n_layer": 2}')
        (tmp / "model.safetensors").write_bytes(b"w" * 5000)
    rt.report(step=300, epoch=3, loss=0.25)
    with rt.atomic_path(d / "checkpoint_epoch_3.pt") as tmp:
        tmp.write_bytes(b"three" * 1000)
"""


def test_atomic_saves_are_uploaded_during_the_run_verified_and_listed(
    env: dict[str, str], project: Path, s3_server: S3Server, bucket: str
) -> None:
    uri = "s3://%s/ckpts" % bucket
    run_id = started(env, project, write_script(project, "t.py", ATOMIC), checkpoint_s3={"uri": uri, **FAST})
    state = finished(project, run_id)
    assert state["status"] == "completed", state
    assert "first verified while running: True" in (run_dir(project, run_id) / "training.log").read_text()

    s3 = s3_server.client()
    keys = s3_server.keys(bucket, "ckpts/%s/" % run_id)
    assert keys == sorted(
        "ckpts/%s/%s" % (run_id, name)
        for name in (MANIFEST, "checkpoint_epoch_1.pt", "checkpoint_epoch_3.pt", "hf-200/config.json",
                     "hf-200/model.safetensors")
    )  # fmt: skip
    listed = {e["name"]: e for e in manifest(s3_server, bucket, "ckpts", run_id)["checkpoints"]}
    assert sorted(listed) == ["checkpoint_epoch_1.pt", "checkpoint_epoch_3.pt", "hf-200"]
    first = listed["checkpoint_epoch_1.pt"]
    assert first["size"] == 3000 and first["checksum"] == sha256_b64(b"one" * 1000)
    assert (first["step"], first["epoch"]) == (100, 1)
    assert listed["checkpoint_epoch_3.pt"]["step"] == 300 and listed["hf-200"]["epoch"] == 2
    assert [f["path"] for f in listed["hf-200"]["files"]] == ["hf-200/config.json", "hf-200/model.safetensors"]
    assert manifest(s3_server, bucket, "ckpts", run_id)["latest"] == "checkpoint_epoch_3.pt"
    # What S3 itself keeps: the same bytes and the SHA-256 the manifest names.
    head = s3.head_object(Bucket=bucket, Key=first["key"], ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == first["checksum"] and head["ContentLength"] == 3000
    assert s3.get_object(Bucket=bucket, Key=first["key"])["Body"].read() == b"one" * 1000

    summary = state["checkpoint_s3"]
    assert summary["uploaded"] == 3 and summary["pending"] == 0 and summary["error"] is None
    assert summary["message"].startswith("checkpoint 3 uploaded and verified")
    assert [e["n"] for e in uploaded(project, run_id)] == [1, 2, 3]
    assert all(e["verified"] for e in uploaded(project, run_id))
    # No temp file of the atomic saves was ever uploaded.
    assert not [k for k in keys if ".tmp" in k]


def test_a_large_checkpoint_goes_in_parts_with_a_composite_checksum(
    env: dict[str, str], project: Path, s3_server: S3Server, bucket: str
) -> None:
    script = write_script(
        project,
        "big.py",
        """
        import os
        from runctl import training as rt
        with rt.atomic_path(rt.checkpoint_dir() / "model.pt") as tmp:
            tmp.write_bytes(os.urandom(20 * 1024 * 1024 + 123))
        """,
    )
    mib = 1024 * 1024
    cfg = {"uri": "s3://%s/p" % bucket, "multipart_threshold": 5 * mib, "part_size": 5 * mib, **FAST}
    run_id = started(env, project, script, checkpoint_s3=cfg)
    assert finished(project, run_id)["checkpoint_s3"]["phase"] == "done"
    entry = manifest(s3_server, bucket, "p", run_id)["checkpoints"][0]
    local = project / "checkpoints" / "model.pt"
    assert entry["parts"] == 5 and entry["part_size"] == 5 * mib
    assert entry["checksum"] == checksums.file_checksum(str(local), 5 * mib)
    assert entry["checksum"].endswith("-5")
    head = s3_server.client().head_object(Bucket=bucket, Key=entry["key"], ChecksumMode="ENABLED")
    assert head["ContentLength"] == local.stat().st_size
    assert head["ChecksumSHA256"] == entry["checksum"]


def test_when_several_wait_the_newest_goes_first_and_none_is_lost(
    env: dict[str, str], project: Path, s3_server: S3Server, bucket: str
) -> None:
    script = write_script(
        project,
        "t.py",
        """
        from runctl import training as rt
        for n in (1, 2, 3):
            with rt.atomic_path(rt.checkpoint_dir() / ("c%d.pt" % n)) as tmp:
                tmp.write_bytes(b"%d" % n * 100)
        """,
    )
    # Nothing is old enough to go while the script runs: all three wait for the final pass.
    run_id = started(env, project, script, checkpoint_s3={"uri": "s3://%s/q" % bucket, "stable_seconds": 60})
    assert finished(project, run_id)["checkpoint_s3"]["last"] == "c3.pt"
    assert [e["name"] for e in uploaded(project, run_id)] == ["c3.pt", "c2.pt", "c1.pt"]
    listed = manifest(s3_server, bucket, "q", run_id)
    assert [e["name"] for e in listed["checkpoints"]] == ["c1.pt", "c2.pt", "c3.pt"] and listed["latest"] == "c3.pt"


def test_a_bad_uri_fails_the_run_before_the_script_starts(env: dict[str, str], project: Path) -> None:
    script = write_script(project, "t.py", "open('trained', 'w').write('yes')\n")
    proc = start(env, project, script, checkpoint_s3={"uri": "s3://B/x"})
    assert proc.returncode == 4 and "not a valid bucket name" in proc.stderr, proc.stderr
    assert not (project / "trained").exists()


# ---- what is not finished is never uploaded as good -----------------------------------------------

# Writes in place: half the file, a pause far longer than the quiet period, then the rest.
NON_ATOMIC = """
    import os, time
    from runctl import training as rt
    path = rt.checkpoint_dir() / "ckpt.pt"
    with open(path, "wb") as f:
        f.write(b"a" * 50000)
        f.flush()
        os.fsync(f.fileno())
        time.sleep(2.5)
        f.write(b"b" * 50000)
    with open(rt.checkpoint_dir() / "ckpt.pt.part", "wb") as f:
        f.write(b"never a checkpoint")
    time.sleep(1.0)
"""


def test_a_checkpoint_written_in_place_is_uploaded_only_once_finished(
    env: dict[str, str], project: Path, s3_server: S3Server, bucket: str
) -> None:
    run_id = started(
        env, project, write_script(project, "t.py", NON_ATOMIC), checkpoint_s3={"uri": "s3://%s" % bucket, **FAST}
    )
    state = finished(project, run_id)
    assert state["checkpoint_s3"]["phase"] == "done"
    assert [e["size"] for e in uploaded(project, run_id)] == [100000], "the half-written file was uploaded"
    (entry,) = manifest(s3_server, bucket, "", run_id)["checkpoints"]
    assert entry["name"] == "ckpt.pt" and entry["size"] == 100000
    body = s3_server.client().get_object(Bucket=bucket, Key=entry["key"])["Body"].read()
    assert body == b"a" * 50000 + b"b" * 50000
    assert s3_server.keys(bucket) == sorted(["%s/%s" % (run_id, MANIFEST), "%s/ckpt.pt" % run_id])


# ---- S3 down in the middle ------------------------------------------------------------------------

# Saves one checkpoint, then a larger one once the test says `go` (by then S3 is down), then waits for
# `end`; the uploader meanwhile keeps trying.
OUTAGE = """
    import os, time
    from runctl import training as rt
    d = rt.checkpoint_dir()
    with rt.atomic_path(d / "checkpoint_1.pt") as tmp:
        tmp.write_bytes(b"1" * 10000)
    for name, size in (("go", 0), ("end", 0)):
        deadline = time.time() + 90
        while not os.path.exists(name) and time.time() < deadline:
            time.sleep(0.05)
        if name == "go":
            with rt.atomic_path(d / "checkpoint_2.pt") as tmp:
                tmp.write_bytes(os.urandom(40 * 1024 * 1024))
"""


def test_uploads_survive_s3_going_down_mid_upload_and_coming_back(
    env: dict[str, str], project: Path, s3_server: S3Server, bucket: str
) -> None:
    mib = 1024 * 1024
    cfg = {"uri": "s3://%s/o" % bucket, "multipart_threshold": 5 * mib, "part_size": 5 * mib, "threads": 1, **FAST}
    run_id = started(env, project, write_script(project, "t.py", OUTAGE), checkpoint_s3=cfg)
    poll(lambda: uploaded(project, run_id), 30, "the first checkpoint's upload")
    state_file = run_dir(project, run_id) / "checkpoint_s3.json"
    try:
        (project / "go").touch()
        # 8 parts one at a time: the server goes down while they are on their way.
        poll(lambda: json.loads(state_file.read_text()).get("uploading") == "checkpoint_2.pt", 30, "the upload", 0.002)
        s3_server.kill()
        assert len(uploaded(project, run_id)) == 1, "the upload finished before the server went down"
        poll(
            lambda: any(
                e["event"] in ("checkpoint_upload_retry", "checkpoint_upload_failed") for e in events(project, run_id)
            ),
            30,
            "a failed attempt",
        )
    finally:
        s3_server.start()
    (project / "end").touch()
    state = finished(project, run_id, timeout=90)
    assert state["checkpoint_s3"]["phase"] == "done", state["checkpoint_s3"]
    listed = manifest(s3_server, bucket, "o", run_id)["checkpoints"]
    assert [e["name"] for e in listed] == ["checkpoint_1.pt", "checkpoint_2.pt"]
    local = project / "checkpoints" / "checkpoint_2.pt"
    second = listed[1]
    assert second["checksum"] == checksums.file_checksum(str(local), 5 * mib)
    head = s3_server.client().head_object(Bucket=bucket, Key=second["key"], ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == second["checksum"] and head["ContentLength"] == 40 * mib
    assert [e["name"] for e in uploaded(project, run_id)] == ["checkpoint_1.pt", "checkpoint_2.pt"]


def test_an_uploader_that_dies_is_started_again_and_takes_up_where_it_was(
    env: dict[str, str], project: Path, s3_server: S3Server, bucket: str
) -> None:
    script = write_script(
        project,
        "t.py",
        """
        import os, time
        from runctl import training as rt
        for n, wait in ((1, "go"), (2, None)):
            with rt.atomic_path(rt.checkpoint_dir() / ("c%d.pt" % n)) as tmp:
                tmp.write_bytes(b"%d" % n * 100)
            deadline = time.time() + 60
            while wait and not os.path.exists(wait) and time.time() < deadline:
                time.sleep(0.05)
        """,
    )
    run_id = started(env, project, script, checkpoint_s3={"uri": "s3://%s/d" % bucket, **FAST})
    poll(lambda: uploaded(project, run_id), 30, "the first upload")
    state_file = run_dir(project, run_id) / "checkpoint_s3.json"
    first = json.loads(state_file.read_text())["pid"]
    os.kill(first, signal.SIGKILL)
    poll(lambda: json.loads(state_file.read_text())["pid"] != first, 30, "a new uploader")
    (project / "go").touch()
    state = finished(project, run_id)
    assert state["checkpoint_s3"]["uploaded"] == 2 and state["checkpoint_s3"]["phase"] == "done"
    assert "checkpoint_uploader_restarted" in [e["event"] for e in events(project, run_id)]
    # c1 was not uploaded again, and the manifest lists each once.
    assert [e["name"] for e in uploaded(project, run_id)] == ["c1.pt", "c2.pt"]
    assert [e["name"] for e in manifest(s3_server, bucket, "d", run_id)["checkpoints"]] == ["c1.pt", "c2.pt"]


# ---- credentials ----------------------------------------------------------------------------------


def test_a_wrong_secret_fails_the_run_before_the_script_starts(
    env: dict[str, str], project: Path, s3_server: S3Server, bucket: str
) -> None:
    script = write_script(project, "t.py", "open('trained', 'w').write('yes')\n")
    wrong = dict(env, AWS_SECRET_ACCESS_KEY="not-the-secret")
    proc = start(wrong, project, script, checkpoint_s3={"uri": "s3://%s/x" % bucket})
    assert proc.returncode == 4, proc.stderr
    assert "SignatureDoesNotMatch" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    run_id = proc.stdout.strip().splitlines()[-1]
    state = status_file(project, run_id)
    assert state["status"] == "failed" and state.get("checkpoint_s3_error") is True
    assert "rejected the credentials" in state["termination_message"]
    assert not (project / "trained").exists(), "the script ran without a usable bucket"
    assert s3_server.keys(bucket) == []


def test_credentials_forwarded_in_a_private_file_are_used_and_nothing_else(
    env: dict[str, str], project: Path, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    creds = tmp_path / "aws_credentials"
    creds.write_text(
        "[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n" % (s3server.ACCESS_KEY, s3server.SECRET_KEY)
    )
    creds.chmod(0o600)
    # The agent's own variables carry a wrong secret and no endpoint: the file and the spec win.
    agent_env = dict(env, AWS_SECRET_ACCESS_KEY="not-the-secret")
    del agent_env["AWS_ENDPOINT_URL"]
    cfg = {"uri": "s3://%s/f" % bucket, "credentials_file": str(creds), "endpoint_url": s3_server.endpoint, **FAST}
    script = write_script(
        project, "t.py", "from runctl import training as rt\nrt.atomic_write(rt.checkpoint_dir() / 'a.pt', b'a')\n"
    )
    run_id = started(agent_env, project, script, checkpoint_s3=cfg)
    assert finished(project, run_id)["checkpoint_s3"]["uploaded"] == 1
    assert s3_server.keys(bucket, "f/%s/a" % run_id) == ["f/%s/a.pt" % run_id]


def test_check_s3_access_says_what_is_wrong(s3_server: S3Server, bucket: str) -> None:
    good = s3_server.env()
    check_s3_access("s3://%s/prefix" % bucket, good, write=True)
    assert s3_server.keys(bucket) == [], "the write probe is removed"
    with pytest.raises(HostError) as wrong:
        check_s3_access("s3://%s/prefix" % bucket, dict(good, AWS_SECRET_ACCESS_KEY="nope"), where="host1")
    assert wrong.value.exit_code == 4
    assert "from host1" in wrong.value.message and "SignatureDoesNotMatch" in wrong.value.message
    assert wrong.value.hint and "credentials" in wrong.value.hint
    with pytest.raises(HostError) as missing:
        check_s3_access("s3://no-such-bucket-rct/prefix", good)
    assert "does not exist" in missing.value.message and "aws s3 mb s3://no-such-bucket-rct" in (
        missing.value.hint or ""
    )


# ---- the end-of-run proof -------------------------------------------------------------------------


def test_the_final_checkpoints_verified_upload_is_the_proof_for_the_end_of_run_step(
    env: dict[str, str], project: Path, s3_server: S3Server, bucket: str
) -> None:
    script = write_script(
        project,
        "t.py",
        """
        from runctl import training as rt
        for epoch in (1, 2):
            rt.report(step=epoch, epoch=epoch, loss=1.0 / epoch)
            with rt.atomic_path(rt.checkpoint_dir() / ("checkpoint_epoch_%d.pt" % epoch)) as tmp:
                tmp.write_bytes(b"e" * 1000 * epoch)
        """,
    )
    record = project / "on_end_ran"
    on_end = {
        "command": [sys.executable, "-c", "open(%r, 'w').write('ran')" % str(record)],
        "after": ["checkpoints_in_s3"],
    }
    run_id = started(env, project, script, checkpoint_s3={"uri": "s3://%s/e" % bucket, **FAST}, on_end=on_end)
    poll(record.exists, 60, "the end-of-run command")
    result = json.loads((run_dir(project, run_id) / "on_end.json").read_text())
    proof = result["proof"]["checkpoints_in_s3"]
    assert proof["held"] is True and proof["missing"] == []
    assert sorted(v["name"] for v in proof["verified"]) == ["checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt"]
    # The command ran only after the final checkpoint was verified.
    names = [e["event"] for e in events(project, run_id)]
    assert names.index("checkpoint_uploads_done") < names.index("on_end_started")
