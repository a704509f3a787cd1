"""Checkpoints in S3 from the controller: `checkpoint list/latest/download/cleanup` over a RUN_ID or
an s3:// prefix, and `--resume` resolved to one verified checkpoint. A real SeaweedFS, real
`runctl` processes; one run's manifest is written by its real uploader, the others are written into
the bucket here (real objects with the checksums S3 keeps) to set up several runs at once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runctl.core.errors import HostError, UsageError
from runctl.storage import checksums, objects, s3
from tests.integration.test_bad_input import check_clean_failure, runs_in_store
from tests.integration.test_s3_checkpoints import FAST, finished, started
from tests.support.runs import kill_leftover_runs, poll, run_dir, status_file, write_script
from tests.support.s3server import S3Server, aws_only_at

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _cleanup(project: Path) -> Iterator[None]:
    yield
    kill_leftover_runs(project)


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.make_bucket()


@pytest.fixture
def env(runctl_home: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This machine's AWS settings point at SeaweedFS only (for `runctl` processes and in-process calls)."""
    return aws_only_at(s3_server, monkeypatch)


def put_checkpoint(client: Any, bucket: str, prefix: str, run_id: str, name: str, data: bytes, t: float) -> dict:
    """One checkpoint object as the uploader leaves it (SHA-256 kept by S3), and its manifest entry."""
    key = objects.object_key(prefix, run_id, name)
    checksum = checksums.sha256_b64(data)
    client.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum)
    return {
        "name": name, "size": len(data), "mtime": t, "time": t + 1, "step": int(t), "epoch": 1,
        "checksum_algorithm": "SHA256", "verified": True, "key": key, "checksum": checksum,
        "parts": 1, "part_size": None, "sha256": None,
    }  # fmt: skip


def put_run(client: Any, bucket: str, prefix: str, run_id: str, names: dict[str, float]) -> dict:
    manifest = objects.new_manifest(bucket, prefix, run_id)
    for name, t in names.items():
        manifest = objects.record(manifest, put_checkpoint(client, bucket, prefix, run_id, name, name.encode() * 10, t))
    s3.put_json(client, bucket, objects.manifest_key(prefix, run_id), manifest)
    return manifest


def names_in(client: Any, bucket: str, prefix: str, run_id: str) -> list[str]:
    body = client.get_object(Bucket=bucket, Key=objects.manifest_key(prefix, run_id))["Body"].read()
    return [e["name"] for e in json.loads(body)["checkpoints"]]


# ---- a real run's manifest: list, latest, download, cleanup ---------------------------------------

SAVES = """
    import os, time
    from runctl import training as rt
    d = rt.checkpoint_dir()
    for step in (100, 200):
        rt.report(step=step, epoch=step // 100, loss=1.0 / step)
        with rt.atomic_path(d / ("ckpt_%d.pt" % step)) as tmp:
            tmp.write_bytes(b"%d" % step * 3000)
    rt.report(step=300, epoch=3, loss=0.001)
    with rt.atomic_path(d / "hf-300") as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text('{"layers": 2}')
        (tmp / "model.safetensors").write_bytes(b"w" * 7000)
    deadline = time.time() + 60
    while not os.path.exists("go") and time.time() < deadline:
        time.sleep(0.05)
    rt.report(step=400, epoch=4, loss=0.0005)
    rt.atomic_write(d / "ckpt_400.pt", b"4" * 100)
"""


