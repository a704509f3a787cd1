"""A stop can be hurried: a second `runs stop` with a shorter grace, or `--now`, moves it forward.

The scripts here ignore STOP_TRAINING (and one ignores SIGTERM too), so only the signals of the
stop sequence can end them; the tests time how long that takes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_ssh import (
    make_project,
    remote_project,
)
from tests.support.pythons import FAST_PY
from tests.support.runs import events, kill_leftover_runs, log_text, poll, status_file

pytestmark = pytest.mark.timeout(60)


STUBBORN = """\
import signal, sys, time
if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, lambda *a: print("ignoring SIGTERM", flush=True))
print("working", flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.fixture(autouse=True)
def _no_leftovers(project: Path) -> Iterator[None]:
    yield
    kill_leftover_runs(project)


def start(cli, project: Path, *flags: str, args: tuple[str, ...] = ()) -> str:  # type: ignore[no-untyped-def]
    (project / "stubborn.py").write_text(STUBBORN)
    started = cli("local", "train", "stubborn.py", "--python", FAST_PY, *flags, "--", *args)
    assert started.code == 0, started.err
    run_id = started.out.strip()
    poll(lambda: "working" in log_text(project, run_id), 20, "the script's first line")
    return run_id


def test_a_second_stop_with_grace_0_ends_a_run_stopping_with_a_long_grace(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    run_id = start(cli, project, "--stop-grace", "1h")
    first = cli("runs", "stop", run_id, "--no-wait", "-o", "json")
    assert first.code == 0, first.err
    poll(lambda: status_file(project, run_id).get("status") == "stopping", 10, "stopping")
    time.sleep(0.5)
    assert status_file(project, run_id)["status"] == "stopping", "a 1 h grace: nothing is signalled yet"

    began = time.monotonic()
    second = cli("runs", "stop", run_id, "--grace", "0", "-o", "json")
    assert second.code == 0, second.err
    assert time.monotonic() - began < 10
    run = second.json
    assert (run["status"], run["termination_status"]) == ("stopped", "user_stop"), run
    assert run["exit_code"] == 143  # SIGTERM ended it, 1 h before the first grace would have
    names = [e["event"] for e in events(project, run_id)]
    assert names.index("stop_initiated") < names.index("stop_requested_again") < names.index("signal")


def test_stop_now_twice_kills_a_script_that_ignores_sigterm(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    run_id = start(cli, project, args=("--ignore-term",))
    began = time.monotonic()
    first = cli("runs", "stop", run_id, "--now", "--no-wait")
    assert first.code == 0, first.err
    poll(lambda: "ignoring SIGTERM" in log_text(project, run_id), 10, "the script to get SIGTERM")
    again = cli("runs", "stop", run_id, "--now", "-o", "json")
    assert again.code == 0, again.err
    run = again.json
    assert run["status"] == "stopped" and run["exit_code"] == 137, run
    assert time.monotonic() - began < 8, "SIGKILL at once, not after the 10 s SIGTERM grace"
    signals = [e["signal"] for e in events(project, run_id) if e["event"] == "signal"]
    assert signals == ["SIGTERM", "SIGKILL"]


def test_a_later_stop_with_a_longer_grace_does_not_delay_the_first(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    run_id = start(cli, project)
    began = time.monotonic()
    assert cli("runs", "stop", run_id, "--grace", "1", "--no-wait").code == 0
    assert cli("runs", "stop", run_id, "--grace", "600", "--no-wait").code == 0
    poll(lambda: status_file(project, run_id).get("status") == "stopped", 15, "the run to stop")
    assert time.monotonic() - began < 10


BAD_STOPS = [
    (("--grace", "3601"), "--grace must be 0 or more and at most 3600 seconds"),
    (("--grace", "1e400"), "--grace must be 0 or more and at most 3600 seconds"),
    (("--grace", "nan"), "--grace must be 0 or more and at most 3600 seconds"),
    (("--grace", "-1"), "--grace must be 0 or more and at most 3600 seconds"),
    (("--now", "--grace", "5"), "--now and --grace both given"),
]


def test_bad_stop_graces_are_usage_errors_and_change_nothing(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    run_id = start(cli, project)
    for args, message in BAD_STOPS:
        result = cli("runs", "stop", run_id, *args)
        assert result.code == 2, (args, result.err)
        assert message in result.err and "Traceback" not in result.err, (args, result.err)
        assert 1 <= len(result.err.strip().splitlines()) <= 2, result.err
    assert status_file(project, run_id)["status"] == "running"
    assert not (project / ".runctl" / "runs" / run_id / "stop_request.json").exists()
    assert cli("runs", "stop", run_id, "--now").code == 0


def test_stop_grace_above_the_maximum_is_refused_before_anything_starts(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    (project / "stubborn.py").write_text(STUBBORN)
    result = cli("local", "train", "stubborn.py", "--stop-grace", "2h")
    assert result.code == 2, result.err
    assert "--stop-grace must be at most 1h" in result.err and "Traceback" not in result.err
    assert not (project / ".runctl" / "runs").exists() or not list((project / ".runctl" / "runs").iterdir())
    assert cli("runs", "list", "--all", "-o", "json").json == []


# ---- over SSH: the request travels through the agent's command line -------------------------------


def test_ssh_stop_now_hurries_a_stop_with_a_long_grace(sshenv, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    host = sshenv.hosts[1]
    project = make_project(tmp_path, "s-hurry", {"stubborn.py": STUBBORN})
    started = sshenv.cli("ssh", "train", sshenv.dest(host), "stubborn.py", "--stop-grace", "1h", cwd=project)
    assert started.code == 0, started.err
    run_id = started.out.strip()
    log = remote_project(host, "s-hurry") / ".runctl" / "runs" / run_id / "training.log"
    poll(lambda: log.exists() and "working" in log.read_text(), 20, "the script's first line")
    assert sshenv.cli("runs", "stop", run_id, "--no-wait", cwd=project).code == 0
    poll(lambda: sshenv.status(run_id, project)["status"] == "stopping", 10, "stopping")
    began = time.monotonic()
    hurried = sshenv.cli("runs", "stop", run_id, "--now", "-o", "json", cwd=project)
    assert hurried.code == 0, hurried.err
    assert hurried.json["status"] == "stopped" and hurried.json["exit_code"] == 143, hurried.json
    assert time.monotonic() - began < 15
