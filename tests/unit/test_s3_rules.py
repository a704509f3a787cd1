"""The pure rules of S3 checkpoints: URIs and keys, checksums S3 keeps, the manifest, what a checkpoint
is, which files are still being written, and the end-of-run proof read from the uploader's state."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runctl.agent import uploads
from runctl.core import checkpoints
from runctl.core.fsutil import is_partial
from runctl.storage import checksums, objects
from runctl.storage.uploader import Steps, open_for_writing


def test_uris_name_a_bucket_and_a_prefix_and_bad_ones_say_how_to_fix_them() -> None:
    assert objects.parse_uri("s3://my-bucket/a/b/") == ("my-bucket", "a/b")
    assert objects.parse_uri("s3://my-bucket") == ("my-bucket", "")
    for bad, why in (
        ("my-bucket/x", "not an s3:// URI"),
        ("s3://b/x", "not a valid bucket name"),
        ("s3://My_Bucket/x", "not a valid bucket name"),
        ("s3://bucket/a//b", "empty, '.' or '..' part"),
        ("s3://bucket/a/../b", "empty, '.' or '..' part"),
    ):
        with pytest.raises(objects.BadUri, match=why) as raised:
            objects.parse_uri(bad)
        assert "s3://my-bucket/checkpoints" in str(raised.value)


def test_keys_put_each_run_under_its_id_with_a_manifest_no_checkpoint_can_be_named() -> None:
    assert objects.object_key("ck", "r1", "hf-200/model.safetensors") == "ck/r1/hf-200/model.safetensors"
    assert objects.object_key("", "r1", "a.pt") == "r1/a.pt"
    assert objects.manifest_key("ck", "r1") == "ck/r1/.runctl-manifest.json"
    assert is_partial(objects.MANIFEST_NAME)


def test_the_checksums_are_those_s3_keeps(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 + 17)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    whole = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert checksums.file_checksum(str(path), None) == whole == checksums.sha256_b64(data)
    parts = [data[i : i + 1024] for i in range(0, len(data), 1024)]
    expected = base64.b64encode(hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest())
    assert checksums.file_checksum(str(path), 1024) == expected.decode() + "-4"
    assert checksums.part_count(len(data), 1024) == 4 and checksums.part_count(0, 1024) == 1
    # A part size that would need more than 10,000 parts grows until it does not.
    huge = 200 * 1024**3
    assert checksums.part_count(huge, checksums.part_size_for(huge, 8 * 1024**2)) <= checksums.MAX_PARTS


def test_the_manifest_lists_checkpoints_in_the_order_written_and_names_the_newest() -> None:
    manifest = objects.new_manifest("bkt", "ck", "r1")
    # The newest was uploaded first (it jumps the queue); the manifest still orders by write time.
    manifest = objects.record(manifest, {"name": "c3.pt", "mtime": 30.0, "size": 3})
    manifest = objects.record(manifest, {"name": "c1.pt", "mtime": 10.0, "size": 1})
    manifest = objects.record(manifest, {"name": "c2.pt", "mtime": 20.0, "size": 2})
    assert [e["name"] for e in manifest["checkpoints"]] == ["c1.pt", "c2.pt", "c3.pt"]
    assert manifest["latest"] == "c3.pt" and manifest["prefix"] == "ck/r1/"
    again = objects.record(manifest, {"name": "c2.pt", "mtime": 20.0, "size": 22})
    assert [e["size"] for e in again["checkpoints"]] == [1, 22, 3]
    assert objects.find_entry(again, "c2.pt") == {"name": "c2.pt", "mtime": 20.0, "size": 22}


def test_a_checkpoint_is_a_file_or_a_whole_directory_never_a_temp_or_part_file(tmp_path: Path) -> None:
    project = tmp_path / "p"
    ckpt = project / "checkpoints"
    (ckpt / "hf-200").mkdir(parents=True)
    (ckpt / "hf-200" / "config.json").write_text("{}")
    (ckpt / "hf-200" / "model.safetensors").write_bytes(b"w" * 10)
    (ckpt / "epoch_1.pt").write_bytes(b"e" * 5)
    (ckpt / "epoch_2.pt.part").write_bytes(b"half")
    (ckpt / ".epoch_3.tmp-1-2.pt").write_bytes(b"temp")
    (project / "out").mkdir()
    (project / "out" / "ckpt.pt").write_bytes(b"o")
    units = checkpoints.units(checkpoints.find(str(project), str(ckpt)))
    assert sorted(units) == ["epoch_1.pt", "hf-200", "out/ckpt.pt"]
    assert units["hf-200"]["is_dir"] and units["hf-200"]["size"] == 12
    assert [f["path"] for f in units["hf-200"]["files"]] == ["hf-200/config.json", "hf-200/model.safetensors"]
    assert not units["epoch_1.pt"]["is_dir"] and units["out/ckpt.pt"]["base"] == checkpoints.BASE_PROJECT
    assert is_partial("model.PART") and is_partial("x.partial") and not is_partial("partition.pt")


def test_a_file_open_for_writing_is_seen_as_such_and_one_open_for_reading_is_not(tmp_path: Path) -> None:
    written, read = tmp_path / "w.pt", tmp_path / "r.pt"
    read.write_bytes(b"r")
    code = "import sys, time\nw = open(sys.argv[1], 'wb'); r = open(sys.argv[2], 'rb')\n"
    code += "print('open', flush=True)\ntime.sleep(30)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, str(written), str(read)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        assert open_for_writing([str(written), str(read)]) == [str(written)]
    finally:
        holder.kill()
        holder.wait()
    assert open_for_writing([str(written)]) == []


def test_a_checkpoints_step_and_epoch_come_from_the_metrics_reported_before_it(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    lines = [{"t": 10.0, "step": 100, "epoch": 1}, {"t": 20.0, "step": 200, "epoch": 1}, {"t": 30.0, "step": 300}]
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    steps = Steps(str(metrics))
    assert steps.at(25.0, "ckpt.pt") == (200, 1)
    assert steps.at(30.0, "ckpt.pt") == (300, 1)
    assert Steps(str(tmp_path / "none.jsonl")).at(5.0, "epoch=3-step=1500.ckpt") == (1500, 3)


def test_the_helpers_atomic_writes_say_which_step_a_checkpoint_holds_even_in_a_tight_loop(tmp_path: Path) -> None:
    """A loop that reports the next step the instant after saving beats any mtime comparison (the
    kernel stamps files from a coarse clock): the helper notes the step as it commits the file."""
    run_dir, ckpts = tmp_path / "run", tmp_path / "ckpts"
    run_dir.mkdir()
    script = (
        "from runctl import training as rt\n"
        "d = rt.checkpoint_dir()\n"
        "for step in range(1, 201):\n"
        "    rt.report(step=step, epoch=step // 50)\n"
        "    rt.atomic_write(d / ('ckpt_%d.pt' % step), b'x')\n"
        "rt.atomic_write(d / 'last.pt', b'y')\n"
    )
    env = {
        **os.environ,
        "RUNCTL_RUN_DIR": str(run_dir),
        "RUNCTL_METRICS_FILE": str(run_dir / "metrics.jsonl"),
        "RUNCTL_CHECKPOINT_DIR": str(ckpts),
    }
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    steps = Steps(str(run_dir / "metrics.jsonl"), str(run_dir / "checkpoints_saved.jsonl"))
    for step in range(1, 201):
        path = ckpts / ("ckpt_%d.pt" % step)
        assert steps.at(path.stat().st_mtime, path.name, str(path)) == (step, step // 50)
    last = ckpts / "last.pt"
    assert steps.at(last.stat().st_mtime, last.name, str(last)) == (200, 4)


def _state(run_dir: Path, phase: str, verified: dict[str, object]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {"phase": phase, "since": 0, "uri": "s3://bkt/ck", "verified": verified, "message": "m"}
    (run_dir / "checkpoint_s3.json").write_text(json.dumps(state))


def test_the_s3_proof_holds_only_when_every_checkpoint_on_disk_is_verified_as_it_is(tmp_path: Path) -> None:
    project, run = tmp_path / "p", tmp_path / "p" / ".runctl" / "runs" / "r1"
    ckpt = project / "checkpoints"
    ckpt.mkdir(parents=True)
    proof, reason = uploads.proof(str(run), str(project), str(ckpt), None)
    assert not proof["held"] and "no checkpoint upload to S3" in reason
    (ckpt / "c1.pt").write_bytes(b"1" * 10)
    unit = checkpoints.units(checkpoints.find(str(project), str(ckpt)))["c1.pt"]
    good = {"c1.pt": {"signature": checkpoints.unit_signature(unit), "key": "ck/r1/c1.pt", "checksum": "x", "size": 10}}
    _state(run, "final", good)
    assert "not finished" in uploads.proof(str(run), str(project), str(ckpt), None)[1]
    _state(run, "done", good)
    proof, reason = uploads.proof(str(run), str(project), str(ckpt), None)
    assert reason == "" and proof["held"] and proof["verified"][0]["key"] == "ck/r1/c1.pt"
    # A checkpoint changed (or written) after its upload is not proven.
    time.sleep(0.01)
    (ckpt / "c1.pt").write_bytes(b"2" * 11)
    (ckpt / "c2.pt").write_bytes(b"3")
    proof, reason = uploads.proof(str(run), str(project), str(ckpt), None)
    assert not proof["held"] and proof["missing"] == ["c1.pt", "c2.pt"] and "c1.pt, c2.pt" in reason
