"""A run whose agent died can still be stopped gracefully, and then says it was stopped (not lost)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.support.runs import log_text, poll, status_file

SCRIPT = """\
import os, time
stop = os.environ["RUNCTL_STOP_FILE"]
print("working", flush=True)
while not os.path.exists(stop):
    time.sleep(0.05)
open("saved.txt", "w").write("checkpoint")
"""


def test_stop_after_the_agent_died_is_graceful_and_recorded(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    (project / "loop.py").write_text(SCRIPT)
    started = cli("local", "train", "loop.py")
    assert started.code == 0, started.err
    run_id = started.out.strip()
    poll(lambda: "working" in log_text(project, run_id), 20, "the script's first line")
    state = status_file(project, run_id)
    os.kill(state["agent_pid"], signal.SIGKILL)
    pid = state["pid"]

    stopped = cli("runs", "stop", run_id, "--grace", "5")
    assert stopped.code == 0, stopped.err
    run = cli("runs", "status", run_id, "-o", "json").json
    assert run["status"] == "stopped" and run["termination_status"] == "user_stop"
    assert "agent was gone" in run["termination_message"]
    assert (project / "saved.txt").read_text() == "checkpoint"  # it saw STOP_TRAINING and saved first
    assert not Path("/proc/%d" % pid).exists() or "Z" in Path("/proc/%d/stat" % pid).read_text().split(")")[-1][:3]


def test_script_keeps_running_and_logging_when_its_agent_is_killed(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    started = cli("local", "train", "train_stub.py", "--", "--epochs", "2", "--steps-per-epoch", "15", "--delay", "0.1")
    assert started.code == 0, started.err
    run_id = started.out.strip()
    poll(lambda: "step 3 " in log_text(project, run_id), 20, "the third step")
    os.kill(status_file(project, run_id)["agent_pid"], signal.SIGKILL)

    waited = cli("runs", "wait", run_id, "--timeout", "30")
    run = cli("runs", "status", run_id, "-o", "json").json
    # Nothing records the exit code any more, but the script's own completion marker proves the work is done.
    assert (run["status"], run["termination_status"]) == ("completed", "auto_complete"), run
    assert waited.code == 0
    log = log_text(project, run_id)
    assert all("step %d " % n in log for n in range(1, 31)), "lines written after the agent died are in the log"
