"""The host's end-of-run step (spec `on_end`) as real processes: an agent, a controller that dies.

The command is always a harmless one (it appends the time to a file); never a power-off. Runs are
started the way `runctl local train` starts them (the start pipeline: a store record, the agent zip),
with an `on_end` block in the spec, and followed by a real `runctl runs wait` process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.runs import events, kill_leftover_runs, poll, run_dir, status_file, write_script

START = textwrap.dedent(
    """
    import json, sys
    from runctl import providers
    from runctl.pipeline import Start, build_spec
    from runctl.providers.base import StartRequest
    from runctl.store import Store

    script, on_end = sys.argv[1], json.loads(sys.argv[2])
    provider, request = providers.get("local"), StartRequest("local", script)
    spec, root = build_spec(provider, request)
    spec.on_end = on_end
    Start(Store(), provider, request, spec, root).run()
    print(spec.run_id)
    """
)

# Runs until the test creates `go`, writing a checkpoint before and after.
TRAIN = """
    import os, time
    os.makedirs("checkpoints", exist_ok=True)
    with open("checkpoints/ckpt_1.pt", "wb") as f:
        f.write(b"x" * 1000)
    print("step=1 loss=0.5", flush=True)
    deadline = time.time() + 60
    while not os.path.exists("go") and time.time() < deadline:
        time.sleep(0.05)
    with open("checkpoints/ckpt_2.pt", "wb") as f:
        f.write(b"y" * 2000)
    print("step=2 loss=0.25", flush=True)
"""


@pytest.fixture(autouse=True)
def _cleanup(project: Path) -> Iterator[None]:
    yield
    kill_leftover_runs(project)


@contextlib.contextmanager
def growing(path: Path, stop: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A writer that appends to `path` every 0.1 s until the block ends: not a process of the run
    (the agent would stop it), so the run's end does not end it."""
    code = "import os, sys, time\nwhile not os.path.exists(sys.argv[2]):\n"
    code += "    open(sys.argv[1], 'ab').write(b'z' * 100)\n    time.sleep(0.1)\n"
    grower = subprocess.Popen([sys.executable, "-c", code, str(path), str(stop)])
    try:
        yield grower
    finally:
        stop.touch()
        grower.wait(10)


def finished(project: Path, run_id: str) -> dict[str, Any]:
    """on_end.json once the command has returned ({} before)."""
    found = result_file(project, run_id)
    return found if found.get("ended_at") else {}


def recording(record: Path) -> list[str]:
    return [sys.executable, "-c", "import sys, time; open(sys.argv[1], 'a').write('%f\\n' % time.time())", str(record)]


def start(cli_env: dict[str, str], project: Path, script: str, on_end: dict[str, Any]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", START, script, json.dumps(on_end)],
        cwd=str(project),
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def running(cli_env: dict[str, str], project: Path, on_end: dict[str, Any]) -> str:
    """A TRAIN run with `on_end`, once it reported its first metric (it then waits for `go`)."""
    run_id = start(cli_env, project, write_script(project, "t.py", TRAIN), on_end)
    poll(lambda: status_file(project, run_id).get("step") == 1, 20, "the run's first metric")
    return run_id


@pytest.fixture
def env(runctl_home: Path) -> dict[str, str]:
    return dict(os.environ)


def agent_cli(*args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "runctl.agent", *args], capture_output=True, text=True, timeout=30)
    return proc.returncode, json.loads(proc.stdout)


def result_file(project: Path, run_id: str) -> dict[str, Any]:
    try:
        return json.loads((run_dir(project, run_id) / "on_end.json").read_text())
    except (OSError, ValueError):
        return {}


def agent_gone(project: Path, run_id: str) -> bool:
    pid = status_file(project, run_id).get("agent_pid")
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return True
    # A zombie (its launcher's child) counts as gone.
    try:
        return Path("/proc/%d/stat" % int(pid)).read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def names(project: Path, run_id: str) -> list[str]:
    return [e["event"] for e in events(project, run_id)]


