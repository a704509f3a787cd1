"""Local runs end to end, with real processes: the CLI, the detached agent, the training script.

Every test starts `python -m runctl` as a user would and looks at what a user would look at: exit
codes, stdout/stderr, `runs status -o json`, and the files in the run dir and the project dir.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.pythons import FAST_PY, SYSTEM_PY
from tests.support.runs import (
    RUN_ID,
    TERMINAL,
    events,
    latest_run,
    log_text,
    run_dir,
    status_file,
    write_script,
)
from tests.support.runs import poll as _poll

pytestmark = pytest.mark.timeout(60)

RUNCTL = [sys.executable, "-m", "runctl"]
# A plain system Python starts in ~20 ms (a pyenv shim takes ~10x that) and has no runctl installed.
ORDER = ["pending", "provisioning", "syncing", "setting_up", "running", "stopping"]
DOCUMENTED_KEYS = {
    "run_id",
    "name",
    "provider",
    "host",
    "project_dir",
    "run_dir",
    "command",
    "status",
    "exit_code",
    "termination_status",
    "termination_message",
    "created_at",
    "started_at",
    "ended_at",
    "pid",
    "step",
    "epoch",
    "loss",
    "last_checkpoint",
}

SLEEPER = """
import sys, time
ticks = int(sys.argv[1]) if len(sys.argv) > 1 else 10
print("start", flush=True)
for i in range(ticks):
    print("tick %d" % i, flush=True)
    time.sleep(0.1)
print("done", flush=True)
"""


# ---- helpers ----------------------------------------------------------------------------------


# The run's files change within milliseconds here: look more often than the default.
poll = functools.partial(_poll, interval=0.02)


def proc_state(pid: int) -> str | None:
    """The kernel state letter of `pid`, or None when there is no such process."""
    try:
        data = Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return None
    return data[data.rfind(")") + 2 :][:1]


def alive(pid: int) -> bool:
    state = proc_state(pid)
    return state is not None and state != "Z"


def start_time(pid: int) -> str | None:
    try:
        data = Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def start(cli, script: str, *script_args: str, opts: tuple[str, ...] = ()) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """`local train SCRIPT` without --wait, in JSON mode; the run's JSON view."""
    result = cli("local", "train", script, "--python", FAST_PY, *opts, "-o", "json", "--", *script_args)
    assert result.code == 0, result.err
    return result.json


def wait_running(project: Path, run_id: str, log_contains: str = "", timeout: float = 10) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        state = status_file(project, run_id)
        if state.get("status") != "running" or log_contains not in log_text(project, run_id):
            return None
        return state

    return poll(check, timeout, "run %s running with %r in its log" % (run_id, log_contains))


