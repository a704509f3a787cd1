"""A full disk, on real tmpfs mounts: exit 4 with "disk full at PATH", the run failed (never lost),
no temp files left behind, and `runs list` still shows every other run.

Locally the project lives on a small tmpfs; over SSH the remote dir does (mounted inside the test
host's own mount namespace, so only the host sees it, as on a real remote machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_ssh import (
    SshEnv,
    make_project,
)
from tests.support.runs import kill_leftover_runs, poll, status_file, write_script
from tests.support.sshhosts import SshTestHost, start_hosts

pytestmark = pytest.mark.timeout(120)

FILL = """
    import os, time
    print("filling the disk", flush=True)
    time.sleep(0.3)
    with open(os.path.join(os.environ.get("FILL_DIR", "."), "big.bin"), "wb") as out:
        while True:
            out.write(b"x" * 65536)
            out.flush()
"""
QUICK = ("--", "--epochs", "1", "--steps-per-epoch", "2", "--delay", "0.01")


def mount_tmpfs(path: Path, size: str, prefix: list[str] | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    cmd = [*(prefix or []), "mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", str(path)]
    subprocess.run(cmd, check=True, capture_output=True)


def unmount(path: Path, prefix: list[str] | None = None) -> None:
    subprocess.run([*(prefix or []), "umount", "-l", str(path)], capture_output=True)


def fill(directory: Path) -> None:
    """Use up every byte of the filesystem holding `directory`."""
    subprocess.run(["dd", "if=/dev/zero", "of=%s" % (directory / "filler.bin"), "bs=64k"], capture_output=True)


def temp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".tmp" in p.name]


def no_traceback(err: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, err


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    if os.getuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount_tmpfs(mount, "1m")
    yield mount
    kill_leftover_runs(mount / "proj")
    unmount(mount)


@pytest.fixture
def full_project(disk: Path) -> Path:
    root = disk / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'full'\nversion = '0'\n")
    write_script(root, "fill.py", FILL)
    return root


def test_run_that_fills_the_disk_fails_with_exit_4(cli, full_project: Path, disk: Path, project: Path) -> None:
    other = cli("local", "train", "train_stub.py", "--wait", *QUICK, cwd=project)
    assert other.code == 0, other.err

    result = cli("local", "train", "fill.py", "--wait", cwd=full_project)
    no_traceback(result.err)
    assert result.code == 4, result.err
    errors = [line for line in result.err.splitlines() if line.startswith(("runctl:", "  "))]
    assert errors[-2].startswith("runctl: run ") and errors[-2].endswith("failed: disk full at %s" % disk)
    assert errors[-1].strip().startswith("free space there (df -h %s)" % disk)

    (run_dir,) = (full_project / ".runctl" / "runs").iterdir()
    state = status_file(full_project, run_dir.name)
    assert state["status"] == "failed"
    assert state["termination_message"] == "disk full at %s" % disk
    assert temp_files(full_project) == []
    assert not (run_dir / ".space_reserve").exists()

    listed = cli("runs", "list", "-o", "json")
    assert listed.code == 0, listed.err
    by_id = {run["run_id"]: run for run in listed.json}
    assert by_id[run_dir.name]["status"] == "failed"
    assert by_id[run_dir.name]["disk_full"] == str(disk)
    assert [run["status"] for run in listed.json if run["run_id"] != run_dir.name] == ["completed"]


def test_disk_full_before_the_start_is_a_failed_run(cli, full_project: Path, disk: Path) -> None:
    write_script(full_project, "ok.py", "print('never runs')\n")
    fill(disk)
    result = cli("local", "train", "ok.py", "--wait", "-o", "json", cwd=full_project)
    no_traceback(result.err)
    assert result.code == 4, result.err
    lines = result.err.strip().splitlines()
    assert lines == ["runctl: disk full at %s" % disk, "  free space there (df -h %s), then start the run again" % disk]
    assert temp_files(full_project) == []

    listed = cli("runs", "list", "-o", "json", cwd=full_project)
    assert listed.code == 0, listed.err
    (run,) = listed.json
    assert run["status"] == "failed" and run["termination_message"].startswith("disk full at %s" % disk)


def test_agent_gone_on_a_full_disk_is_failed_not_lost_and_list_keeps_working(
    cli, full_project: Path, disk: Path, project: Path
) -> None:
    done = cli("local", "train", "train_stub.py", "--wait", *QUICK, cwd=project)
    assert done.code == 0, done.err
    write_script(full_project, "sleepy.py", "import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    started = cli("local", "train", "sleepy.py", cwd=full_project)
    assert started.code == 0, started.err
    run_id = started.out.strip()
    state = poll(lambda: status_file(full_project, run_id).get("pid") and status_file(full_project, run_id), 20, "pid")
    # The agent and the script die with nothing recorded, and the disk is full: no verdict can be written.
    os.kill(state["agent_pid"], signal.SIGKILL)
    os.killpg(state["pid"], signal.SIGKILL)
    (full_project / ".runctl" / "runs" / run_id / ".space_reserve").unlink()  # even the reserve is gone
    fill(disk)

    listed = cli("runs", "list", "-o", "json", cwd=full_project)
    no_traceback(listed.err)
    assert listed.code == 0, listed.err
    by_id = {run["run_id"]: run for run in listed.json}
    assert by_id[run_id]["status"] == "failed"
    assert by_id[run_id]["termination_message"].startswith("disk full at %s" % disk)
    assert sorted(run["status"] for run in listed.json) == ["completed", "failed"]
    assert temp_files(full_project) == []
    # The store keeps the verdict: freeing space later does not turn the run into something else.
    (disk / "filler.bin").unlink()
    again = cli("runs", "status", run_id, "-o", "json", cwd=full_project)
    assert again.code == 0 and again.json["status"] == "failed"


def test_agent_uses_its_reserve_to_record_the_end(cli, full_project: Path, disk: Path) -> None:
    """The agent killed on a full disk still has its reserve: a later probe records the verdict in the run dir."""
    write_script(full_project, "sleepy.py", "import time\ntime.sleep(60)\n")
    started = cli("local", "train", "sleepy.py", cwd=full_project)
    run_id = started.out.strip()
    state = poll(lambda: status_file(full_project, run_id).get("pid") and status_file(full_project, run_id), 20, "pid")
    os.kill(state["agent_pid"], signal.SIGKILL)
    os.killpg(state["pid"], signal.SIGKILL)
    fill(disk)
    listed = cli("runs", "list", "-o", "json", cwd=full_project)
    assert listed.code == 0, listed.err
    # Written to the run dir (with the space held for it), so every reader agrees; no temp file left.
    assert status_file(full_project, run_id)["status"] in ("lost", "failed")
    assert status_file(full_project, run_id)["status"] == listed.json[0]["status"]
    assert temp_files(full_project) == []


# ---- over SSH -------------------------------------------------------------------------------------


def host_prefix(host: SshTestHost) -> list[str]:
    """Run a command in the host's own mount namespace (a network-namespace host has one of its own)."""
    pid = host.sshd_pid()
    return ["nsenter", "--mount=/proc/%d/ns/mnt" % pid] if host.netns and pid else []