def test_the_agent_performs_on_end_once_with_its_controller_sigkilled(
    project: Path, env: dict[str, str], tmp_path: Path
) -> None:
    record = tmp_path / "on_end_calls"
    script = write_script(project, "t.py", TRAIN)
    run_id = start(env, project, script, {"command": recording(record)})
    waiter = subprocess.Popen(
        [sys.executable, "-m", "runctl", "runs", "wait", run_id],
        cwd=str(project),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    poll(lambda: status_file(project, run_id).get("step") == 1, 20, "the run's first metric")
    time.sleep(0.3)  # the controller is following the run
    waiter.send_signal(signal.SIGKILL)
    assert waiter.wait(10) == -signal.SIGKILL
    assert not record.exists()
    (project / "go").touch()
    done = poll(lambda: finished(project, run_id), 30, "on_end")
    assert status_file(project, run_id)["status"] == "completed"
    assert done["by"] == "agent" and done["exit_code"] == 0 and done["error"] is None
    assert done["command"] == recording(record)
    proof = done["proof"]["checkpoints_in_place"]
    assert proof["held"] is True
    assert {Path(f["path"]).name: f["size"] for f in proof["files"]} == {"ckpt_1.pt": 1000, "ckpt_2.pt": 2000}
    assert done["started_at"] >= status_file(project, run_id)["ended_at"]
    claim = json.loads((run_dir(project, run_id) / "on_end.claim").read_text())
    assert claim["by"] == "agent"
    poll(lambda: agent_gone(project, run_id), 10, "the agent to exit")
    assert len(record.read_text().splitlines()) == 1
    assert names(project, run_id).count("on_end_started") == 1
    assert names(project, run_id).count("on_end_finished") == 1
    # A controller that comes back later sees the step done and does not get it.
    code, answer = agent_cli("on-end-claim", str(run_dir(project, run_id)), "--by", "controller")
    assert code == 0 and answer["claimed"] is False
    assert answer["claim"]["by"] == "agent" and answer["result"]["exit_code"] == 0
    again = subprocess.run(
        [sys.executable, "-m", "runctl", "runs", "wait", run_id], cwd=str(project), env=env, timeout=60
    )
    assert again.returncode == 0
    assert len(record.read_text().splitlines()) == 1


def test_a_controller_claim_made_first_keeps_the_agent_from_running_the_command(
    project: Path, env: dict[str, str], tmp_path: Path
) -> None:
    record = tmp_path / "on_end_calls"
    run_id = running(env, project, {"command": recording(record), "controller_grace": 0})
    directory = str(run_dir(project, run_id))
    code, answer = agent_cli("on-end-claim", directory, "--by", "controller")
    assert code == 0 and answer["claimed"] is True and answer["claim"]["by"] == "controller"
    assert answer["result"] is None
    (project / "go").touch()
    poll(lambda: "on_end_skipped" in names(project, run_id), 30, "the agent to see the claim")
    poll(lambda: agent_gone(project, run_id), 10, "the agent to exit")
    assert not record.exists()
    skipped = [e for e in events(project, run_id) if e["event"] == "on_end_skipped"]
    assert skipped[0]["claimed_by"] == "controller"
    assert result_file(project, run_id) == {}
    code, answer = agent_cli("on-end-result", directory, "--json", json.dumps({"exit_code": 0, "action": "none"}))
    assert code == 0 and answer["ok"] is True
    written = result_file(project, run_id)
    assert written["by"] == "controller" and written["exit_code"] == 0 and written["action"] == "none"
    assert "on_end_result" in names(project, run_id)


def test_a_checkpoint_still_growing_holds_the_command_until_its_size_is_stable(
    project: Path, env: dict[str, str], tmp_path: Path
) -> None:
    record = tmp_path / "on_end_calls"
    stop_growing = tmp_path / "stop-growing"
    run_id = running(env, project, {"command": recording(record)})
    with growing(project / "checkpoints" / "big.pt", stop_growing):
        (project / "go").touch()
        poll(lambda: status_file(project, run_id).get("status") == "completed", 30, "the run's end")
        time.sleep(2.0)
        assert not record.exists(), "the command ran while a checkpoint was still being written"
        assert result_file(project, run_id) == {}
    final_size = (project / "checkpoints" / "big.pt").stat().st_size
    done = poll(lambda: finished(project, run_id), 30, "on_end")
    assert done["exit_code"] == 0 and len(record.read_text().splitlines()) == 1
    files = {Path(f["path"]).name: f["size"] for f in done["proof"]["checkpoints_in_place"]["files"]}
    assert files["big.pt"] == final_size
    assert done["proof"]["checkpoints_in_place"]["looks"] > 3
    assert float(record.read_text().split()[0]) >= stop_growing.stat().st_mtime


def test_a_temp_file_in_the_checkpoint_dir_is_no_checkpoint_and_does_not_hold_the_command(
    project: Path, env: dict[str, str], tmp_path: Path
) -> None:
    record = tmp_path / "on_end_calls"
    stop_growing = tmp_path / "stop-growing"
    run_id = running(env, project, {"command": recording(record)})
    partial = project / "checkpoints" / ".ckpt_3.tmp-123-4.pt"
    with growing(partial, stop_growing) as grower:
        (project / "go").touch()
        done = poll(lambda: finished(project, run_id), 30, "on_end")
        assert grower.poll() is None, "the temp file was still growing when the command ran"
    files = [Path(f["path"]).name for f in done["proof"]["checkpoints_in_place"]["files"]]
    assert sorted(files) == ["ckpt_1.pt", "ckpt_2.pt"]
    assert done["exit_code"] == 0 and len(record.read_text().splitlines()) == 1


def test_a_proof_that_never_holds_is_recorded_and_the_command_never_runs(
    project: Path, env: dict[str, str], tmp_path: Path
) -> None:
    record = tmp_path / "on_end_calls"
    stop_growing = tmp_path / "stop-growing"
    run_id = running(env, project, {"command": recording(record), "proof_timeout": 1.5})
    with growing(project / "checkpoints" / "big.pt", stop_growing):
        (project / "go").touch()
        poll(lambda: "on_end_refused" in names(project, run_id), 30, "the agent to give up")
        poll(lambda: agent_gone(project, run_id), 10, "the agent to exit")
    refused = next(e for e in events(project, run_id) if e["event"] == "on_end_refused")
    assert "checkpoints not in place" in refused["reason"] and "big.pt" in refused["reason"]
    assert refused["proof"]["checkpoints_in_place"]["held"] is False
    assert not record.exists()
    assert not (run_dir(project, run_id) / "on_end.claim").exists(), "the step is left for a controller"
    code, answer = agent_cli("on-end-claim", str(run_dir(project, run_id)))
    assert code == 0 and answer["claimed"] is True


def test_without_a_command_the_agent_claims_nothing(project: Path, env: dict[str, str]) -> None:
    script = write_script(project, "t.py", TRAIN)
    run_id = start(env, project, script, {"command": None})
    (project / "go").touch()
    poll(lambda: status_file(project, run_id).get("status") == "completed", 30, "the run's end")
    poll(lambda: agent_gone(project, run_id), 10, "the agent to exit")
    assert not (run_dir(project, run_id) / "on_end.claim").exists()
    assert not [n for n in names(project, run_id) if n.startswith("on_end")]


def test_agent_cli_on_end_bad_input(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    directory.mkdir()
    code, answer = agent_cli("on-end-result", str(directory), "--json", "{not json")
    assert code == 1 and "not valid JSON" in answer["error"]
    code, answer = agent_cli("on-end-result", str(directory), "--json", "{}")
    assert code == 1 and "claimed by nobody" in answer["error"]
    code, answer = agent_cli("on-end-claim", str(tmp_path / "missing"))
    assert code == 1 and answer["claimed"] is False and "no run directory" in answer["error"]
    assert agent_cli("on-end-claim", str(directory))[1]["claimed"] is True
    code, answer = agent_cli("on-end-claim", str(directory))
    assert code == 0 and answer["claimed"] is False and answer["claim"]["by"] == "controller"
    code, answer = agent_cli("on-end-result", str(directory), "--json", "[1]")
    assert code == 1 and "JSON object" in answer["error"]
