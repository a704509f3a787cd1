"""The watchdog's idle window, driven poll by poll on a given clock (no detached process).

The power-off command is harmless: a script that appends to a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runctl.agent import watchdog as wd
from tests.support.watchdog import recorded_times, recording_cmd


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(tmp_path: Path, clock: Clock, idle_stop: float | None = 10.0, cmd: list[str] | None = None) -> wd.Watchdog:
    directory = str(tmp_path / "wd")
    wd._prepare_dir(directory)
    wd.write_config(directory, idle_stop, cmd or recording_cmd(tmp_path / "calls"), 1.0)
    dog = wd.Watchdog(directory, clock=clock, wall=clock)
    dog.read_settings()
    return dog


def register_live(dog: wd.Watchdog, name: str) -> Path:
    return Path(wd.register_run(name, os.getpid(), dog.dir))


def end(entry: Path) -> None:
    """The registered agent is gone: its pid now belongs to a process that started at another time."""
    data = json.loads(entry.read_text())
    entry.write_text(json.dumps({**data, "pid_start": (data["pid_start"] or 0) + 1}))


def test_power_off_exactly_after_the_window_with_no_run(tmp_path: Path, clock: Clock) -> None:
    dog = make(tmp_path, clock)
    assert dog.poll() == 1.0
    clock.t += 9.5
    assert dog.poll() == pytest.approx(0.5)  # wakes up right at the deadline, not a poll later
    clock.t += 0.49
    dog.poll()
    assert recorded_times(tmp_path / "calls") == []
    clock.t += 0.01
    dog.poll()
    assert len(recorded_times(tmp_path / "calls")) == 1
    assert dog.state["status"] == "poweroff_issued" and dog.state["poweroff"]["idle_for"] == pytest.approx(10.0)


def test_the_window_starts_when_the_end_is_seen_not_at_the_last_active_poll(tmp_path: Path, clock: Clock) -> None:
    dog = make(tmp_path, clock)
    entry = register_live(dog, "/r/1")
    for _ in range(30):
        clock.t += 1.0
        dog.poll()
        assert dog.state["active_runs"] == ["/r/1"] and dog.state["idle_since"] is None
    end(entry)
    clock.t += 5.0  # the run ended at some moment in these 5 s; seen now
    seen = clock.t
    dog.poll()
    assert dog.state["idle_since"] == seen and dog.state["active_runs"] == []
    clock.t = seen + 9.9
    dog.poll()
    assert recorded_times(tmp_path / "calls") == []
    clock.t = seen + 10.0
    dog.poll()
    assert len(recorded_times(tmp_path / "calls")) == 1
    assert [e["kind"] for e in dog.state["events"]].count("run_ended") == 1


def test_a_run_that_ended_before_the_watchdog_saw_it_restarts_the_window(tmp_path: Path, clock: Clock) -> None:
    dog = make(tmp_path, clock)
    clock.t += 8.0
    dog.poll()
    entry = register_live(dog, "/r/late")
    end(entry)  # registered and already gone between two polls
    clock.t += 1.0
    dog.poll()
    clock.t += 9.0  # 18 s after start, but only 9 s after the end was seen
    dog.poll()
    assert recorded_times(tmp_path / "calls") == []
    clock.t += 1.0
    dog.poll()
    assert len(recorded_times(tmp_path / "calls")) == 1


def test_new_settings_restart_the_window_and_off_ends_the_watchdog(tmp_path: Path, clock: Clock) -> None:
    dog = make(tmp_path, clock)
    clock.t += 9.0
    wd.write_config(dog.dir, 10.0, recording_cmd(tmp_path / "calls"), 1.0)  # another `ensure`
    dog.poll()
    clock.t += 9.5
    dog.poll()
    assert recorded_times(tmp_path / "calls") == []
    wd.write_config(dog.dir, None, recording_cmd(tmp_path / "calls"), 1.0)
    assert dog.poll() is None
    assert recorded_times(tmp_path / "calls") == []


def test_an_invalid_config_keeps_the_previous_settings(tmp_path: Path, clock: Clock) -> None:
    dog = make(tmp_path, clock)
    Path(dog.dir, wd.CONFIG).write_text('{"idle_stop": "soon"}')
    clock.t += 5.0
    dog.poll()
    dog.poll()
    assert dog.state["settings"]["idle_stop"] == 10.0
    assert len(dog.state["errors"]) == 1  # said once, not at every poll
    clock.t += 5.0
    dog.poll()
    assert len(recorded_times(tmp_path / "calls")) == 1


def test_a_failed_power_off_is_retried_after_a_longer_window(tmp_path: Path, clock: Clock) -> None:
    dog = make(tmp_path, clock, idle_stop=2.0, cmd=["sh", "-c", "exit 1"])
    clock.t += 2.0
    dog.poll()
    assert dog.state["poweroff"]["exit_code"] == 1 and dog.state["status"] == "watching"
    issued = dog.state["poweroff"]["issued_at"]
    clock.t += wd.MIN_RETRY - 0.5
    dog.poll()
    assert dog.state["poweroff"]["issued_at"] == issued
    clock.t += 0.5
    dog.poll()
    assert dog.state["poweroff"]["issued_at"] == clock.t
    assert len(dog.state["errors"]) == 2


def test_a_missing_registry_is_recreated_and_means_no_run(tmp_path: Path, clock: Clock) -> None:
    dog = make(tmp_path, clock)
    os.rmdir(os.path.join(dog.dir, wd.RUNS))
    assert dog.scan() == []
    assert os.path.isdir(os.path.join(dog.dir, wd.RUNS))


@pytest.mark.parametrize("text", ["off", "OFF", " off "])
def test_parse_idle_stop_off(text: str) -> None:
    assert wd.parse_idle_stop(text) is None


@pytest.mark.parametrize("text,seconds", [("900", 900.0), ("15m", 900.0), ("1h30m", 5400.0), (2.5, 2.5)])
def test_parse_idle_stop_durations(text: object, seconds: float) -> None:
    assert wd.parse_idle_stop(text) == seconds


@pytest.mark.parametrize("run_dir", ["../../etc/passwd", "/x/\nnew line", "/a b/'\"$(id)", "-rf"])
def test_registrations_stay_in_the_registry_whatever_the_run_dir(tmp_path: Path, run_dir: str) -> None:
    registry = tmp_path / "wd" / wd.RUNS
    entry = Path(wd.register_run(run_dir, os.getpid(), str(tmp_path / "wd")))
    assert entry.parent == registry and list(registry.iterdir()) == [entry]
    assert json.loads(entry.read_text())["run_dir"] == os.path.abspath(run_dir)
    assert wd.unregister_run(run_dir, str(tmp_path / "wd")) is True
    assert list(registry.iterdir()) == []


def test_stop_never_signals_a_process_that_is_not_the_watchdog(tmp_path: Path) -> None:
    directory = tmp_path / "wd"
    wd._prepare_dir(str(directory))
    fd = wd._open_lock(str(directory))
    try:
        assert wd._try_lock(fd)  # this test process plays a watchdog that holds the lock...
        start = wd.process_start(os.getpid())
        stale = {"pid": os.getpid(), "pid_start": (start or 0) + 1}  # ...under a stale state file
        (directory / wd.STATE).write_text(json.dumps(stale))
        result = wd.stop(str(directory), timeout=0.5)
        assert result["ok"] is False and "is not it" in result["error"]
    finally:
        os.close(fd)
