"""Every child of a run ends with it, even one that clears its environment and starts its own session.

`setsid env -i sleep N` leaves the process group and carries no RUNCTL_RUN_ID; a double fork
(`setsid env -i sh -c 'sleep N &'`) also loses its parent. The agent tracks them anyway, stops them at the
end of the run and on `runs stop`, and says in events.jsonl what it killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runctl.agent import descendants, procs
from tests.support.runs import events, kill_leftover_runs, log_text, poll, status_file

pytestmark = pytest.mark.timeout(60)

SYSTEM_PY = "/usr/bin/python3"
FAST_PY = SYSTEM_PY if os.access(SYSTEM_PY, os.X_OK) else sys.executable

# Starts two escapees, records their pids in the project, then works until GO (or forever).
ESCAPER = """\
import os, subprocess, sys, time
plain = subprocess.Popen(["setsid", "env", "-i", "sleep", "%(secs)s"])
orphan = subprocess.run(
    ["setsid", "env", "-i", "/bin/sh", "-c", "sleep %(secs2)s >/dev/null 2>&1 & echo $!"],
    capture_output=True,
    text=True,
).stdout.strip()
open("escapees.txt", "w").write("%%d %%s\\n" %% (plain.pid, orphan))
print("children started", flush=True)
while "--forever" in sys.argv or not os.path.exists("GO"):
    time.sleep(0.05)
