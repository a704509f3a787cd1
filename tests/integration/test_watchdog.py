"""The host watchdog as real detached processes, run from the agent zip, with a harmless power-off.

Every watchdog here gets `recording_cmd` (writes the time to a file) as its power-off command; the
real one is exercised only inside test hosts, in test_watchdog_hosts.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runctl.agent import watchdog
from tests.support.pythons import python38
from tests.support.watchdog import (
    agent,
    ensure,
    kill_watchdog,
    lock_holders,
    recorded_times,
    recording_cmd,
    status,
    wait_until,
)


@pytest.fixture
def wd(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "wd"
    yield directory
    kill_watchdog(directory)


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "poweroff-calls"


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process standing in for a run's agent."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()


def test_powers_off_after_idle_stop_with_no_run(wd: Path, record: Path) -> None:
    started = time.time()
    result = ensure(wd, "1", recording_cmd(record))
    assert result["started"] is True and result["running"] is True
    assert result["settings"] == {"idle_stop": 1.0, "poweroff_cmd": recording_cmd(record), "poll": 0.1}
    (issued,) = wait_until(lambda: recorded_times(record), 10)
    assert issued - started >= 1.0
    state = wait_until(lambda: (s := status(wd)["state"]) and s["status"] == "poweroff_issued" and s, 5)
    assert state["pid"] == result["pid"]
    assert state["poweroff"]["cmd"] == recording_cmd(record)
    assert state["poweroff"]["exit_code"] == 0
    assert state["poweroff"]["issued_at"] >= started + 1.0
    assert state["poweroff"]["idle_for"] >= 1.0
    assert [e["kind"] for e in state["events"]][:4] == ["settings", "started", "poweroff_issued", "poweroff_returned"]
    assert state["errors"] == []
    # A power-off the host does not heed is retried only after another (longer) window.
    time.sleep(1.5)
    assert len(recorded_times(record)) == 1


def test_no_power_off_while_a_run_is_active_nor_within_the_window_after_it_ends(
    wd: Path, record: Path, sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    run_dir = tmp_path / "proj" / ".runctl" / "runs" / "r1"
    code, registered = agent("watchdog", "register", str(run_dir), "--pid", str(sleeper.pid), "--dir", str(wd))
    assert code == 0 and registered["ok"]
    ensure(wd, "1.5", recording_cmd(record))
    time.sleep(3.5)  # more than twice idle_stop
    assert recorded_times(record) == []
    state = status(wd)["state"]
    assert state["active_runs"] == [str(run_dir)]
    assert state["idle_since"] is None and state["poweroff_at"] is None

    sleeper.kill()
    sleeper.wait()
    ended = time.time()
    (issued,) = wait_until(lambda: recorded_times(record), 10)
    assert issued - ended >= 1.5
    state = status(wd)["state"]
    assert state["active_runs"] == []
    assert any(e["kind"] == "run_ended" and e["run_dir"] == str(run_dir) for e in state["events"])
    assert os.listdir(wd / "runs") == []  # the ended run's registration is gone


def test_each_ensure_restarts_the_idle_window(wd: Path, record: Path) -> None:
    ensure(wd, "2", recording_cmd(record))
    time.sleep(1.3)
    again = time.time()
    assert ensure(wd, "2", recording_cmd(record))["started"] is False
    (issued,) = wait_until(lambda: recorded_times(record), 10)
    assert issued - again >= 2.0


def test_off_never_powers_off(wd: Path, record: Path) -> None:
    result = ensure(wd, "off", recording_cmd(record))
    assert result["started"] is False and result["running"] is False
    assert lock_holders(wd) == []
    time.sleep(1.5)
    # A running watchdog told `off` exits without powering off.
    assert ensure(wd, "1", recording_cmd(record))["started"] is True
    assert ensure(wd, "off", recording_cmd(record))["running"] is True
    wait_until(lambda: not status(wd)["running"], 5)
    time.sleep(1.5)
    assert recorded_times(record) == []
    state = status(wd)["state"]
    assert state["status"] == "stopped" and state["poweroff"] is None
    assert "disabled" in [e["kind"] for e in state["events"]]


def test_off_then_on_right_away_leaves_one_watchdog_running(wd: Path, record: Path) -> None:
    ensure(wd, "30", recording_cmd(record), poll=0.05)
    for _ in range(5):
        ensure(wd, "off", recording_cmd(record), poll=0.05)
        time.sleep(0.03)  # around the moment the running one sees `off`
        ensure(wd, "30", recording_cmd(record), poll=0.05)
        time.sleep(0.3)
        assert status(wd)["running"] is True
        assert len(lock_holders(wd)) == 1
    assert recorded_times(record) == []


def test_a_second_ensure_does_not_start_a_second_watchdog(wd: Path, record: Path) -> None:
    first = ensure(wd, "30", recording_cmd(record))
    second = ensure(wd, "40", recording_cmd(record))
    assert first["started"] is True and second["started"] is False
    assert second["pid"] == first["pid"]
    assert lock_holders(wd) == [first["pid"]]
    # The running one takes the new settings at its next poll.
    wait_until(lambda: status(wd)["state"]["settings"]["idle_stop"] == 40.0, 5)
    assert status(wd)["state"]["pid"] == first["pid"]


def test_ensures_racing_start_one_watchdog(tmp_path: Path, record: Path) -> None:
    for attempt in range(3):
        directory = tmp_path / ("wd%d" % attempt)
        results: list[dict[str, object]] = []

        def one() -> None:
            results.append(ensure(directory, "30", recording_cmd(record)))  # noqa: B023

        try:
            threads = [threading.Thread(target=one) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert len(results) == 4 and all(r["ok"] for r in results)
            holders = lock_holders(directory)
            assert len(holders) == 1
            assert sum(1 for r in results if r["started"]) == 1  # the others found it, or lost the lock race
            assert {r["pid"] for r in results} <= {holders[0], None}
        finally:
            kill_watchdog(directory)


def test_stop_ends_the_watchdog_without_a_power_off(wd: Path, record: Path) -> None:
    pid = ensure(wd, "1", recording_cmd(record))["pid"]
    code, stopped = agent("watchdog", "stop", "--dir", str(wd))
    assert code == 0 and stopped == {"ok": True, "stopped": True, "running": False, "pid": pid}
    time.sleep(1.5)
    assert recorded_times(record) == []
    assert status(wd)["state"]["status"] == "stopped"
    code, again = agent("watchdog", "stop", "--dir", str(wd))
    assert code == 0 and again["stopped"] is False


def test_a_failing_power_off_is_recorded_and_watching_goes_on(wd: Path, tmp_path: Path) -> None:
    ensure(wd, "0.5", ["sh", "-c", "echo no permission >&2; exit 3"])
    state = wait_until(lambda: (s := status(wd)["state"]) and s["poweroff"] and s["poweroff"].get("exit_code"), 10)
    state = status(wd)["state"]
    assert state["poweroff"]["exit_code"] == 3 and "no permission" in state["poweroff"]["output"]
    assert state["status"] == "watching"
    assert any("exited with 3" in e["message"] for e in state["errors"])
    assert status(wd)["running"] is True
    missing = str(tmp_path / "no-such-poweroff")
    ensure(wd, "0.5", [missing])
    wait_until(lambda: any(missing in e["message"] for e in status(wd)["state"]["errors"]), 10)
    assert status(wd)["running"] is True


def test_a_reused_pid_or_a_garbled_registration_is_no_active_run(
    wd: Path, record: Path, sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    entry = Path(watchdog.register_run(str(tmp_path / "run-a"), sleeper.pid, str(wd)))
    data = json.loads(entry.read_text())
    assert data["pid"] == sleeper.pid and isinstance(data["pid_start"], int)
    # Same pid, another start time: the process that registered is gone and the pid was reused.
    entry.write_text(json.dumps({**data, "pid_start": data["pid_start"] + 1}))
    (wd / "runs" / "garbled.json").write_text("{not json")
    started = time.time()
    ensure(wd, "1", recording_cmd(record))
    (issued,) = wait_until(lambda: recorded_times(record), 10)
    assert issued - started >= 1.0
    assert os.listdir(wd / "runs") == []
    assert any("garbled.json" in e["message"] for e in status(wd)["state"]["errors"])


def test_unregister_ends_a_run_and_restarts_the_window(
    wd: Path, record: Path, sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    watchdog.register_run(str(tmp_path / "run-b"), sleeper.pid, str(wd))
    ensure(wd, "1", recording_cmd(record))
    time.sleep(2)
    assert recorded_times(record) == []
    code, removed = agent("watchdog", "unregister", str(tmp_path / "run-b"), "--dir", str(wd))
    assert code == 0 and removed["removed"] is True
    wait_until(lambda: recorded_times(record), 10)


@pytest.mark.parametrize(
    "args,words",
    [
        (["--idle-stop", "soon"], "invalid idle_stop"),
        (["--idle-stop", "0"], "invalid idle_stop"),
        (["--idle-stop", "-5"], "invalid idle_stop"),
        (["--idle-stop", "99d"], "invalid idle_stop"),
        (["--idle-stop", "1", "--poweroff-cmd", "shutdown -h now"], "JSON list"),
        (["--idle-stop", "1", "--poweroff-cmd", "[]"], "JSON list"),
        (["--idle-stop", "1", "--poweroff-cmd", '[1, "x"]'], "JSON list"),
        (["--idle-stop", "1", "--poweroff-cmd", '["a\\u0000b"]'], "JSON list"),
        (["--idle-stop", "1", "--poll", "0"], "invalid poll"),
        (["--idle-stop", "1", "--poll", "nan"], "invalid poll"),
    ],
)
def test_bad_settings_are_refused_and_start_nothing(wd: Path, args: list[str], words: str) -> None:
    code, result = agent("watchdog", "ensure", *args, "--dir", str(wd))
    assert code == 2 and result["ok"] is False and words in result["error"]
    assert len(result["error"].splitlines()) == 1
    assert not wd.exists()


def test_a_symlink_in_place_of_the_directory_is_refused(tmp_path: Path, record: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "wd"
    link.symlink_to(target)
    code, result = agent("watchdog", "ensure", "--idle-stop", "1", "--dir", str(link))
    assert code == 2 and "not a directory" in result["error"]
    assert os.listdir(target) == []
    code, result = agent("watchdog", "register", str(tmp_path / "r"), "--pid", "0", "--dir", str(tmp_path / "x"))
    assert code == 2 and "invalid pid" in result["error"]


def test_status_of_a_host_without_a_watchdog(tmp_path: Path) -> None:
    result = status(tmp_path / "never")
    assert result["ok"] is True and result["running"] is False and result["state"] is None
    assert not (tmp_path / "never").exists()


def test_ensure_args_round_trip_through_the_cli() -> None:
    args = watchdog.ensure_args(900.0, ["sudo", "-n", "shutdown", "-h", "now"], 5.0)
    import argparse

    parser = argparse.ArgumentParser()
    watchdog.add_parser(parser.add_subparsers(dest="command"))
    parsed = parser.parse_args(args)
    assert watchdog.parse_idle_stop(parsed.idle_stop) == 900.0
    assert watchdog.parse_poweroff_cmd(parsed.poweroff_cmd) == ["sudo", "-n", "shutdown", "-h", "now"]
    assert watchdog.ensure_args(None)[-1] == "off"


def test_default_power_off_command() -> None:
    cmd = watchdog.default_poweroff_cmd()
    assert cmd[-3:] == ["/sbin/shutdown", "-h", "now"]
    assert (cmd[:2] == ["sudo", "-n"]) == (os.geteuid() != 0)


@pytest.mark.skipif(python38() is None, reason="no Python 3.8 on this machine")
def test_the_watchdog_runs_on_python38(wd: Path, record: Path, sleeper: subprocess.Popen[bytes]) -> None:
    py38 = python38()
    assert py38 is not None
    code, _ = agent("watchdog", "register", str(wd / "r"), "--pid", str(sleeper.pid), "--dir", str(wd), python=py38)
    assert code == 0
    ensure(wd, "1", recording_cmd(record), python=py38)
    time.sleep(2)
    assert recorded_times(record) == [] and status(wd)["state"]["active_runs"] == [str(wd / "r")]
    sleeper.kill()
    wait_until(lambda: recorded_times(record), 10)
    assert sys.version_info >= (3, 8)


def test_the_runs_webhooks_hear_of_a_leak_before_the_power_off(wd: Path, record: Path) -> None:
    from tests.integration.test_notify import Hook

    hook = Hook()
    try:
        args = ["watchdog", "ensure", "--idle-stop", "1", "--poll", "0.1", "--dir", str(wd)]
        code, result = agent(*args, "--poweroff-cmd", json.dumps(recording_cmd(record)), "--notify", hook.url)
        assert code == 0 and result["ok"], result
        leak = hook.wait_for("leak", 10)
        (issued,) = wait_until(lambda: recorded_times(record), 10)
        assert leak["idle_for"] >= 1.0 and "powering it off" in leak["text"]
        assert leak["host"] and leak["idle_stop"] == 1.0
        assert hook.received[0]["t"] <= issued, "told before the power-off, not after"
    finally:
        hook.close()