def controller(project: Path, tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path, Path]:
    """A `runctl` process in its own process group (like a terminal's foreground job)."""
    out, err = tmp_path / "controller.out", tmp_path / "controller.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [*RUNCTL, *args],
            cwd=str(project),
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc, out, err


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def one_or_two_lines(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, text
    assert "Traceback" not in text
    return lines


@pytest.fixture(autouse=True)
def reap(project: Path) -> Iterator[list[tuple[int, str | None]]]:
    """Kill whatever a failed test left running: agents, training process groups, extra pids."""
    extra: list[tuple[int, str | None]] = []
    yield extra
    for status_path in project.glob(".runctl/runs/*/status.json"):
        try:
            state = json.loads(status_path.read_text())
        except (OSError, ValueError):
            continue
        for pid_key, start_key, group in (("agent_pid", "agent_start", False), ("pid", "pid_start", True)):
            pid = state.get(pid_key)
            if pid and alive(pid) and start_time(pid) == state.get(start_key):
                try:
                    (os.killpg if group else os.kill)(pid, signal.SIGKILL)
                except OSError:
                    pass
    for pid, started in extra:
        if alive(pid) and start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


# ---- wait, exit codes, output ----------------------------------------------------------------


def test_wait_streams_log_and_completes(cli, project: Path) -> None:
    result = cli("local", "train", "train_stub.py", "--wait", "--", "--epochs", "2", "--steps-per-epoch", "3")
    assert result.code == 0, result.err
    run_id = latest_run(project)
    assert RUN_ID.match(run_id)
    assert "epoch 2/2 step 6 loss=0.1000" in result.out
    assert "Training complete: 2 epochs, 6 steps" in result.out
    # stdout carries exactly the training log; chatter goes to stderr.
    assert result.out == log_text(project, run_id)
    assert run_id in result.err and "completed" in result.err

    status = cli("runs", "status", run_id[:4], "-o", "json")
    assert status.code == 0, status.err
    run = status.json
    assert set(run) >= DOCUMENTED_KEYS
    assert run["run_id"] == run_id
    assert (run["status"], run["exit_code"], run["termination_status"]) == ("completed", 0, "auto_complete")
    assert (run["step"], run["epoch"], run["provider"]) == (6, 2, "local")
    assert run["command"][1:3] == ["train_stub.py", "--epochs"]
    assert run["last_checkpoint"] == str(project / "checkpoints" / "checkpoint_epoch_2.json")

    local = cli("local", "status", "--project-dir", str(project), "-o", "json")
    assert local.code == 0, local.err
    assert local.json["status"] == "completed"
    assert run_id in local.json["evidence"]


def test_nonzero_exit_is_failed_even_with_marker_and_complete_line(cli, project: Path) -> None:
    write_script(
        project,
        "liar.py",
        """
        import pathlib, sys
        print("Training complete", flush=True)
        pathlib.Path("training_complete.txt").write_text("done: accuracy=0.99\\n")
        sys.exit(3)
        """,
    )
    result = cli("local", "train", "liar.py", "--python", FAST_PY, "--wait")
    assert result.code == 1, result.err
    assert "Training complete" in result.out
    run_id = latest_run(project)
    run = cli("runs", "status", run_id, "-o", "json").json
    assert (run["status"], run["exit_code"], run["termination_status"]) == ("failed", 3, "failed")
    assert "code 3" in run["termination_message"]
    assert "failed" in result.err


def test_without_wait_returns_at_once_and_status_is_monotonic(cli, project: Path) -> None:
    view = start(
        cli, "train_stub.py", "--epochs", "3", "--steps-per-epoch", "7", "--delay", "0.09", opts=("--name", "mono")
    )
    returned_at = time.time()
    assert set(view) >= DOCUMENTED_KEYS
    run_id = view["run_id"]
    assert RUN_ID.match(run_id)
    assert (view["status"], view["exit_code"], view["name"]) == ("running", None, "mono")
    assert view["run_dir"] == str(run_dir(project, run_id))
    assert view["project_dir"] == str(project)

    # training.pid is the training process itself: its cmdline is the python script, not a shell.
    pid = int((run_dir(project, run_id) / "training.pid").read_text())
    assert pid == view["pid"]
    assert (project / "training.pid").read_text().strip() == str(pid)
    cmdline = Path("/proc/%d/cmdline" % pid).read_bytes().split(b"\0")
    assert os.path.basename(cmdline[0].decode()).startswith("python"), cmdline
    assert cmdline[1] == b"train_stub.py", cmdline
    assert os.path.basename(os.readlink("/proc/%d/exe" % pid)).startswith("python")

    samples: list[tuple[int, str]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = status_file(project, run_id)
        if state:
            samples.append((int(state["seq"]), state["status"]))
            if state["status"] in TERMINAL:
                break
        time.sleep(0.01)
    seqs = [seq for seq, _ in samples]
    assert seqs == sorted(seqs), "status.json seq went backwards: %s" % seqs
    assert len(set(seqs)) >= 3, seqs
    ranks = [ORDER.index(s) if s in ORDER else len(ORDER) for _, s in samples]
    assert ranks == sorted(ranks), samples
    assert samples[-1][1] == "completed"

    waited = cli("runs", "wait", run_id[:3])
    assert waited.code == 0, waited.err
    assert waited.out == ""
    status = cli("runs", "status", run_id, "-o", "json").json
    assert set(status) >= DOCUMENTED_KEYS
    assert (status["status"], status["exit_code"], status["step"], status["epoch"]) == ("completed", 0, 21, 3)
    # `train` returned as soon as the script was running, well before the ~2 s script ended.
    assert status["ended_at"] - returned_at > 0.8, status["ended_at"] - returned_at
    assert status["started_at"] <= status["ended_at"]
    assert status["created_at"] <= status["started_at"]

    names = [e["event"] for e in events(project, run_id)]
    assert names[0] == "started" and names[-1] == "ended"
    assert "exited" in names
    assert (run_dir(project, run_id) / "training_exit_code.txt").read_text().strip() == "0"
    assert (project / "training_exit_code.txt").read_text().strip() == "0"


def test_without_wait_prints_only_the_id_and_wait_reports_failure(cli, project: Path) -> None:
    write_script(project, "fails.py", "import time, sys\ntime.sleep(0.5)\nprint('oops')\nsys.exit(5)\n")
    result = cli("local", "train", "fails.py", "--python", FAST_PY)
    assert result.code == 0, result.err
    run_id = result.out.strip()
    assert RUN_ID.match(run_id), result.out
    assert "runctl runs wait %s" % run_id in result.err
    waited = cli("runs", "wait", run_id)
    assert waited.code == 1
    assert "failed" in waited.err
    run = status_file(project, run_id)
    assert (run["status"], run["exit_code"]) == ("failed", 5)
    assert "oops" in run["termination_message"]


def test_mirrors_follow_latest_run_and_stale_marker_never_completes(cli, project: Path) -> None:
    stub_args = ("--epochs", "1", "--steps-per-epoch", "2", "--delay", "0")
    first = cli("local", "train", "train_stub.py", "--python", FAST_PY, "--wait", "--", *stub_args)
    assert first.code == 0, first.err
    first_id = latest_run(project)
    stale = project / "training_complete.txt"
    assert stale.exists(), "train_stub writes its completion marker"
    stale_text = stale.read_text()

    # Runs for a few agent ticks (each looks for a completion marker), then fails.
    write_script(project, "slow_fail.py", "import time, sys\nprint('working')\ntime.sleep(0.5)\nsys.exit(1)\n")
    second = cli("local", "train", "slow_fail.py", "--python", FAST_PY, "--wait")
    assert second.code == 1, second.err
    second_id = latest_run(project)
    assert second_id != first_id
    run = status_file(project, second_id)
    assert (run["status"], run["exit_code"]) == ("failed", 1)

    moved = run_dir(project, second_id) / "stale_training_complete.txt"
    assert moved.read_text() == stale_text
    assert not stale.exists()
    assert any(e["event"] == "stale_marker_moved" for e in events(project, second_id))

    # The project dir shows the latest run, in the original system's file names.
    link = project / "training.log"
    assert link.is_symlink()
    assert link.resolve() == (run_dir(project, second_id) / "training.log").resolve()
    assert link.read_text() == "working\n"
    assert (project / "training.pid").read_text().strip() == str(run["pid"])
    assert (project / "training_exit_code.txt").read_text().strip() == "1"
    assert (run_dir(project, first_id) / "training_exit_code.txt").read_text().strip() == "0"
    assert latest_run(project) == second_id


# ---- what reaches the script ------------------------------------------------------------------


def test_environment_and_helper_import_without_runctl_installed(cli, project: Path, runctl_home: Path) -> None:
    probe = subprocess.run([SYSTEM_PY, "-c", "import runctl"], capture_output=True) if FAST_PY == SYSTEM_PY else None
    if probe is None or probe.returncode == 0:
        pytest.skip("needs a system python3 without runctl installed")
    write_script(
        project,
        "show_env.py",
        """
        import json, os, sys
        import runctl.training as rt
        keys = ["RUNCTL_RUN_ID", "RUNCTL_RUN_DIR", "RUNCTL_PROJECT_DIR", "RUNCTL_CHECKPOINT_DIR",
                "RUNCTL_STOP_FILE", "RUNCTL_METRICS_FILE", "PYTHONUNBUFFERED", "FOO", "EQ", "EMPTY"]
        out = {k: os.environ.get(k) for k in keys}
        out.update(executable=sys.executable, helper=rt.__file__, cwd=os.getcwd(), run_id=rt.run_id(),
                   pythonpath=os.environ.get("PYTHONPATH", ""))
        with open("env.json", "w") as handle:
            json.dump(out, handle)
        rt.report(step=7, epoch=1, loss=0.5, total_epochs=1)
        """,
    )
    result = cli(
        "local",
        "train",
        "show_env.py",
        "--python",
        SYSTEM_PY,
        "--env",
        "FOO=bar baz",
        "-e",
        "EQ=a=b",
        "--env",
        "EMPTY=",
        "--wait",
    )
    assert result.code == 0, result.out + result.err
    run_id = latest_run(project)
    env = json.loads((project / "env.json").read_text())
    rdir = run_dir(project, run_id)
    assert env["RUNCTL_RUN_ID"] == run_id == env["run_id"]
    assert env["RUNCTL_RUN_DIR"] == str(rdir)
    assert env["RUNCTL_PROJECT_DIR"] == str(project) == env["cwd"]
    assert env["RUNCTL_CHECKPOINT_DIR"] == str(project / "checkpoints")
    assert env["RUNCTL_STOP_FILE"] == str(rdir / "STOP_TRAINING")
    assert env["RUNCTL_METRICS_FILE"] == str(rdir / "metrics.jsonl")
    assert env["PYTHONUNBUFFERED"] == "1"
    assert (env["FOO"], env["EQ"], env["EMPTY"]) == ("bar baz", "a=b", "")
    assert os.path.realpath(env["executable"]) == os.path.realpath(SYSTEM_PY)
    # runctl.training came from the agent zip, first on PYTHONPATH.
    agent_zip = env["pythonpath"].split(os.pathsep)[0]
    assert agent_zip.endswith(".pyz") and Path(agent_zip).is_file()
    assert env["helper"].startswith(agent_zip + os.sep)
    assert str(runctl_home) in agent_zip
    run = status_file(project, run_id)
    assert (run["status"], run["step"], run["loss"]) == ("completed", 7, 0.5)


def test_script_args_reach_the_script_verbatim(cli, project: Path, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    args = [
        "two words",
        "it's",
        'say "hi"',
        "$(touch %s)" % pwned,
        "`touch %s`" % pwned,
        "; touch %s" % pwned,
        "&& touch %s" % pwned,
        "| tee %s" % pwned,
        "> %s" % pwned,
        "line1\nline2",
        "δ unicode ✓ 🙂",
        "*",
        "$HOME",
        "back\\slash",
        "  padded  ",
        "--epochs",
        "-x",
        "--",
        "",
    ]
    write_script(
        project,
        "argv.py",
        "import json, sys\nopen('argv.json', 'w', encoding='utf-8').write(json.dumps(sys.argv[1:]))\n",
    )
    result = cli("local", "train", "argv.py", "--python", FAST_PY, "--wait", "--", *args)
    assert result.code == 0, result.err
    assert json.loads((project / "argv.json").read_text(encoding="utf-8")) == args
    assert not pwned.exists(), "an argument was executed by a shell"
    spec = read_json(run_dir(project, latest_run(project)) / "spec.json")
    assert spec["command"][1:] == ["argv.py", *args]
    assert spec["script_args"] == args


def test_executable_script_that_is_not_python_runs(cli, project: Path) -> None:
    write_script(project, "train.sh", '#!/bin/sh\necho "shell got [$1] [$2]"\nexit 0\n', mode=0o755)
    result = cli("local", "train", "train.sh", "--wait", "--", "a b", "$(nope)")
    assert result.code == 0, result.err
    assert "shell got [a b] [$(nope)]" in result.out
    assert status_file(project, latest_run(project))["status"] == "completed"
    spec = read_json(run_dir(project, latest_run(project)) / "spec.json")
    assert spec["command"] == ["./train.sh", "a b", "$(nope)"]


# ---- detachment ------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP], ids=["SIGKILL", "SIGHUP"])
def test_killing_the_controller_changes_nothing_for_the_run(cli, project: Path, tmp_path: Path, sig: int) -> None:
    write_script(project, "sleeper.py", SLEEPER)
    proc, out, _ = controller(
        project, tmp_path, "local", "train", "sleeper.py", "--python", FAST_PY, "--wait", "--", "10"
    )
    run_id = poll(lambda: latest_run(project), 10, "the run to be created")
    wait_running(project, run_id, "tick 0")
    poll(lambda: b"tick 0" in out.read_bytes(), 10, "the controller to stream the log")
    pid = status_file(project, run_id)["pid"]
    os.killpg(proc.pid, sig)
    assert proc.wait(timeout=10) == -sig
    assert alive(pid), "the training process died with its controller"

    waited = cli("runs", "wait", run_id, timeout=30)
    assert waited.code == 0, waited.err
    run = status_file(project, run_id)
    assert (run["status"], run["exit_code"]) == ("completed", 0)
    assert log_text(project, run_id).endswith("tick 9\ndone\n")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killing_the_controller_just_after_the_script_started(cli, project: Path, tmp_path: Path, sig: int) -> None:
    """The script is running (training.pid written) but `train` has not returned yet: still a detached run."""
    write_script(project, "sleeper.py", SLEEPER)
    proc, _, err = controller(
        project, tmp_path, "local", "train", "sleeper.py", "--python", FAST_PY, "--wait", "--", "6"
    )
    mirror = project / "training.pid"  # written right after the script was started
    poll(mirror.exists, 10, "training.pid", interval=0)
    os.killpg(proc.pid, sig)
    code = proc.wait(timeout=10)
    run_id = latest_run(project)
    if sig == signal.SIGINT:
        assert code == 130
        assert "runctl runs wait %s" % run_id in err.read_text()
    waited = cli("runs", "wait", run_id, "--timeout", "10")
    assert waited.code == 0, waited.err
    assert status_file(project, run_id)["status"] == "completed"
    assert log_text(project, run_id).endswith("tick 5\ndone\n")


def test_ctrl_c_detaches_with_exit_130_and_the_run_goes_on(cli, project: Path, tmp_path: Path) -> None:
    write_script(project, "sleeper.py", SLEEPER)
    proc, out, err = controller(
        project, tmp_path, "local", "train", "sleeper.py", "--python", FAST_PY, "--wait", "--", "10"
    )
    run_id = poll(lambda: latest_run(project), 10, "the run to be created")
    poll(lambda: b"tick 0" in out.read_bytes(), 10, "the controller to stream the log")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=10) == 130
    message = err.read_text()
    assert "Traceback" not in message
    assert "runctl runs wait %s" % run_id in message
    assert status_file(project, run_id)["status"] == "running"

    waited = cli("runs", "wait", run_id, timeout=30)
    assert waited.code == 0, waited.err
    assert status_file(project, run_id)["status"] == "completed"


def test_wait_timeout_exits_3_and_the_run_keeps_going(cli, project: Path) -> None:
    write_script(project, "sleeper.py", SLEEPER)
    began = time.monotonic()
    result = cli("local", "train", "sleeper.py", "--python", FAST_PY, "--wait", "--timeout", "1", "--", "300")
    took = time.monotonic() - began
    assert result.code == 3, result.err
    assert took < 5, "--timeout 1 returned after %.1fs" % took
    run_id = latest_run(project)
    assert "runctl runs wait %s" % run_id in result.err
    assert "tick 0" in result.out
    assert status_file(project, run_id)["status"] == "running"

    waited = cli("runs", "wait", run_id, "--timeout", "1s")
    assert waited.code == 3, waited.err
    one_or_two_lines(waited.err)
    assert status_file(project, run_id)["status"] == "running"

    stopped = cli("runs", "stop", run_id, "--grace", "0")
    assert stopped.code == 0, stopped.err
    assert status_file(project, run_id)["status"] == "stopped"


# ---- stopping --------------------------------------------------------------------------------


def test_stop_a_script_that_ignores_the_stop_file_and_exits_0_on_sigterm(cli, project: Path) -> None:
    write_script(
        project,
        "stubborn.py",
        """
        import signal, sys, time
        def on_term(signum, frame):
            print("got SIGTERM", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
        """,
    )
    run_id = start(cli, "stubborn.py")["run_id"]
    wait_running(project, run_id, "ready")
    stopped = cli("runs", "stop", run_id, "--grace", "0.5")
    assert stopped.code == 0, stopped.err
    run = status_file(project, run_id)
    assert (run["status"], run["termination_status"], run["exit_code"]) == ("stopped", "user_stop", 0)
    assert "got SIGTERM" in log_text(project, run_id)
    assert (run_dir(project, run_id) / "STOP_TRAINING").exists()
    signals = [e["signal"] for e in events(project, run_id) if e["event"] == "signal"]
    assert signals == ["SIGTERM"]
    assert cli("runs", "wait", run_id).code == 1

    again = cli("runs", "stop", run_id, "--grace", "0")
    assert again.code == 2
    lines = one_or_two_lines(again.err)
    assert "already ended" in lines[0] and run_id in lines[0]


CHILDREN = """
import json, os, subprocess, sys, time
child = subprocess.Popen(["sleep", "1000"])
subprocess.run(["sh", "-c", "sleep 1000 & echo $! > grandchild.pid"], check=True)
escaper = subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(1000)"])
while os.getsid(escaper.pid) != escaper.pid:
    time.sleep(0.01)
kids = {"child": child.pid, "grandchild": int(open("grandchild.pid").read()), "setsid": escaper.pid}
with open("kids.json", "w") as handle:
    json.dump(kids, handle)
print("ready", flush=True)
while sys.argv[1] != "exit" or not os.path.exists("GO"):
    time.sleep(0.05)
"""


@pytest.mark.parametrize("how", ["stop", "exit"])
def test_no_child_outlives_its_run(cli, project: Path, how: str, reap: list[tuple[int, str | None]]) -> None:
    write_script(project, "spawner.py", CHILDREN)
    run_id = start(cli, "spawner.py", how)["run_id"]
    kids = poll(lambda: read_json(project / "kids.json"), 10, "the script to start its children")
    reap.extend((pid, start_time(pid)) for pid in kids.values())
    pgid = status_file(project, run_id)["pid"]
    assert os.getpgid(kids["grandchild"]) == pgid
    assert os.getsid(kids["setsid"]) == kids["setsid"] != pgid
    if how == "stop":
        result = cli("runs", "stop", run_id, "--grace", "0.5")
        expected = "stopped"
    else:
        (project / "GO").write_text("")  # only now: the run's end may not race the checks above
        result = cli("runs", "wait", run_id)
        expected = "completed"
    assert result.code == 0, result.err
    assert status_file(project, run_id)["status"] == expected
    survivors = {name: pid for name, pid in kids.items() if alive(pid)}
    assert not survivors, "processes outlived run %s: %s" % (run_id, survivors)


def test_sigterm_ignored_gets_sigkill_after_term_grace(cli, project: Path) -> None:
    write_script(
        project,
        "deaf.py",
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
        """,
    )
    run_id = start(cli, "deaf.py")["run_id"]
    wait_running(project, run_id, "ready")
    began = time.monotonic()
    result = cli("runs", "stop", run_id, "--grace", "0", timeout=40)
    took = time.monotonic() - began
    assert result.code == 0, result.err
    assert 9 <= took <= 20, took
    run = status_file(project, run_id)
    assert (run["status"], run["termination_status"], run["exit_code"]) == ("stopped", "user_stop", 137)
    signals = [e["signal"] for e in events(project, run_id) if e["event"] == "signal"]
    assert signals == ["SIGTERM", "SIGKILL"]
    assert not alive(run["pid"])


# ---- lost runs -------------------------------------------------------------------------------


def test_agent_and_process_killed_is_lost(cli, project: Path) -> None:
    write_script(project, "sleeper.py", SLEEPER)
    run_id = start(cli, "sleeper.py", "300")["run_id"]
    state = wait_running(project, run_id, "tick 0")
    os.kill(state["agent_pid"], signal.SIGKILL)
    poll(lambda: not alive(state["agent_pid"]), 5, "the agent to die")
    os.kill(state["pid"], signal.SIGKILL)
    poll(lambda: not alive(state["pid"]), 5, "the training process to die")

    run = cli("runs", "status", run_id, "-o", "json")
    assert run.code == 0, run.err
    assert (run.json["status"], run.json["termination_status"], run.json["exit_code"]) == ("lost", "lost", None)
    waited = cli("runs", "wait", run_id)
    assert waited.code == 1
    assert "lost" in waited.err


def test_agent_killed_then_process_exits_is_lost_never_completed(cli, project: Path) -> None:
    write_script(
        project,
        "orphan.py",
        """
        import os, time
        print("ready", flush=True)
        while not os.path.exists("release"):
            time.sleep(0.02)
        try:
            print("Training complete", flush=True)
        finally:
            os._exit(0)
        """,
    )
    run_id = start(cli, "orphan.py")["run_id"]
    state = wait_running(project, run_id, "ready")
    os.kill(state["agent_pid"], signal.SIGKILL)
    poll(lambda: not alive(state["agent_pid"]), 5, "the agent to die")

    run = cli("runs", "status", run_id, "-o", "json")
    assert run.code == 0, run.err
    assert run.json["status"] == "running"
    assert run.json.get("agent_alive") is False
    assert "agent" in run.json.get("warning", "")
    text = cli("runs", "status", run_id)
    assert "warning" in text.out and "agent" in text.out

    (project / "release").write_text("go\n")
    poll(lambda: not alive(state["pid"]), 5, "the training process to exit")
    run = cli("runs", "status", run_id, "-o", "json").json
    assert (run["status"], run["termination_status"]) == ("lost", "lost")
    assert cli("runs", "wait", run_id).code == 1
    local = cli("local", "status", "--project-dir", str(project), "-o", "json")
    assert (local.code, local.json["status"]) == (1, "lost")


def test_run_dir_removed_while_running_does_not_hang_wait(cli, project: Path) -> None:
    write_script(project, "sleeper.py", SLEEPER)
    run_id = start(cli, "sleeper.py", "300")["run_id"]
    state = wait_running(project, run_id, "tick 0")
    for pid in (state["agent_pid"], state["pid"]):
        os.kill(pid, signal.SIGKILL)
        poll(lambda pid=pid: not alive(pid), 5, "pid %d to die" % pid)
    shutil.rmtree(project / ".runctl")

    waited = cli("runs", "wait", run_id, "--timeout", "2")
    assert waited.code in (1, 4), (waited.code, waited.err)
    assert "Traceback" not in waited.err
    run = cli("runs", "status", run_id, "-o", "json").json
    assert run["status"] != "running"


# ---- plain directories (the original system's files, no runctl) --------------------------------


def test_local_status_classifies_plain_directories(cli, tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    now = time.time()

    def make(name: str, files: dict[str, tuple[str, float]]) -> Path:
        root = tmp_path / name
        root.mkdir()
        for filename, (content, age) in files.items():
            (root / filename).write_text(content)
            os.utime(root / filename, (now - age, now - age))
        return root

    cases = {
        "lost": ({"training.pid": ("%d\n" % dead.pid, 20)}, 1, "lost"),
        "completed": ({"training.pid": ("%d\n" % dead.pid, 20), "training_exit_code.txt": ("0\n", 10)}, 0, "completed"),
        "failed": ({"training.pid": ("%d\n" % dead.pid, 20), "training_exit_code.txt": ("1\n", 10)}, 1, "failed"),
        "stale": ({"training.pid": ("%d\n" % dead.pid, 10), "training_exit_code.txt": ("0\n", 20)}, 1, "lost"),
        "marker": ({"training_complete.txt": ("accuracy=0.98\n", 10)}, 0, "completed"),
        "hint": ({"training.log": ("epoch 3/3\nTraining complete\n", 10)}, 1, "unknown"),
    }
    results = {}
    for name, (files, code, expected) in cases.items():
        root = str(make(name, files))
        if name == "lost":  # text mode: the status on stdout, the evidence on stderr
            text = cli("local", "status", "--project-dir", root, cwd=tmp_path)
            assert (text.code, text.out.split()[0]) == (code, expected), (text.out, text.err)
            assert str(dead.pid) in text.err
            continue
        result = cli("local", "status", "--project-dir", root, "-o", "json", cwd=tmp_path)
        assert (result.code, result.json["status"]) == (code, expected), (name, result.out, result.err)
        results[name] = result.json
    assert results["stale"]["stale_exit_code_ignored"] is True
    assert results["stale"]["exit_code"] is None
    assert results["completed"]["stale_exit_code_ignored"] is False
    assert results["failed"]["exit_code"] == 1
    assert "hint" in results["hint"]["termination_message"]
    assert "Training complete" in results["hint"]["termination_message"]


# ---- many at once ----------------------------------------------------------------------------


def test_parallel_runs_from_a_shell_loop(cli, project: Path, tmp_path: Path) -> None:
    stub = (project / "train_stub.py").read_text()
    for name in ("a", "b", "c", "d"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "pyproject.toml").write_text("")
        (tmp_path / name / "train_stub.py").write_text(stub)
    loop = textwrap.dedent(
        """
        i=0
        for d in a a b c d; do
          i=$((i+1))
          ( "$RUNCTL_PY" -m runctl local train --project-dir "$d" "$d/train_stub.py" --python "$FAST_PY" --wait \\
              -- --epochs 1 --steps-per-epoch 5 --delay 0.02 > "out.$i" 2> "err.$i"; echo $? > "rc.$i" ) &
        done
        wait
        """
    )
    env = {**os.environ, "RUNCTL_PY": sys.executable, "FAST_PY": FAST_PY}
    subprocess.run(["sh", "-c", loop], cwd=str(tmp_path), env=env, check=True, timeout=60)
    for i in range(1, 6):
        err = (tmp_path / ("err.%d" % i)).read_text()
        assert "locked" not in err and "Traceback" not in err, err
        assert (tmp_path / ("rc.%d" % i)).read_text().strip() == "0", err
    listed = cli("runs", "list", "--all", "-o", "json")
    assert listed.code == 0, listed.err
    runs = listed.json
    assert len({r["run_id"] for r in runs}) == 5
    assert [r["status"] for r in runs] == ["completed"] * 5
    assert sorted(Path(r["project_dir"]).name for r in runs) == ["a", "a", "b", "c", "d"]
    assert len(list((tmp_path / "a" / ".runctl" / "runs").iterdir())) == 2
