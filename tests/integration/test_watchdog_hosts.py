"""The host watchdog on real SSH test hosts, powering them off with the real power-off path.

Each host's sshd runs in a private mount namespace where a fake is bind-mounted over
/usr/bin/systemctl (shutdown, poweroff, halt and reboot point to it): the watchdog runs its real,
default command (`/sbin/shutdown -h now`), the fake records the call and takes that host down (its
sshd and every process started through it end). This machine keeps the real binary, untouched;
each test checks the fake is in place before anything could call a power-off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runctl.bundle import agent_artifact
from tests.support.sshhosts import SshTestHost, start_hosts_with_poweroff_fake
from tests.support.watchdog import lock_holders, wait_until

REAL_POWEROFF = Path("/usr/bin/systemctl")
DEFAULT_CMD = ["/sbin/shutdown", "-h", "now"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="test hosts with a power-off fake need root")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[SshTestHost]:
    """One fresh test host with its power-off fake; this machine's power-off is checked untouched."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here for the test host's private mount namespace")
    before = _digest(REAL_POWEROFF)
    hosts = start_hosts_with_poweroff_fake(1, tmp_path / "hosts")  # a fake that cannot be checked fails
    try:
        hosts[0].check_poweroff_fake()
        yield hosts[0]
    finally:
        hosts.teardown()
        assert _digest(REAL_POWEROFF) == before
        assert "RUNCTL-TEST-FAKE-POWEROFF" not in REAL_POWEROFF.read_bytes()[:4096].decode("latin-1")


