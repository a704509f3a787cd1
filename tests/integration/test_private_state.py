"""Private state: what runctl writes is its owner's alone, and no other local user can make it write elsewhere.

The store holds full specs (--env values, webhook URLs); run dirs hold specs and logs. Checked with
stat on a real run. The control-socket fallback in /tmp is attacked by a real second local user
(created with useradd when missing) who creates the directory first and plants a symlinked lock
file: runctl, running as root, must not adopt that directory nor touch the symlink's target.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.integration.test_ssh import (
    SshEnv,
    make_project,
)

pytestmark = pytest.mark.timeout(120)

OTHER_USER = "runctl-other"
QUICK = ("--", "--epochs", "1", "--steps-per-epoch", "2", "--delay", "0.01")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def assert_private(path: Path) -> None:
    info = os.lstat(path)
    expected = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
    assert stat.S_IMODE(info.st_mode) == expected, "%s is %o, not %o" % (path, stat.S_IMODE(info.st_mode), expected)
    assert info.st_uid == os.getuid()


@pytest.fixture(scope="module")
def other_user() -> tuple[int, int]:
    """(uid, gid) of an unprivileged second local user."""
    if os.getuid() != 0:
        pytest.skip("needs root to create and act as a second user")
    if subprocess.run(["id", "-u", OTHER_USER], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER], check=True
        )
    uid = int(subprocess.run(["id", "-u", OTHER_USER], capture_output=True, text=True, check=True).stdout)
    gid = int(subprocess.run(["id", "-g", OTHER_USER], capture_output=True, text=True, check=True).stdout)
    return uid, gid


def as_user(user: tuple[int, int], *argv: str) -> None:
    subprocess.run(list(argv), check=True, user=user[0], group=user[1], extra_groups=[], cwd="/")


# ---- modes of what a run leaves --------------------------------------------------------------------


def test_store_run_dir_spec_and_logs_are_private(cli, runctl_home: Path, project: Path) -> None:
    runctl_home.rmdir()  # runctl creates it
    result = cli("local", "train", "train_stub.py", "--wait", "--env", "API_TOKEN=s3cret", *QUICK)
    assert result.code == 0, result.err
    assert_private(runctl_home)
    assert_private(runctl_home / "agent")
    for name in ("runctl.db", "runctl.db-wal", "runctl.db-shm"):
        if (runctl_home / name).exists():
            assert_private(runctl_home / name)
    (run_dir,) = (project / ".runctl" / "runs").iterdir()
    for directory in (project / ".runctl", project / ".runctl" / "runs", run_dir):
        assert_private(directory)
    for path in run_dir.iterdir():
        assert_private(path)
    assert "s3cret" in (run_dir / "spec.json").read_text()
    assert_private(project / "training.pid")
    assert not list(run_dir.glob("*.tmp*")) and not (run_dir / ".space_reserve").exists()


def test_looser_state_is_tightened(cli, runctl_home: Path, project: Path) -> None:
    assert cli("local", "train", "train_stub.py", "--wait", *QUICK).code == 0
    os.chmod(runctl_home, 0o755)
    for path in runctl_home.glob("runctl.db*"):
        os.chmod(path, 0o644)
    result = cli("runs", "list", "--all")
    assert result.code == 0, result.err
    assert mode(runctl_home) == 0o700
    assert [mode(p) for p in runctl_home.glob("runctl.db*")] == [0o600] * len(list(runctl_home.glob("runctl.db*")))


def test_shared_directory_as_runctl_home_is_refused(cli, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    result = cli("runs", "list", env={"RUNCTL_HOME": str(shared)})
    assert result.code == 2, result.err
    assert "shared directory" in result.err and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 2
    assert mode(shared) == 0o1777 and not list(shared.iterdir())


# ---- the /tmp control-socket fallback, squatted by another user -----------------------------------


def _kill_masters(control_dir: Path) -> None:
    marker = "ControlPath=%s/" % control_dir
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path("/proc/%s/cmdline" % entry).read_bytes().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if any(arg.startswith(marker) for arg in argv):
            try:
                os.kill(int(entry), 9)
            except OSError:
                pass


@pytest.mark.parametrize("squat_mode", [0o777, 0o700])
def test_squatted_control_dir_is_not_adopted(
    sshenv: SshEnv, other_user: tuple[int, int], tmp_path: Path, squat_mode: int
) -> None:
    # A RUNCTL_HOME too long for socket paths under it: runctl falls back to /tmp/runctl-<uid>-<hash>.
    long_home = Path(tempfile.mkdtemp(prefix="rch-" + "long" * 16 + "-", dir="/tmp"))
    digest = hashlib.sha256(str(long_home).encode()).hexdigest()[:10]
    squat = Path("/tmp") / ("runctl-%d-%s" % (os.getuid(), digest))
    host = sshenv.hosts[0]
    dest = sshenv.dest(host)
    socket_name = hashlib.sha256(("%s|None|False|%s" % (dest, sshenv.config)).encode()).hexdigest()[:20]
    victim = Path(tempfile.mkdtemp(prefix="victim-", dir="/tmp")) / "precious.txt"
    os.chown(victim.parent, *other_user)
    used: Path | None = None
    try:
        # The other user gets there first: the directory, a file of theirs, and a lock symlink to it.
        as_user(other_user, "sh", "-c", 'echo precious > "$1"', "sh", str(victim))
        as_user(other_user, "mkdir", str(squat))
        as_user(other_user, "chmod", "%o" % squat_mode, str(squat))
        as_user(other_user, "ln", "-s", str(victim), str(squat / (socket_name + ".lock")))
        before = sorted(os.listdir(squat))

        project = make_project(tmp_path, "squat")
        result = sshenv.cli(
            "ssh", "train", dest, "train_stub.py", "--wait", *QUICK, cwd=project, env={"RUNCTL_HOME": str(long_home)}
        )
        assert result.code == 0, result.err

        assert victim.read_text() == "precious\n"
        assert os.lstat(victim).st_uid == other_user[0]
        assert sorted(os.listdir(squat)) == before  # no socket, no lock, nothing of ours in their dir
        info = os.lstat(squat)
        assert info.st_uid == other_user[0] and stat.S_IMODE(info.st_mode) == squat_mode
        used = Path((long_home / "ssh-dir").read_text().strip())
        assert used != squat and used.parent == Path("/tmp")
        assert_private(used)
        assert (used / (socket_name + ".lock")).exists()
        assert_private(used / (socket_name + ".lock"))

        # The next command reuses the same private directory (parallel runctl share one master).
        listed = sshenv.cli("runs", "list", "--all", "-o", "json", cwd=project, env={"RUNCTL_HOME": str(long_home)})
        assert listed.code == 0, listed.err
        assert Path((long_home / "ssh-dir").read_text().strip()) == used
    finally:
        if used is not None:
            _kill_masters(used)
            shutil.rmtree(used, ignore_errors=True)
        shutil.rmtree(squat, ignore_errors=True)
        shutil.rmtree(victim.parent, ignore_errors=True)
        shutil.rmtree(long_home, ignore_errors=True)


def test_own_private_fallback_dir_is_used(sshenv: SshEnv, tmp_path: Path) -> None:
    long_home = Path(tempfile.mkdtemp(prefix="rch-" + "long" * 16 + "-", dir="/tmp"))
    digest = hashlib.sha256(str(long_home).encode()).hexdigest()[:10]
    expected = Path("/tmp") / ("runctl-%d-%s" % (os.getuid(), digest))
    project = make_project(tmp_path, "ownfallback")
    try:
        result = sshenv.cli(
            "ssh", "train", sshenv.dest(sshenv.hosts[0]), "train_stub.py", "--wait", *QUICK,
            cwd=project, env={"RUNCTL_HOME": str(long_home)},
        )  # fmt: skip
        assert result.code == 0, result.err
        assert_private(expected)
        assert not (long_home / "ssh-dir").exists()
    finally:
        _kill_masters(expected)
        shutil.rmtree(expected, ignore_errors=True)
        shutil.rmtree(long_home, ignore_errors=True)