def test_a_real_runs_checkpoints_are_listed_downloaded_verified_and_cleaned_up(
    cli, env: dict[str, str], project: Path, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    uri = "s3://%s/team" % bucket
    run_id = started(env, project, write_script(project, "t.py", SAVES), checkpoint_s3={"uri": uri, **FAST})
    uploads = run_dir(project, run_id) / "checkpoint_s3.json"
    poll(lambda: json.loads(uploads.read_text()).get("uploaded") == 3, 30, "three verified uploads")
    client = s3_server.client()

    by_run = cli("checkpoint", "list", run_id, "-o", "json")
    assert by_run.code == 0, by_run.err
    (run,) = by_run.json["runs"]
    assert run["run_id"] == run_id and run["latest"] == "hf-300"
    assert [c["name"] for c in run["checkpoints"]] == ["hf-300", "ckpt_200.pt", "ckpt_100.pt"]
    assert [c["step"] for c in run["checkpoints"]] == [300, 200, 100]
    by_prefix = cli("checkpoint", "list", uri, "-o", "json")
    assert by_prefix.code == 0 and by_prefix.json["runs"] == by_run.json["runs"]
    text = cli("checkpoint", "list", uri)
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert lines[0].split() == ["RUN", "NAME", "SIZE", "STEP", "EPOCH", "WRITTEN"]
    assert lines[1].split()[:3] == ["*", run_id, "hf-300"] and lines[3].split()[:2] == [run_id, "ckpt_100.pt"]

    for target in (run_id, uri):
        newest = cli("checkpoint", "latest", target)
        assert newest.code == 0 and newest.out == "s3://%s/team/%s/hf-300/\n" % (bucket, run_id), newest.err
        assert "step 300" in newest.err
    assert cli("checkpoint", "latest", uri, "-o", "json").json["name"] == "hf-300"

    dest = tmp_path / "got"
    pulled = cli("checkpoint", "download", run_id, "--dest", str(dest))
    assert pulled.code == 0, pulled.err
    local = project / "checkpoints"
    assert sorted(p.name for p in dest.iterdir()) == ["ckpt_100.pt", "ckpt_200.pt", "hf-300"]
    assert (dest / "ckpt_200.pt").read_bytes() == (local / "ckpt_200.pt").read_bytes()
    assert (dest / "hf-300" / "model.safetensors").read_bytes() == b"w" * 7000
    one = tmp_path / "one"
    assert cli("checkpoint", "download", run_id, "--latest", "--dest", str(one)).code == 0
    assert [p.name for p in one.iterdir()] == ["hf-300"]
    again = cli("checkpoint", "download", run_id, "--name", "ckpt_100.pt", "--dest", str(dest))
    assert again.code == 0, "a verified copy already there is kept, not refused"

    # An object changed in the bucket after its upload: the download is refused and leaves nothing.
    key = "team/%s/ckpt_200.pt" % run_id
    client.put_object(Bucket=bucket, Key=key, Body=b"X" * 9000)
    bad = tmp_path / "bad"
    refused = cli("checkpoint", "download", run_id, "--name", "ckpt_200.pt", "--dest", str(bad))
    check_clean_failure(refused, 4, ("does not match its manifest", "nothing kept"))
    assert not bad.exists() or list(bad.iterdir()) == []

    # cleanup of the live run: the dry run changes nothing, then the two older go and the manifest
    # follows; the run's uploader, still going, takes that up and never lists them again.
    before = s3_server.keys(bucket)
    dry = cli("checkpoint", "cleanup", run_id, "--keep", "1", "--dry-run")
    assert dry.code == 0, dry.err
    assert sorted(dry.out.split("\n")[:-1]) == [
        "would remove %s/ckpt_100.pt" % run_id,
        "would remove %s/ckpt_200.pt" % run_id,
    ]
    assert s3_server.keys(bucket) == before
    done = cli("checkpoint", "cleanup", run_id, "--keep", "1")
    assert done.code == 0, done.err
    assert names_in(client, bucket, "team", run_id) == ["hf-300"]
    (project / "go").touch()
    assert finished(project, run_id)["checkpoint_s3"]["uploaded"] == 4
    assert names_in(client, bucket, "team", run_id) == ["hf-300", "ckpt_400.pt"]
    closed = json.loads(client.get_object(Bucket=bucket, Key="team/%s/.runctl-manifest.json" % run_id)["Body"].read())
    assert closed["ended_at"] and closed["latest"] == "ckpt_400.pt", "the uploader's final pass closes the manifest"
    assert s3_server.keys(bucket, "team/") == sorted(
        "team/%s/%s" % (run_id, k)
        for k in (".runctl-manifest.json", "ckpt_400.pt", "hf-300/config.json", "hf-300/model.safetensors")
    )


# ---- several runs in one prefix -------------------------------------------------------------------


def test_latest_across_runs_passes_over_what_s3_no_longer_holds_as_verified(
    cli, env: dict[str, str], s3_server: S3Server, bucket: str
) -> None:
    client = s3_server.client()
    put_run(client, bucket, "p", "aaaa0001", {"a1.pt": 10, "a2.pt": 40})
    put_run(client, bucket, "p", "bbbb0002", {"b1.pt": 20, "b2.pt": 30})
    newest = cli("checkpoint", "latest", "s3://%s/p" % bucket, "-o", "json")
    assert newest.code == 0 and (newest.json["run_id"], newest.json["name"]) == ("aaaa0001", "a2.pt"), newest.err
    client.delete_object(Bucket=bucket, Key="p/aaaa0001/a2.pt")  # gone behind runctl's back
    passed = cli("checkpoint", "latest", "s3://%s/p" % bucket)
    assert passed.code == 0 and passed.out == "s3://%s/p/bbbb0002/b2.pt\n" % bucket
    assert "passed over aaaa0001/a2.pt" in passed.err and "is gone" in passed.err


def test_resume_resolves_latest_names_runs_and_uris_to_one_verified_checkpoint(
    env: dict[str, str], s3_server: S3Server, bucket: str
) -> None:
    from runctl.s3checkpoints import resolve_resume
    from runctl.store import Store

    client = s3_server.client()
    put_run(client, bucket, "p", "aaaa0001", {"shared.pt": 10, "a2.pt": 20})
    put_run(client, bucket, "p", "bbbb0002", {"shared.pt": 30, "b2.pt": 50})
    client.put_object(Bucket=bucket, Key="p/bbbb0002/notes.txt", Body=b"user's own")
    home = {"uri": "s3://%s/p" % bucket}
    store = Store()

    latest = resolve_resume("latest", home, store)
    assert latest["uri"] == "s3://%s/p/bbbb0002/b2.pt" % bucket and latest["run_id"] == "bbbb0002"
    assert latest["bucket"] == bucket and latest["entry"]["step"] == 50 and latest["entry"]["checksum"]
    assert latest["endpoint_url"] == s3_server.endpoint and latest["region"] is None
    assert resolve_resume("aaaa0001", home, store)["entry"]["name"] == "a2.pt"
    assert resolve_resume("aaaa0001/shared.pt", home, store)["uri"] == "s3://%s/p/aaaa0001/shared.pt" % bucket
    assert resolve_resume("b2.pt", home, store)["run_id"] == "bbbb0002"
    with pytest.raises(UsageError) as ambiguous:
        resolve_resume("shared.pt", home, store)
    assert "bbbb0002/shared.pt, aaaa0001/shared.pt" in ambiguous.value.message
    assert "RUN_ID/NAME" in (ambiguous.value.hint or "")
    in_manifest = resolve_resume("s3://%s/p/aaaa0001/a2.pt" % bucket, None, store)
    assert in_manifest["run_id"] == "aaaa0001" and in_manifest["entry"]["checksum"]
    plain = resolve_resume("s3://%s/p/bbbb0002/notes.txt" % bucket, None, store)
    assert plain["run_id"] is None and plain["entry"] == {
        "name": "notes.txt", "size": 10, "key": "p/bbbb0002/notes.txt", "etag": plain["entry"]["etag"]
    }  # fmt: skip
    # Changed in S3 since its upload: never resumed from.
    client.put_object(Bucket=bucket, Key="p/bbbb0002/b2.pt", Body=b"Z" * 50)
    with pytest.raises(HostError) as changed:
        resolve_resume("b2.pt", home, store)
    assert "no longer what was verified" in changed.value.message
    assert resolve_resume("latest", home, store)["entry"]["name"] == "shared.pt"  # b's older one
    with pytest.raises(UsageError) as none:
        resolve_resume("latest", {"uri": "s3://%s/empty" % bucket}, store)
    assert "no verified checkpoint in s3://%s/empty" % bucket in none.value.message


WAIT_FOR_GO = """
    import os, time
    deadline = time.time() + 60
    while not os.path.exists("go") and time.time() < deadline:
        time.sleep(0.05)
"""


def test_cleanup_keeps_what_a_live_run_resumed_from_and_never_touches_other_objects(
    cli, env: dict[str, str], project: Path, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    client = s3_server.client()
    put_run(client, bucket, "p", "aaaa0001", {"a1.pt": 10, "a2.pt": 20, "a3.pt": 30})
    put_run(client, bucket, "p", "bbbb0002", {"b1.pt": 40, "b2.pt": 50})
    user = ["p/readme.txt", "p/aaaa0001/notes.txt", "p/aaaa0001/a1.pt.backup"]
    for key in user:
        client.put_object(Bucket=bucket, Key=key, Body=b"the user's")
    # Another machine's run resumed from b1.pt; its marker says nothing of an end: it counts as live.
    s3.put_json(
        client, bucket, "p/bbbb0002/.runctl-resumed-by/cafe0003.json",
        {"format": 1, "run_id": "cafe0003", "source_run_id": "bbbb0002", "name": "b1.pt", "ended_at": None},
    )  # fmt: skip
    # A run started here resumes from a1.pt (the real CLI: resolution, the marker, the store link).
    script = write_script(project, "wait.py", WAIT_FOR_GO)
    resumed = cli("local", "train", script, "--resume", "s3://%s/p/aaaa0001/a1.pt" % bucket)
    assert resumed.code == 0, resumed.err
    new_run = resumed.out.strip()
    marker = "p/aaaa0001/.runctl-resumed-by/%s.json" % new_run
    assert json.loads(client.get_object(Bucket=bucket, Key=marker)["Body"].read())["name"] == "a1.pt"
    shown = cli("runs", "status", new_run)
    assert "resumed from aaaa0001/a1.pt (step 10)" in shown.out, shown.out
    assert cli("runs", "status", new_run, "-o", "json").json["resumed_from"]["run_id"] == "aaaa0001"

    before = s3_server.keys(bucket)
    dry = cli("checkpoint", "cleanup", "s3://%s/p" % bucket, "--keep", "1", "--dry-run", "-o", "json")
    assert dry.code == 0, dry.err
    plan = {r["run_id"]: r for r in dry.json["runs"]}
    assert plan["aaaa0001"]["remove"] == ["a2.pt"] and plan["aaaa0001"]["protected"] == {"a1.pt": new_run}
    assert plan["bbbb0002"]["remove"] == [] and plan["bbbb0002"]["protected"] == {"b1.pt": "cafe0003"}
    assert s3_server.keys(bucket) == before, "a dry run changed the bucket"

    done = cli("checkpoint", "cleanup", "s3://%s/p" % bucket, "--keep", "1")
    assert done.code == 0, done.err
    assert done.out == "removed aaaa0001/a2.pt\n"
    assert "kept aaaa0001/a1.pt: run %s resumed from it" % new_run in done.err
    assert names_in(client, bucket, "p", "aaaa0001") == ["a1.pt", "a3.pt"]
    assert set(before) - set(s3_server.keys(bucket)) == {"p/aaaa0001/a2.pt"}
    assert all(k in s3_server.keys(bucket) for k in user)

    # Another machine (a store of its own, without the run) learns of the live resume from the marker.
    elsewhere = {"RUNCTL_HOME": str(tmp_path / "elsewhere")}
    far = cli("checkpoint", "cleanup", "s3://%s/p" % bucket, "--keep", "1", "--dry-run", "-o", "json", env=elsewhere)
    assert far.code == 0 and far.json["runs"][0]["protected"] == {"a1.pt": new_run}, far.out

    # Once the resumed run has ended (the controller sees it and says so in the marker), what it
    # resumed from may go, from any machine.
    (project / "go").touch()
    poll(lambda: status_file(project, new_run).get("status") == "completed", 30, "the resumed run's end")
    assert cli("runs", "status", new_run).code == 0
    assert json.loads(client.get_object(Bucket=bucket, Key=marker)["Body"].read())["ended_at"]
    later = cli("checkpoint", "cleanup", "s3://%s/p" % bucket, "--keep", "1", env=elsewhere)
    assert later.code == 0 and later.out == "removed aaaa0001/a1.pt\n", later.err
    assert names_in(client, bucket, "p", "bbbb0002") == ["b1.pt", "b2.pt"], "the other machine's live run"
    assert all(k in s3_server.keys(bucket) for k in user)


# ---- bad input ------------------------------------------------------------------------------------

NO_BUCKET = "rct-no-such-bucket-%d" % os.getpid()
BAD: dict[str, tuple[tuple[str, ...], int, tuple[str, ...]]] = {
    "list-bad-uri": (("checkpoint", "list", "s3://B/x"), 2, ("not a valid bucket name", "s3://my-bucket")),
    "list-missing-bucket": (("checkpoint", "list", "s3://%s/x" % NO_BUCKET), 4, ("does not exist", "aws s3 mb")),
    "latest-unknown-run": (("checkpoint", "latest", "deadbeef"), 2, ("no run with id 'deadbeef'", "runs list")),
    "latest-no-checkpoints": (("checkpoint", "latest", "s3://{bucket}/empty"), 2, ("no verified checkpoint", "list")),
    "cleanup-keep-0": (("checkpoint", "cleanup", "s3://{bucket}/p", "--keep", "0"), 2, ("--keep must be 1 or more",)),
    "cleanup-unknown-run": (("checkpoint", "cleanup", "deadbeef", "--keep", "1"), 2, ("deadbeef", "runs list")),
    "cleanup-missing-bucket": (
        ("checkpoint", "cleanup", "s3://%s/p" % NO_BUCKET, "--keep", "2"),
        4,
        ("does not exist",),
    ),
    "download-latest-and-name": (
        ("checkpoint", "download", "deadbeef", "--latest", "--name", "x"),
        2,
        ("--latest and --name", "keep one"),
    ),
    "resume-latest-without-prefix": (
        ("local", "train", "train_stub.py", "--resume", "latest"),
        2,
        ("--checkpoint-s3",),
    ),
    "resume-and-resume-from": (
        ("local", "train", "train_stub.py", "--resume", "latest", "--resume-from", "c.pt"),
        2,
        ("--resume-from",),
    ),
    "resume-bad-uri": (("local", "train", "train_stub.py", "--resume", "s3://x"), 2, ("not a valid bucket name",)),
    "resume-missing-object": (
        ("local", "train", "train_stub.py", "--resume", "s3://{bucket}/p/nope.pt"),
        2,
        ("no object", "checkpoint list"),
    ),
    "resume-missing-bucket": (
        ("local", "train", "train_stub.py", "--resume", "s3://%s/k.pt" % NO_BUCKET),
        4,
        ("does not exist",),
    ),
    "resume-unknown-run": (("local", "train", "train_stub.py", "--resume", "deadbeef/c.pt"), 2, ("no run",)),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoint_and_resume_input_fails_cleanly_and_changes_nothing(
    cli, env: dict[str, str], project: Path, runctl_home: Path, s3_server: S3Server, bucket: str, case: str
) -> None:
    client = s3_server.client()
    put_run(client, bucket, "p", "aaaa0001", {"a1.pt": 10, "a2.pt": 20})
    before = s3_server.keys(bucket)
    args, code, words = BAD[case]
    started_at = time.monotonic()
    result = cli(*(a.format(bucket=bucket) for a in args))
    check_clean_failure(result, code, tuple(w.format(bucket=bucket) for w in words))
    assert time.monotonic() - started_at < 20, "a refusal should not wait on retries"
    assert s3_server.keys(bucket) == before
    assert runs_in_store(runctl_home) == 0 and not (project / ".runctl").exists()


def test_a_multipart_checkpoint_downloads_in_parallel_ranges_and_is_checked_by_its_composite_checksum(
    env: dict[str, str], s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    from runctl.storage import catalog

    mib = 1024 * 1024
    local = tmp_path / "big.pt"
    local.write_bytes(os.urandom(13 * mib + 77))
    client = s3_server.client()
    sent = s3.upload_file(client, bucket, "p/r1/big.pt", str(local), threshold=5 * mib, part_size=5 * mib)
    assert sent["parts"] == 3 and sent["checksum"].endswith("-3")
    entry = dict(sent, name="big.pt")
    # Ranges of 4 MiB, not the parts' 5: the check is over the whole file, whatever the ranges were.
    got = catalog.download_entry(client, bucket, entry, str(tmp_path / "dl"), threads=4, range_size=4 * mib)
    assert Path(got).read_bytes() == local.read_bytes()
    damaged = bytearray(local.read_bytes())
    damaged[7 * mib] ^= 0xFF
    client.put_object(Bucket=bucket, Key="p/r1/big.pt", Body=bytes(damaged))
    with pytest.raises(catalog.NotVerified, match="does not match its manifest entry: SHA-256"):
        catalog.download_entry(client, bucket, entry, str(tmp_path / "dl2"), threads=4, range_size=4 * mib)
    assert not (tmp_path / "dl2").exists() or list((tmp_path / "dl2").iterdir()) == []