"""


@pytest.fixture(autouse=True)
def _no_leftovers(project: Path) -> Iterator[None]:
    yield
    kill_leftover_runs(project)
    path = project / "escapees.txt"
    if path.exists():
        for pid in path.read_text().split():
            if procs.is_alive(int(pid)) and "sleep" in descendants.command_of(int(pid)):
                os.kill(int(pid), signal.SIGKILL)


def start(cli, project: Path, secs: int, *args: str, env: dict[str, str] | None = None) -> tuple[str, list[int]]:  # type: ignore[no-untyped-def]
    (project / "escaper.py").write_text(ESCAPER % {"secs": secs, "secs2": secs + 1})
    started = cli("local", "train", "escaper.py", "--python", FAST_PY, "--", *args, env=env)
    assert started.code == 0, started.err
    run_id = started.out.strip()
    poll(lambda: "children started" in log_text(project, run_id), 20, "the children to start")
    pids = [int(p) for p in (project / "escapees.txt").read_text().split()]
    for pid in pids:
        assert procs.is_alive(pid)
        environ = Path("/proc/%d/environ" % pid).read_bytes()
        assert b"RUNCTL_RUN_ID" not in environ, "the child carries no run id"
        assert os.getpgid(pid) != status_file(project, run_id)["pid"], "the child left the run's process group"
    return run_id, pids


def killed_pids(project: Path, run_id: str) -> dict[int, str]:
    """pid -> command of every process events.jsonl says was signalled outside the process group."""
    found: dict[int, str] = {}
    for event in events(project, run_id):
        for entry in event.get("processes") or []:
            found[int(entry["pid"])] = entry["command"]
    return found


def cgroup_allowed() -> bool:
    """Whether this machine lets the agent make a cgroup v2 of its own (root with cgroup2 mounted)."""
    parent = descendants.own_cgroup_dir()
    return os.geteuid() == 0 and parent is not None and os.access(parent, os.W_OK)


def cgroup_of(pid: int) -> str:
    lines = Path("/proc/%d/cgroup" % pid).read_text().splitlines()
    return next((line[3:] for line in lines if line.startswith("0::")), "")


@pytest.mark.parametrize("tracking", ["cgroup", "process-tree"])
def test_children_that_escaped_session_and_environment_end_with_the_run(cli, project: Path, tracking: str) -> None:  # type: ignore[no-untyped-def]
    if tracking == "cgroup" and not cgroup_allowed():
        pytest.skip("this machine allows no cgroup v2 of the agent's own")
    env = {"RUNCTL_CGROUP": "off"} if tracking == "process-tree" else {}
    run_id, pids = start(cli, project, 1000, env=env)
    how = next(e for e in events(project, run_id) if e["event"] == "started")
    assert how["subreaper"] is True
    if tracking == "cgroup":
        assert how["cgroup"] and all(cgroup_of(pid).endswith("/runctl-" + run_id) for pid in pids), how
    else:
        assert how["cgroup"] is None
    (project / "GO").write_text("")
    waited = cli("runs", "wait", run_id, "--timeout", "30", "-o", "json")
    assert waited.code == 0, waited.err
    assert waited.json["status"] == "completed"
    poll(lambda: not any(procs.is_alive(p) for p in pids), 10, "the escaped children to be gone")
    killed = killed_pids(project, run_id)
    assert killed.get(pids[0]) == "sleep 1000" and killed.get(pids[1]) == "sleep 1001", killed
    assert any(e["event"] == "processes_killed" for e in events(project, run_id))
    if how["cgroup"]:
        poll(lambda: not Path(how["cgroup"]).exists(), 5, "the run's cgroup to be removed")


def test_runs_stop_ends_the_escaped_children_too(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    run_id, pids = start(cli, project, 1002, "--forever")
    stopped = cli("runs", "stop", run_id, "--now", "-o", "json")
    assert stopped.code == 0, stopped.err
    assert stopped.json["status"] == "stopped"
    poll(lambda: not any(procs.is_alive(p) for p in pids), 10, "the escaped children to be gone")
    term = [e for e in events(project, run_id) if e["event"] == "signal" and e["signal"] == "SIGTERM"]
    assert {p["pid"] for p in term[0]["processes"]} == set(pids), term


def test_a_recorded_pid_whose_start_time_changed_is_never_signalled() -> None:
    """A pid reused by an unrelated process (same pid, another start time) is left alone."""
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        tracker = descendants.Tracker(root=-1, run_id="no-such-run")
        tracker.known[stranger.pid] = descendants.Known(stranger.pid, "1")  # recorded, then "reused"
        assert tracker.signal_all(signal.SIGKILL) == []
        time.sleep(0.1)
        assert stranger.poll() is None, "the stranger was killed"
        real = descendants.Known(stranger.pid, procs.start_time(stranger.pid) or "")
        tracker.known[stranger.pid] = real
        assert [p["pid"] for p in tracker.signal_all(signal.SIGKILL)] == [stranger.pid]
        assert stranger.wait(timeout=5) == -signal.SIGKILL
    finally:
        if stranger.poll() is None:
            stranger.kill()
            stranger.wait()


@pytest.mark.parametrize("tracking", ["cgroup", "process-tree"])
def test_stop_after_the_agent_died_still_ends_the_escaped_children(cli, project: Path, tracking: str) -> None:  # type: ignore[no-untyped-def]
    """What the agent recorded (descendants.jsonl, its cgroup) outlives it: a later stop uses it."""
    if tracking == "cgroup" and not cgroup_allowed():
        pytest.skip("this machine allows no cgroup v2 of the agent's own")
    env = {"RUNCTL_CGROUP": "off"} if tracking == "process-tree" else {}
    run_id, pids = start(cli, project, 1003, "--forever", env=env)
    poll(lambda: len(killed_or_recorded(project, run_id) & set(pids)) == 2, 10, "the children to be recorded")
    agent = status_file(project, run_id)["agent_pid"]
    os.kill(agent, signal.SIGKILL)
    poll(lambda: not procs.is_alive(agent), 5, "the agent to die")
    stopped = cli("runs", "stop", run_id, "--grace", "0")
    assert stopped.code == 0, stopped.err
    poll(lambda: not any(procs.is_alive(p) for p in pids), 15, "the escaped children to be gone")
    assert set(pids) <= set(killed_pids(project, run_id)), events(project, run_id)


def killed_or_recorded(project: Path, run_id: str) -> set[int]:
    path = project / ".runctl" / "runs" / run_id / "descendants.jsonl"
    if not path.exists():
        return set()
    return {json.loads(line)["pid"] for line in path.read_text().splitlines() if line.strip()}


def test_empty_run_cgroups_left_by_killed_agents_are_swept_never_populated_ones() -> None:
    if not cgroup_allowed():
        pytest.skip("this machine allows no cgroup v2 of the agent's own")
    parent = descendants.own_cgroup_dir()
    assert parent is not None
    empty = descendants.RunCgroup(os.path.join(parent, "runctl-sweeptest-empty"))
    busy = descendants.RunCgroup(os.path.join(parent, "runctl-sweeptest-busy"))
    other = os.path.join(parent, "not-runctl-sweeptest")
    for path in (empty.path, busy.path, other):
        os.mkdir(path)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert busy.add(sleeper.pid)
        descendants.sweep_empty_cgroups(parent, older_than=0)
        assert not os.path.exists(empty.path)
        assert os.path.isdir(busy.path) and busy.members() == [sleeper.pid]
        assert os.path.isdir(other), "only runctl's own cgroups are ever touched"
    finally:
        sleeper.kill()
        sleeper.wait()
        for path in (busy.path, other, empty.path):
            poll(lambda path=path: not os.path.exists(path) or _rmdir(path), 5, "removing %s" % path)


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
        return True
    except OSError:
        return False
