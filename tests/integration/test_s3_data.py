"""`--data-s3`: the objects under a prefix in the run's data dir before training, skipped when unchanged.

A real SeaweedFS and real runs: the first run downloads, an unchanged second run fetches nothing, a
changed object is fetched again; hostile key names land inside the data dir or not at all; a
missing bucket or an empty prefix is refused before anything runs (by the controller, exit 2, or,
when only the host can tell, by the host: a failed run, exit 4, the script never started).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runctl.storage.fetcher import DATA_INDEX, DataFetch
from tests.integration.test_bad_input import check_clean_failure, runs_in_store
from tests.integration.test_s3_checkpoints import start
from tests.integration.test_s3_resume import env  # noqa: F401 - the fixture
from tests.integration.test_s3_ssh import wheelhouse  # noqa: F401 - the session fixture
from tests.integration.test_s3_wire import bare_host, user_env  # noqa: F401 - bare_host: the fixture
from tests.integration.test_ssh import SshEnv, make_project, remote_project
from tests.support.runs import events, kill_leftover_runs, poll, run_dir, status_file, write_script
from tests.support.s3server import S3Server
from tests.support.sshhosts import SshTestHost

LIST_DATA = """
    import hashlib, os
    root = os.environ["RUNCTL_DATA_DIR"]
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest()[:12]
            print("data file %r %s" % (os.path.relpath(path, root), digest))
    print("data dir", root)