@pytest.fixture
def remote_disk(sshenv: SshEnv, tmp_path: Path) -> Iterator[tuple[SshTestHost, Path]]:
    if os.getuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    host = sshenv.hosts[1]
    mount = tmp_path / "remote-disk"
    mount.mkdir()
    mount_tmpfs(mount, "1m", host_prefix(host))
    yield host, mount
    host.run("pkill -KILL -f %s || true" % mount)
    unmount(mount, host_prefix(host))


def test_ssh_run_that_fills_the_remote_disk_fails_with_exit_4(
    sshenv: SshEnv, remote_disk: tuple[SshTestHost, Path], tmp_path: Path
) -> None:
    host, mount = remote_disk
    project = make_project(tmp_path, "fullremote", {"fill.py": FILL})
    remote = mount / "proj"
    dest = sshenv.dest(host)
    result = sshenv.cli("ssh", "train", dest, "fill.py", "--remote-dir", str(remote), "--wait", cwd=project)
    assert result.code == 4, result.err
    errors = [line for line in result.err.splitlines() if line.startswith(("runctl:", "  "))]
    assert errors[-2].endswith("failed: disk full at %s on %s" % (mount, host.address)), result.err
    assert errors[-1].strip().startswith("free space there (df -h %s)" % mount)

    listed = sshenv.runs(project)
    run = next(r for r in listed if r["name"] == "fill")
    assert run["status"] == "failed" and run["termination_message"] == "disk full at %s" % mount
    assert "warning" not in run
    found = host.run("find %s -name '*.tmp*'" % remote)
    assert found.returncode == 0 and found.stdout.strip() == ""
    status = json.loads(host.run("cat %s" % (remote / ".runctl" / "runs" / run["run_id"] / "status.json")).stdout)
    assert status["status"] == "failed"


@pytest.fixture(scope="module")
def full_home_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SshTestHost, Path]]:
    """A fresh host (no agent shipped yet) whose whole home is a full disk."""
    if os.getuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    with start_hosts(1, tmp_path_factory.mktemp("fullhome")) as hosts:
        host = hosts[0]
        mount_tmpfs(host.home, "256k", host_prefix(host))
        host.run("dd if=/dev/zero of=$HOME/filler bs=4k")
        yield host, hosts.client_key
        unmount(host.home, host_prefix(host))


def test_agent_cannot_be_shipped_to_a_full_home(full_home_host: tuple[SshTestHost, Path], tmp_path: Path) -> None:
    host, key = full_home_host
    env = SshEnv.create([host], tmp_path / "client", [key], host.known_hosts_line())
    try:
        project = make_project(tmp_path, "fullhome")
        result = env.cli("ssh", "train", env.dest(host), "train_stub.py", "--no-sync-code", cwd=project)
        assert result.code == 4, result.err
        lines = result.err.strip().splitlines()
        assert lines[0] == "runctl: disk full at %s/.runctl/agent on %s" % (host.home, env.dest(host)), result.err
        assert len(lines) == 2 and "df -h" in lines[1]
        listing = host.run("ls -A $HOME/.runctl/agent")
        assert listing.returncode == 0 and listing.stdout.strip() == ""  # no half-shipped agent left
        assert env.runs(project) == []
    finally:
        env.cleanup()
