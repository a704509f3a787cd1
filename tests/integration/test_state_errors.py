"""Broken local state and odd hosts are one or two lines with the fix and the documented exit code.

Each case was an "internal error" (exit 1) or a traceback: a read-only or full RUNCTL_HOME, a
corrupt store, an unreadable or read-only project dir, a 24-digit pid in training.pid, a remote
python3 whose version cannot be parsed. Read-only means a real read-only bind mount, unreadable
means root without CAP_DAC_OVERRIDE (setpriv), so the kernel really refuses.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_ssh import SshEnv, make_project
from tests.support.sshhosts import SshTestHost, start_hosts

pytestmark = pytest.mark.timeout(120)

QUICK = ("--", "--epochs", "1", "--steps-per-epoch", "2", "--delay", "0.01")


def two_lines(err: str) -> list[str]:
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2, err
    return lines


@pytest.fixture
def read_only() -> Iterator:  # type: ignore[type-arg]
    """Make a directory read-only for everyone, root included (a read-only bind mount onto itself)."""
    if os.getuid() != 0:
        pytest.skip("bind mounts need root")
    mounted: list[Path] = []

    def make(path: Path) -> Path:
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
        mounted.append(path)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        return path

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ---- RUNCTL_HOME and the store -------------------------------------------------------------------


def test_read_only_runctl_home(cli, runctl_home: Path, project: Path, read_only) -> None:  # type: ignore[no-untyped-def]
    assert cli("local", "train", "train_stub.py", "--wait", *QUICK).code == 0
    read_only(runctl_home)
    for args in (("runs", "list"), ("local", "train", "train_stub.py")):
        result = cli(*args)
        assert result.code == 4, result.err
        first, hint = two_lines(result.err)
        assert first == "runctl: cannot write %s: read-only" % (runctl_home / "runctl.db")
        assert "RUNCTL_HOME" in hint
    assert len(list((project / ".runctl" / "runs").iterdir())) == 1  # the refused start left no run


def test_runctl_home_under_a_read_only_dir(cli, tmp_path: Path, read_only) -> None:  # type: ignore[no-untyped-def]
    parent = tmp_path / "ro"
    parent.mkdir()
    read_only(parent)
    result = cli("runs", "list", env={"RUNCTL_HOME": str(parent / "home")})
    assert result.code == 4
    assert two_lines(result.err)[0] == "runctl: cannot write %s: read-only" % (parent / "home")


def test_full_runctl_home(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if os.getuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True)
    try:
        subprocess.run(["dd", "if=/dev/zero", "of=%s" % (disk / "filler"), "bs=4k"], capture_output=True)
        result = cli("local", "train", "train_stub.py", env={"RUNCTL_HOME": str(disk / "home")})
        assert result.code == 4, result.err
        assert two_lines(result.err)[0] == "runctl: disk full at %s" % disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_store_that_is_not_a_database(cli, runctl_home: Path) -> None:  # type: ignore[no-untyped-def]
    store = runctl_home / "runctl.db"
    store.write_bytes(b"these are not the pages you are looking for\n" * 100)
    result = cli("runs", "list")
    assert result.code == 4
    first, hint = two_lines(result.err)
    assert first == "runctl: the runctl store %s is corrupt (file is not a database)" % store
    assert hint.endswith("mv %s %s.corrupt" % (store, store))
    # The fix works: moved aside, a new store is made and the moved file is untouched.
    store.rename(str(store) + ".corrupt")
    assert cli("runs", "list").code == 0
    assert (runctl_home / "runctl.db.corrupt").read_bytes().startswith(b"these are not")


def test_malformed_store(cli, runctl_home: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("local", "train", "train_stub.py", "--wait", *QUICK).code == 0
    store = runctl_home / "runctl.db"
    db = sqlite3.connect(str(store))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    with open(store, "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xff" * 4096 * 3)
    result = cli("runs", "list", "--all")
    assert result.code == 4
    first, hint = two_lines(result.err)
    assert first == "runctl: the runctl store %s is corrupt (database disk image is malformed)" % store
    assert "mv %s" % store in hint


# ---- project dirs --------------------------------------------------------------------------------


def _without_dac_override(cli):  # type: ignore[no-untyped-def]
    """The `cli` fixture, but as root without the capabilities that ignore file permissions."""
    if os.getuid() != 0:
        pytest.skip("needs root (to drop capabilities)")

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", sys.executable, "-m", "runctl"]
        return subprocess.run([*argv, *args], cwd=str(cwd), capture_output=True, text=True, timeout=60)

    return run


def test_unreadable_project_dir(cli, project: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = _without_dac_override(cli)
    os.chmod(project, 0)
    try:
        result = run("local", "train", str(project / "train_stub.py"), "--project-dir", str(project), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        first, hint = two_lines(result.stderr)
        assert first == "runctl: project dir %s is not readable (permission denied)" % project
        assert "chmod u+rx" in hint
        # A script in an unreadable directory below the project root is the same kind of usage error.
        nested = tmp_path / "locked"
        nested.mkdir()
        os.chmod(nested, 0)
        (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\nversion = '0'\n")
        result = run("local", "train", "locked/train.py", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert two_lines(result.stderr)[0] == "runctl: script locked/train.py cannot be read (permission denied)"
    finally:
        os.chmod(project, 0o755)


def test_read_only_project_dir(cli, project: Path, read_only) -> None:  # type: ignore[no-untyped-def]
    read_only(project)
    result = cli("local", "train", "train_stub.py", "--wait")
    assert result.code == 4, result.err
    first, hint = two_lines(result.err)
    assert first == "runctl: cannot write %s: read-only" % (project / ".runctl")
    assert "writable" in hint
    listed = cli("runs", "list", "--all", "-o", "json")
    assert listed.code == 0 and listed.json == []  # nothing recorded


def test_garbage_pid_in_training_pid(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "training.pid").write_text("123456789012345678901234\n")
    result = cli("local", "status", "--project-dir", str(plain), "-o", "json")
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    assert result.code == 1
    assert result.json["pid"] is None and result.json["status"] != "running"


# ---- a remote python3 whose version makes no sense -----------------------------------------------


@pytest.fixture(scope="module")
def odd_python_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SshTestHost, Path]]:
    base = tmp_path_factory.mktemp("oddpython")
    fake = base / "fakebin"
    fake.mkdir()
    (fake / "python3").write_text('#!/bin/sh\necho "python=3.twelve (custom build)"\n')
    (fake / "python3").chmod(0o755)
    with start_hosts(1, base / "hosts", extra_env_per_host=[{"PATH": "%s:/usr/bin:/bin" % fake}]) as hosts:
        yield hosts[0], hosts.client_key


def test_unparsable_remote_python_version(odd_python_host: tuple[SshTestHost, Path], tmp_path: Path) -> None:
    host, key = odd_python_host
    env = SshEnv.create([host], tmp_path / "client", [key], host.known_hosts_line())
    try:
        project = make_project(tmp_path, "oddpy")
        result = env.cli("ssh", "train", env.dest(host), "train_stub.py", cwd=project)
        assert result.code == 4, result.err
        first, hint = two_lines(result.err)
        assert first == "runctl: cannot tell the python3 version on %s: it printed '3.twelve (custom build)'" % (
            env.dest(host)
        )
        assert "python3" in hint
        assert env.runs(project) == []
    finally:
        env.cleanup()
