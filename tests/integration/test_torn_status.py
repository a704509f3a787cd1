"""One unreadable status.json never makes a live run `lost`: the run dir stays the source of truth.

Each test corrupts the status.json of a real run mid-run (garbage, a torn half-write, or gone) and
checks what a user sees: `runs status` and `runs list` do not call the run lost, and the run ends
as it really ends. `lost` still comes, with evidence, when the agent and the process are both gone.
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
from typing import Any

import pytest

from tests.integration.test_ssh import (
    make_project,
    remote_project,
)
from tests.support.pythons import FAST_PY
from tests.support.runs import kill_leftover_runs, log_text, poll, run_dir, status_file

pytestmark = pytest.mark.timeout(60)


# Works until the test creates GO, then writes the completion marker and exits 0.
GATED = """\
import os, time
print("working", flush=True)
while not os.path.exists("GO"):
    time.sleep(0.05)
open("training_complete.txt", "w").write("done")
print("finished", flush=True)
"""


@pytest.fixture(autouse=True)
def _no_leftovers(project: Path) -> Iterator[None]:
    yield
    kill_leftover_runs(project)


def start(cli, project: Path) -> tuple[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    (project / "gated.py").write_text(GATED)
    started = cli("local", "train", "gated.py", "--python", FAST_PY)
    assert started.code == 0, started.err
    run_id = started.out.strip()
    poll(lambda: "working" in log_text(project, run_id), 20, "the script's first line")
    state = poll(lambda: status_file(project, run_id).get("pid") and status_file(project, run_id), 10, "a pid")
    return run_id, state


def corrupt(project: Path, run_id: str, text: str = '{"seq": 9, "status": "runn') -> None:
    """Overwrite status.json in place, as a torn or corrupted write leaves it."""
    (run_dir(project, run_id) / "status.json").write_text(text)


def user_view(cli, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:  # type: ignore[no-untyped-def]
    """(`runs status -o json`, this run's row of `runs list -o json`)."""
    status = cli("runs", "status", run_id, "-o", "json")
    assert status.code == 0, status.err
    listed = cli("runs", "list", "-o", "json")
    assert listed.code == 0, listed.err
    row = [r for r in listed.json if r["run_id"] == run_id]
    assert row, listed.out
    return status.json, row[0]


def finish(project: Path) -> None:
    (project / "GO").write_text("")


def alive(pid: int) -> bool:
    try:
        stat = Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_corrupted_status_of_a_live_run_is_repaired_and_the_run_completes(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    run_id, _ = start(cli, project)
    corrupt(project, run_id)
    status, row = user_view(cli, run_id)
    assert status["status"] == "running" and row["status"] == "running", (status, row)
    # The agent rewrote the file it owns: the run dir tells the truth again.
    poll(lambda: status_file(project, run_id).get("status") == "running", 5, "status.json repaired")
    assert any(e["event"] == "status_repaired" for e in map(json.loads, _events(project, run_id)))
    finish(project)
    waited = cli("runs", "wait", run_id, "--timeout", "30", "-o", "json")
    assert waited.code == 0, waited.err
    assert waited.json["status"] == "completed" and waited.json["exit_code"] == 0


def _events(project: Path, run_id: str) -> list[str]:
    return [line for line in (run_dir(project, run_id) / "events.jsonl").read_text().splitlines() if line]


def test_unreadable_status_while_the_agent_cannot_repair_it_is_never_lost(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    run_id, state = start(cli, project)
    os.kill(state["agent_pid"], signal.SIGSTOP)  # alive, but it writes nothing meanwhile
    try:
        for text in ("garbage", '{"seq": 3, "sta', "{}", '{"status": "lost"}'):
            corrupt(project, run_id, text)
            status = cli("runs", "status", run_id, "-o", "json").json
            assert status["status"] == "running", (text, status)
            assert "status.json is unreadable" in status["warning"]
        (run_dir(project, run_id) / "status.json").unlink()
        status, row = user_view(cli, run_id)
        assert status["status"] == "running" and row["status"] == "running", (status, row)
        stop = cli("runs", "stop", run_id, "--now", "--no-wait")
        assert stop.code == 0, stop.err  # a stop request still reaches the (paused) agent
    finally:
        os.kill(state["agent_pid"], signal.SIGCONT)
    waited = cli("runs", "wait", run_id, "--timeout", "30", "-o", "json")
    assert waited.json["status"] == "stopped" and waited.json["termination_status"] == "user_stop", waited.json


def test_follow_through_a_torn_status_ends_completed(cli, project: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (project / "gated.py").write_text(GATED)
    err = tmp_path / "wait.err"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runctl", "local", "train", "gated.py", "--python", FAST_PY, "--wait", "-o", "json"],
            cwd=str(project),
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=dict(os.environ),
        )
    runs = project / ".runctl" / "runs"
    run_id = poll(lambda: next((p.name for p in runs.glob("*")), None) if runs.exists() else None, 20, "a run dir")
    poll(lambda: "working" in log_text(project, run_id), 20, "the script's first line")
    state = poll(lambda: status_file(project, run_id).get("pid") and status_file(project, run_id), 10, "a pid")
    os.kill(state["agent_pid"], signal.SIGSTOP)
    try:
        corrupt(project, run_id)
        time.sleep(2.5)  # the follower reads the torn file and probes liveness at least twice
        assert proc.poll() is None, "the follower gave up on a live run: %s" % err.read_text()
    finally:
        os.kill(state["agent_pid"], signal.SIGCONT)
    finish(project)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.read_text()
    assert json.loads(out)["status"] == "completed"


def test_agent_gone_and_status_unreadable_decided_from_the_process(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    run_id, state = start(cli, project)
    os.kill(state["agent_pid"], signal.SIGKILL)
    poll(lambda: not alive(state["agent_pid"]), 5, "the agent to die")
    corrupt(project, run_id)
    status, row = user_view(cli, run_id)
    assert status["status"] == "running" and row["status"] == "running", (status, row)
    assert "training process still runs" in status["warning"]
    # The script then finishes by itself; its completion marker proves the work was done.
    finish(project)
    poll(lambda: not alive(state["pid"]), 10, "the script to exit")
    waited = cli("runs", "wait", run_id, "--timeout", "30", "-o", "json")
    run = waited.json
    assert (run["status"], run["termination_status"]) == ("completed", "auto_complete"), run
    assert "status.json was unreadable" in run["termination_message"]


def test_lost_needs_evidence_agent_and_process_gone_no_exit(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    run_id, state = start(cli, project)
    os.kill(state["agent_pid"], signal.SIGKILL)
    os.killpg(state["pid"], signal.SIGKILL)
    poll(lambda: not alive(state["agent_pid"]) and not alive(state["pid"]), 5, "agent and script to die")
    corrupt(project, run_id)
    status, _ = user_view(cli, run_id)
    assert (status["status"], status["termination_status"]) == ("lost", "lost"), status
    assert "no exit code was recorded" in status["termination_message"]
    assert "run directory" not in status["termination_message"]


# ---- over SSH: the same probe runs on the host through the agent's command line ----------------


def test_ssh_run_with_a_corrupted_status_is_not_lost_and_completes(sshenv, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    host = sshenv.hosts[0]
    project = make_project(tmp_path, "s-torn", {"gated.py": GATED})
    run_id = sshenv.start(host, "gated.py", cwd=project)
    remote = remote_project(host, "s-torn")
    remote_run = remote / ".runctl" / "runs" / run_id
    poll(lambda: "working" in _read(remote_run / "training.log"), 20, "the script's first line")
    state = poll(lambda: _state(remote_run).get("agent_pid") and _state(remote_run), 10, "the agent's pid")
    os.kill(state["agent_pid"], signal.SIGSTOP)  # the test host shares this machine's pid namespace
    try:
        (remote_run / "status.json").write_text('{"seq": 4, "status": "run')
        run = sshenv.status(run_id, project)
        assert run["status"] == "running", run
        assert "status.json is unreadable" in run["warning"]
        listed = [r for r in sshenv.runs(project) if r["run_id"] == run_id]
        assert listed and listed[0]["status"] == "running", listed
    finally:
        os.kill(state["agent_pid"], signal.SIGCONT)
    (remote / "GO").write_text("")
    waited = sshenv.cli("runs", "wait", run_id, "--timeout", "60", "-o", "json", cwd=project)
    assert waited.code == 0, waited.err
    assert waited.json["status"] == "completed"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _state(remote_run: Path) -> dict[str, Any]:
    try:
        return json.loads((remote_run / "status.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}
