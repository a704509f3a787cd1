"""Helpers for tests that start real runs: waiting with a deadline, reading a run dir, writing small
scripts into the project, starting runs through the `cli` fixture, and killing what a failed test left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TERMINAL = ("completed", "failed", "stopped", "interrupted", "lost")
RUN_ID = re.compile(r"^[0-9a-f]{8}$")


# ---- waiting ------------------------------------------------------------------------------------


def poll(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """The first truthy value of check() within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %gs waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---- a local run's files ------------------------------------------------------------------------


def run_dir(project: Path, run_id: str) -> Path:
    return project / ".runctl" / "runs" / run_id


def status_file(project: Path, run_id: str) -> dict[str, Any]:
    """The run's status.json, or {} while it is missing or half written."""
    try:
        return json.loads((run_dir(project, run_id) / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def events(project: Path, run_id: str) -> list[dict[str, Any]]:
    """The records of the run's events.jsonl ([] before the agent wrote any)."""
    path = run_dir(project, run_id) / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def log_text(project: Path, run_id: str) -> str:
    try:
        return (run_dir(project, run_id) / "training.log").read_text()
    except OSError:
        return ""


def latest_run(project: Path) -> str:
    """The id in the project's .runctl/latest_run ("" before the first run)."""
    try:
        return (project / ".runctl" / "latest_run").read_text().strip()
    except OSError:
        return ""


# ---- scripts and runs ---------------------------------------------------------------------------


def write_script(project: Path, name: str, body: str, mode: int = 0o644) -> str:
    """Write `body` (dedented) to project/name; returns `name`, as `local train` takes it."""
    path = project / name
    path.write_text(textwrap.dedent(body).lstrip())
    path.chmod(mode)
    return name


def train_wait(cli, script: str, *flags: str, args: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    """`runctl local train SCRIPT --wait -o json FLAGS -- ARGS`: (exit code, the run's final JSON)."""
    result = cli("local", "train", script, "--wait", "-o", "json", *flags, "--", *args)
    assert result.out.strip(), "no JSON on stdout (exit %d): %s" % (result.code, result.err)
    return result.code, result.json


def start_run(cli, script: str, *flags: str, args: tuple[str, ...] = ()) -> str:  # type: ignore[no-untyped-def]
    """`runctl local train SCRIPT FLAGS -- ARGS` without --wait: the run id it prints."""
    result = cli("local", "train", script, *flags, "--", *args)
    assert result.code == 0, result.err
    run_id = result.out.strip()
    assert RUN_ID.match(run_id), result.out
    return run_id


# ---- teardown -----------------------------------------------------------------------------------


def kill_leftover_runs(project: Path) -> None:
    """SIGKILL the training process group and the agent of every run in `project` that has not ended."""
    for directory in (project / ".runctl" / "runs").glob("*"):
        state = status_file(project, directory.name)
        if state.get("status") in TERMINAL:
            continue
        for pid, kill in ((state.get("pid"), os.killpg), (state.get("agent_pid"), os.kill)):
            if pid:
                try:
                    kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        kill_run_cgroup(directory)


def kill_run_cgroup(directory: Path) -> None:
    """SIGKILL whatever is left in the run's own cgroup (if the agent made one) and remove it."""
    try:
        cgroup = json.loads((directory / "agent.json").read_text()).get("cgroup")
    except (OSError, ValueError):
        return
    if not cgroup or Path(cgroup).name != "runctl-" + directory.name:
        return
    try:
        (Path(cgroup) / "cgroup.kill").write_text("1\n")
    except OSError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.rmdir(cgroup)
            return
        except OSError:
            time.sleep(0.05)