"""
OBJECTS = {
    "train/part-0.bin": os.urandom(300_000),
    "train/part-1.bin": os.urandom(1000),
    "with space.txt": b"spaces",
    "-leading-dash.txt": b"dash",
    "x/..not-a-parent": b"dots in a name",
}


@pytest.fixture
def local_project(project: Path) -> Iterator[Path]:
    yield project
    kill_leftover_runs(project)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def put_all(s3: S3Server, bucket: str, prefix: str, objects: dict[str, bytes]) -> None:
    client = s3.client()
    for name, data in objects.items():
        client.put_object(Bucket=bucket, Key=prefix + name, Body=data)


def log_of(project: Path, run_id: str) -> str:
    return (run_dir(project, run_id) / "training.log").read_text()


def train(cli: Any, script: str, *flags: str) -> str:
    done = cli("local", "train", script, "--wait", "-o", "json", *flags)
    assert done.code == 0, done.err
    return str(json.loads(done.out)["run_id"])


def test_data_is_downloaded_then_skipped_then_refetched_when_changed(
    cli: Any,
    env: dict[str, str],  # noqa: F811
    local_project: Path,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    bucket = s3_server.make_bucket()
    put_all(s3_server, bucket, "sets/mnist/", OBJECTS)
    put_all(s3_server, bucket, "sets/other/", {"not-mine.txt": b"another prefix"})
    # A link in the data dir to a place outside it: objects under it must not be written through it.
    outside = tmp_path / "outside"
    outside.mkdir()
    (local_project / "data").mkdir()
    (local_project / "data" / "link").symlink_to(outside)
    put_all(s3_server, bucket, "sets/mnist/", {"link/escaped.txt": b"never written"})
    script = write_script(local_project, "list_data.py", LIST_DATA)
    uri = "s3://%s/sets/mnist/" % bucket

    first = train(cli, script, "--data-s3", uri)
    data = local_project / "data"
    log = log_of(local_project, first)
    for name, body in OBJECTS.items():
        assert (data / name).read_bytes() == body
        assert "data file %r %s" % (name, digest(body)) in log
    assert "data dir %s" % data in log
    assert "5 to fetch" in log and "0 unchanged" in log, log
    assert "not a safe path" in log and "link/escaped.txt" in log
    assert list(outside.iterdir()) == [], "a key was written through a link out of the data dir"
    assert not (data / "not-mine.txt").exists()
    index = json.loads((data / DATA_INDEX).read_text())
    assert sorted(index["objects"]) == sorted(OBJECTS)
    assert not [p for p in data.rglob("*") if "runctl-partial" in p.name]
    before = {name: (data / name).stat().st_mtime_ns for name in OBJECTS}

    second = train(cli, script, "--data-s3", uri)
    log = log_of(local_project, second)
    assert "0 to fetch (0.0 MB), 5 unchanged" in log, log
    assert {name: (data / name).stat().st_mtime_ns for name in OBJECTS} == before

    changed = b"a new version"
    put_all(s3_server, bucket, "sets/mnist/", {"train/part-1.bin": changed})
    (data / "with space.txt").write_bytes(b"edited here")  # a local edit is not what the index says
    third = train(cli, script, "--data-s3", uri, "--checkpoint-s3", "s3://%s/ck" % bucket)
    log = log_of(local_project, third)
    assert "2 to fetch" in log and "3 unchanged" in log, log
    assert log.count("S3 transfers use boto3") == 1, "downloads and uploads share one tool interpreter"
    assert (data / "train" / "part-1.bin").read_bytes() == changed
    assert (data / "with space.txt").read_bytes() == b"spaces"
    assert "data file 'train/part-1.bin' %s" % digest(changed) in log
    assert (data / "train" / "part-0.bin").stat().st_mtime_ns == before["train/part-0.bin"]


def test_keys_that_are_not_plain_paths_are_never_placed(s3_server: S3Server, tmp_path: Path) -> None:
    """SeaweedFS refuses keys with '.' or '..' parts (real S3 stores them), so the plan is checked
    with such a listing directly: none of them gets a place, in the data dir or out of it."""
    data = tmp_path / "data"
    data.mkdir()
    fetch = DataFetch("s3://b/p/", str(data), s3_server.client())
    hostile = ["../up.txt", "a/../../up.txt", "./x", "a//b", "", "..", "a/..", DATA_INDEX, "fine/-x y.txt"]
    jobs, unsafe, same = fetch.plan([(k, {"Key": "p/" + k, "Size": 1, "ETag": '"e"'}) for k in hostile])
    assert [job[0] for job in jobs] == ["fine/-x y.txt"]
    assert jobs[0][1] == str(data / "fine" / "-x y.txt")
    assert len(unsafe) == len(hostile) - 1 and same == 0


def test_a_missing_bucket_or_empty_prefix_is_refused_before_anything_runs(
    cli: Any,
    env: dict[str, str],  # noqa: F811
    runctl_home: Path,
    local_project: Path,
    s3_server: S3Server,
) -> None:
    bucket = s3_server.make_bucket()
    put_all(s3_server, bucket, "sets/a/", {"x.txt": b"x"})
    script = write_script(local_project, "list_data.py", LIST_DATA)
    for uri, words in (
        ("s3://rct-no-such-bucket-%d/sets/" % os.getpid(), ("does not exist", "aws s3 sync DIR")),
        ("s3://%s/sets/b/" % bucket, ("no objects under s3://%s/sets/b/" % bucket, "aws s3 ls")),
    ):
        check_clean_failure(cli("local", "train", script, "--data-s3", uri), 2, words)
    assert runs_in_store(runctl_home) == 0
    assert not (local_project / "data").exists()

    # When only the host can tell (the controller's check is passed over here), the run fails there.
    missing = {"uri": "s3://%s/sets/b/" % bucket, "region": None, "endpoint_url": None}
    proc = start(env, local_project, script, data_s3=missing)
    assert proc.returncode == 4, proc.stderr
    assert "no objects under" in proc.stderr and "aws s3 ls" in proc.stderr, proc.stderr
    run_id = proc.stdout.strip().splitlines()[-1]
    state = status_file(local_project, run_id)
    assert state["status"] == "failed" and not state.get("started_at"), state
    assert "data dir" not in log_of(local_project, run_id)
    assert "started" not in [e["event"] for e in events(local_project, run_id)]


def test_a_download_that_fails_midway_fails_the_run_before_training(
    cli: Any,
    env: dict[str, str],  # noqa: F811
    local_project: Path,
    s3_server: S3Server,
) -> None:
    """S3 holds both `a` and `a/b` (a file and a dir of the same name): the data cannot be placed."""
    bucket = s3_server.make_bucket()
    put_all(s3_server, bucket, "d/", {"a": b"file", "a/b": b"under it", "c.txt": b"c"})
    script = write_script(local_project, "list_data.py", LIST_DATA)
    done = cli("local", "train", script, "--data-s3", "s3://%s/d/" % bucket, "--wait")
    assert done.code == 4, done.err
    assert "failed before training" in done.err and "data" in done.err, done.err
    run_id = done.err.split("run ", 1)[1].split()[0]
    state = status_file(local_project, run_id)
    assert state["status"] == "failed" and not state.get("started_at"), state
    log = log_of(local_project, run_id)
    assert "data from s3://%s/d: 3 object(s), 3 to fetch" % bucket in log and "data dir" not in log


def test_data_reaches_an_ssh_host_with_forwarded_credentials_that_go_after_the_run(
    sshenv: SshEnv,
    bare_host: SshTestHost,  # noqa: F811
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    """A host without any AWS configuration: --forward-aws-credentials with --data-s3 alone."""
    bucket = s3_server.make_bucket()
    put_all(s3_server, bucket, "d/", {"a.txt": b"alpha", "deep/b.txt": b"beta"})
    project = make_project(tmp_path, "s3-data", {"list_data.py": LIST_DATA})
    done = sshenv.cli(
        "ssh", "train", sshenv.dest(bare_host), "list_data.py", "--data-s3", "s3://%s/d" % bucket,
        "--forward-aws-credentials=static", "--wait", "-o", "json", cwd=project, timeout=600, env=user_env(s3_server),
    )  # fmt: skip
    assert done.code == 0, done.err
    run_id = json.loads(done.out)["run_id"]
    there = remote_project(bare_host, "s3-data")
    log = (there / ".runctl" / "runs" / run_id / "training.log").read_text()
    assert "data dir %s" % (there / "data") in log, log
    assert "data file 'deep/b.txt' %s" % digest(b"beta") in log
    assert (there / "data" / "a.txt").read_bytes() == b"alpha"
    poll(lambda: not (bare_host.home / ".runctl" / "secrets" / run_id).exists(), 10, "the credentials removed")
