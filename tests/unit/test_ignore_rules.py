"""Ignore files become rsync rules with git's semantics, checked with a real local rsync."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from runctl.transport import ignore
from runctl.transport.sync import code_filters

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync not installed")


def make(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def synced(root: Path, dest: Path, includes: list[str] | None = None) -> set[str]:
    rules = root.parent / "rules.txt"
    rules.write_text("".join(rule + "\n" for rule in ignore.collect(root)))
    subprocess.run(
        ["rsync", "-a", "--delete", *code_filters(includes or [], str(rules)), str(root) + "/", str(dest) + "/"],
        check=True,
        capture_output=True,
    )
    return {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}


def test_gitignore_semantics_at_every_level(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    make(
        root,
        {
            ".gitignore": "*.log\n!important.log\nbuild/\n/only_root.txt\n# comment\n\n",
            "train.py": "",
            "run.log": "",
            "important.log": "",
            "only_root.txt": "",
            "build/out.bin": "",
            "sub/only_root.txt": "",
            "sub/.gitignore": "secret.txt\n!keep.log\n",
            "sub/secret.txt": "",
            "sub/keep.log": "",
            "sub/deep/secret.txt": "",
            "sub/deep/x.log": "",
            "secret.txt": "",
            "a/b/.gitignore": "*.tmp\n",
            "a/b/c/d.tmp": "",
            "a/d.tmp": "",
            ".runctlignore": "datasets/\n",
            "datasets/big.bin": "",
        },
    )
    got = synced(root, tmp_path / "dest")
    assert "train.py" in got and "important.log" in got
    assert "run.log" not in got and "sub/deep/x.log" not in got
    assert "build/out.bin" not in got and "datasets/big.bin" not in got
    assert "only_root.txt" not in got and "sub/only_root.txt" in got  # "/x" is anchored to its file's dir
    assert "sub/secret.txt" not in got and "sub/deep/secret.txt" not in got and "secret.txt" in got
    assert "sub/keep.log" in got  # a deeper file's negation beats the root's *.log
    assert "a/b/c/d.tmp" not in got and "a/d.tmp" in got


def test_include_overrides_and_deleted_files_go_but_ignored_remote_files_stay(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    dest = tmp_path / "dest"
    make(root, {".gitignore": "*.log\n", "a.py": "", "b.py": "", "wanted.log": ""})
    assert "wanted.log" in synced(root, dest, includes=["wanted.log"])
    (dest / "written-on-host.log").write_text("remote output")
    (root / "b.py").unlink()
    got = synced(root, dest, includes=["wanted.log"])
    assert "b.py" not in got
    assert "written-on-host.log" in got  # ignored files on the host are protected from --delete


def test_parse_line_edge_cases() -> None:
    assert ignore.parse_line("# comment") is None
    assert ignore.parse_line("   ") is None
    assert ignore.parse_line("\\#notcomment") == ("#notcomment", False, False, False)
    assert ignore.parse_line("!keep/") == ("keep", True, True, False)
    assert ignore.parse_line("/a/b") == ("a/b", False, False, True)


def test_double_star_matches_zero_directories_too(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    make(
        root,
        {
            ".gitignore": "**/.env\nfoo/**/bar\n**/keys/*.pem\n",
            ".env": "SECRET=1",
            "deep/er/.env": "SECRET=2",
            "foo/bar": "",
            "foo/x/y/bar": "",
            "keys/a.pem": "",
            "deep/keys/b.pem": "",
            "main.py": "",
        },
    )
    got = synced(root, tmp_path / "dest")
    assert got == {".gitignore", "main.py"}


def test_custom_checkpoint_dir_on_the_host_survives_a_sync(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    dest = tmp_path / "dest"
    make(root, {"train.py": ""})
    rules = tmp_path / "rules.txt"
    rules.write_text("")
    (dest / "ckpts").mkdir(parents=True)
    (dest / "ckpts" / "epoch_3.pt").write_text("weights")
    subprocess.run(
        ["rsync", "-a", "--delete", *code_filters([], str(rules), ("ckpts",)), str(root) + "/", str(dest) + "/"],
        check=True,
        capture_output=True,
    )
    assert (dest / "ckpts" / "epoch_3.pt").read_text() == "weights"