def on_host(host: SshTestHost, *args: str, stdin: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """Run the agent zip on the host over ssh; its JSON answer."""
    host.check_poweroff_fake()  # before anything there could reach a power-off
    cmd = shlex.join(["python3", str(agent_artifact()), *args])
    proc = host.run(cmd, input=stdin, timeout=timeout)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def watchdog_dir(host: SshTestHost) -> Path:
    return host.home / ".runctl" / "watchdog"


def went_down(host: SshTestHost) -> bool:
    return bool(host.poweroff_calls()) and host.sshd_pid() is None and not host.is_reachable(0.3)


POWEROFF_NAMES = ["/usr/bin/systemctl", "/sbin/shutdown", "/sbin/poweroff", "/sbin/halt", "/sbin/reboot"]


def test_every_power_off_name_is_the_fake_on_the_host_and_the_real_one_here(host: SshTestHost) -> None:
    names = [n for n in POWEROFF_NAMES if os.path.exists(n)]
    inside = host.run(shlex.join(["grep", "-l", "RUNCTL-TEST-FAKE-POWEROFF", *names]))
    assert inside.stdout.split() == names
    outside = subprocess.run(["grep", "-l", "RUNCTL-TEST-FAKE-POWEROFF", *names], capture_output=True, text=True)
    assert outside.returncode == 1 and outside.stdout == ""


def test_the_fake_takes_the_host_down_and_leaves_this_machine_alone(host: SshTestHost) -> None:
    started = host.run("sleep 60 >/dev/null 2>&1 & echo $!")
    session_pid = int(started.stdout.strip())
    proc = host.run("/sbin/shutdown -h now; sleep 5; echo still-up", timeout=20)
    assert "still-up" not in proc.stdout  # the session ended with the host
    wait_until(lambda: went_down(host), 10)
    ((_, argv),) = host.poweroff_calls()
    assert argv == DEFAULT_CMD
    wait_until(lambda: not Path("/proc/%d" % session_pid).exists() or _zombie(session_pid), 5)
    # The fake itself, run on this machine, refuses and records nothing.
    assert host.poweroff_fake is not None
    outside = subprocess.run([str(host.poweroff_fake), "poweroff"], capture_output=True, text=True, timeout=10)
    assert outside.returncode == 99 and "refusing" in outside.stderr
    assert len(host.poweroff_calls()) == 1
    # The host boots again, its fake still in place.
    host.start_sshd()
    host.check_poweroff_fake()
    assert host.run("echo back").stdout.strip() == "back"


def _zombie(pid: int) -> bool:
    try:
        return Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[-1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_the_watchdog_powers_an_idle_host_off_with_its_default_command(host: SshTestHost) -> None:
    started = time.time()
    result = on_host(host, "watchdog", "ensure", "--idle-stop", "2", "--poll", "0.1")
    assert result["ok"] and result["started"] is True
    assert result["settings"]["poweroff_cmd"] == DEFAULT_CMD  # root on the host: no sudo
    # The ssh session that started it is over; the watchdog lives on, detached.
    assert lock_holders(watchdog_dir(host)) == [result["pid"]]
    assert os.getsid(result["pid"]) != os.getsid(0)
    wait_until(lambda: went_down(host), 15)
    ((called_at, argv),) = host.poweroff_calls()
    assert argv == DEFAULT_CMD
    assert called_at - started >= 2.0
    state = json.loads((watchdog_dir(host) / "state.json").read_text())  # the host's disk survives it
    assert state["poweroff"]["cmd"] == DEFAULT_CMD
    assert started + 2.0 <= state["poweroff"]["issued_at"] <= called_at
    assert lock_holders(watchdog_dir(host)) == []  # the watchdog went down with its host


def test_no_power_off_while_a_run_is_active_nor_within_the_window_after_it_ends(host: SshTestHost) -> None:
    project = host.home / "proj"
    run_dir = project / ".runctl" / "runs" / "wdrun1"
    spec = {
        "run_id": "wdrun1",
        "name": "t",
        "project_dir": str(project),
        "command": ["python3", "-c", "import time; time.sleep(4); print('done')"],
        "created_at": time.time(),
        "watchdog": {"idle_stop": 1.5, "poll": 0.1},
    }
    host.run("mkdir -p %s" % shlex.quote(str(project)), check=True)
    launched = on_host(host, "launch", str(run_dir), "--spec-stdin", stdin=json.dumps(spec))
    assert launched["ok"] is True
    assert launched["watchdog"]["ok"] is True and launched["watchdog"]["started"] is True
    assert launched["watchdog"]["settings"]["poweroff_cmd"] == DEFAULT_CMD
    # The run lasts 4 s, far more than idle_stop: the host stays up all along.
    time.sleep(3)
    assert host.poweroff_calls() == [] and host.is_reachable()
    state = on_host(host, "watchdog", "status")
    assert state["running"] is True and state["state"]["active_runs"] == [str(run_dir)]
    status = wait_until(lambda: _ended(run_dir), 15)
    assert status["status"] == "completed"
    wait_until(lambda: went_down(host), 15)
    ((called_at, _),) = host.poweroff_calls()
    assert called_at - status["ended_at"] >= 1.5
    events = json.loads((watchdog_dir(host) / "state.json").read_text())["events"]
    assert any(e["kind"] == "run_ended" and e["run_dir"] == str(run_dir) for e in events)


def _ended(run_dir: Path) -> dict[str, Any] | None:
    try:
        status = json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return status if status.get("ended_at") else None


def test_a_second_ensure_does_not_start_a_second_watchdog(host: SshTestHost) -> None:
    first = on_host(host, "watchdog", "ensure", "--idle-stop", "30", "--poll", "0.1")
    second = on_host(host, "watchdog", "ensure", "--idle-stop", "30", "--poll", "0.1")
    assert first["started"] is True and second["started"] is False and second["pid"] == first["pid"]
    assert lock_holders(watchdog_dir(host)) == [first["pid"]]
    stopped = on_host(host, "watchdog", "stop")
    assert stopped["stopped"] is True
    assert host.poweroff_calls() == [] and host.is_reachable()


def test_off_never_powers_the_host_off(host: SshTestHost) -> None:
    assert on_host(host, "watchdog", "ensure", "--idle-stop", "off")["running"] is False
    spec = {
        "run_id": "wdoff1",
        "name": "t",
        "project_dir": str(host.home),
        "command": ["true"],
        "created_at": time.time(),
        "watchdog": {"idle_stop": "off"},
    }
    launched = on_host(
        host, "launch", str(host.home / ".runctl" / "runs" / "wdoff1"), "--spec-stdin", stdin=json.dumps(spec)
    )
    assert launched["ok"] is True and launched["watchdog"]["running"] is False
    time.sleep(2.5)
    assert host.poweroff_calls() == [] and host.is_reachable()
    assert lock_holders(watchdog_dir(host)) == []


def test_a_spec_without_a_watchdog_block_starts_none(host: SshTestHost) -> None:
    spec = {"run_id": "nowd1", "name": "t", "project_dir": str(host.home), "command": ["true"], "created_at": 1}
    launched = on_host(
        host, "launch", str(host.home / ".runctl" / "runs" / "nowd1"), "--spec-stdin", stdin=json.dumps(spec)
    )
    assert launched["ok"] is True and "watchdog" not in launched
    assert not watchdog_dir(host).exists()
