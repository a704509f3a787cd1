"""Checkpoint discovery: the checkpoint dir, library defaults, --checkpoint-glob, and last_checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from runctl.core import checkpoints


def touch(root: Path, rel: str, mtime: float) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))


def test_defaults_cover_the_checkpoint_dir_lightning_logs_and_out_dirs(tmp_path: Path) -> None:
    for rel, mtime in (
        ("checkpoints/checkpoint_epoch_1.json", 100),
        ("checkpoints/sub/model.safetensors", 101),
        ("checkpoints/.hidden.pt", 102),
        ("checkpoints/ckpt.pt.tmp", 103),
        ("lightning_logs/version_0/checkpoints/epoch=2-step=48.ckpt", 104),
        ("out/ckpt.pt", 105),
        ("output/model.bin", 106),
        ("out/notes.txt", 107),
        ("out/deep/ckpt.pt", 108),
        ("src/model.pt", 109),
    ):
        touch(tmp_path, rel, mtime)
    found = checkpoints.find(str(tmp_path), str(tmp_path / "checkpoints"))
    assert [(f["base"], f["path"]) for f in found] == [
        ("project", "output/model.bin"),
        ("project", "out/ckpt.pt"),
        ("project", "lightning_logs/version_0/checkpoints/epoch=2-step=48.ckpt"),
        ("checkpoint_dir", "sub/model.safetensors"),
        ("checkpoint_dir", "checkpoint_epoch_1.json"),
    ]
    newest = checkpoints.newest(found, since=101)
    assert newest is not None and newest["path"] == "output/model.bin"
    assert checkpoints.absolute(newest, "/p", "/p/checkpoints") == "/p/output/model.bin"


def test_globs_replace_the_defaults_and_the_checkpoint_dir_always_counts(tmp_path: Path) -> None:
    touch(tmp_path, "checkpoints/a.pt", 100)
    touch(tmp_path, "out/ckpt.pt", 101)
    touch(tmp_path, "runs/exp1/weights/best.pkl", 102)
    found = checkpoints.find(str(tmp_path), str(tmp_path / "checkpoints"), ["runs/**/*.pkl"])
    assert [f["path"] for f in found] == ["runs/exp1/weights/best.pkl", "a.pt"]


def test_newest_prefers_checkpoint_suffixes_of_this_run(tmp_path: Path) -> None:
    touch(tmp_path, "checkpoints/old.pt", 50)
    touch(tmp_path, "checkpoints/model.pkl", 100)
    touch(tmp_path, "checkpoints/README.md", 200)
    found = checkpoints.find(str(tmp_path), str(tmp_path / "checkpoints"))
    assert checkpoints.newest(found, since=60)["path"] == "model.pkl"  # type: ignore[index]
    assert checkpoints.newest(found, since=300) is None


def test_bad_globs() -> None:
    assert checkpoints.check_glob("out/*.pt") is None
    assert checkpoints.check_glob("  ") == "is empty"
    assert "relative" in str(checkpoints.check_glob("/etc/*"))
    assert "relative" in str(checkpoints.check_glob("~/x"))
    assert ".." in str(checkpoints.check_glob("../other/*.pt"))
