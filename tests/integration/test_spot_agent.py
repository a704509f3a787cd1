"""The agent on a spot instance, alone: a notice ends even a script that ignores every stop, in time.

The agent artifact (on the oldest Python a host may have, when this machine has it) supervises a
script that ignores STOP_TRAINING and SIGTERM, with a 10-minute stop grace asked for; the IMDSv2
fake announces the end of the instance a few seconds away. The stop sequence is cut to fit: SIGTERM,
then SIGKILL, before the notice's time, and the run is `interrupted (spot_interruption)`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runctl.bundle import agent_artifact
from tests.support.imds import Imds
from tests.support.pythons import python38
from tests.support.runs import poll

pytestmark = pytest.mark.timeout(60)

STUBBORN = """
import signal, time
from runctl import training as rt
signal.signal(signal.SIGTERM, lambda *a: print("ignoring SIGTERM", flush=True))
step = 0
while True:
    step += 1
    rt.report(step=step, loss=1.0 / step)
    if rt.should_stop():
        print("ignoring STOP_TRAINING", flush=True)
    time.sleep(0.05)
"""


@pytest.fixture
def fake() -> Iterator[Imds]:
    service = Imds()
    try:
        yield service
    finally:
        service.stop()


def launch(python: str, run_dir: Path, spec: dict[str, object], env: dict[str, str]) -> None:
    launched = subprocess.run(
        [python, str(agent_artifact()), "launch", str(run_dir), "--spec-stdin"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert launched.returncode == 0, launched.stderr
    assert json.loads(launched.stdout)["ok"] is True, launched.stdout


def test_a_notice_stops_a_stubborn_script_before_the_instance_goes(
    tmp_path: Path, runctl_home: Path, fake: Imds
) -> None:
    python = python38() or sys.executable
    project = tmp_path / "p"
    project.mkdir()
    (project / "t.py").write_text(STUBBORN)
    run_dir = project / ".runctl" / "runs" / "spotrun1"
    spec = {
        "run_id": "spotrun1",
        "name": "t",
        "project_dir": str(project),
        "command": [python, "t.py"],
        "created_at": 1,
        "policies": {"stop_grace": 600.0, "term_grace": 600.0},
        "spot": {"interval": 0.1, "upload_reserve": 0, "margin": 0.5},
    }
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **fake.env()}
    launch(python, run_dir, spec, env)
    poll(lambda: fake.requests, 10, "the first poll")
    notice_at = time.time() + 4.0
    fake.schedule("terminate", at=notice_at)
    poll(lambda: '"ended"' in (run_dir / "events.jsonl").read_text(), 30, "the end of the run")
    state = json.loads((run_dir / "status.json").read_text())
    assert (state["status"], state["termination_status"]) == ("interrupted", "spot_interruption")
    assert state["termination_message"].startswith("spot interruption notice: EC2 will terminate this instance at ")
    assert state["exit_signal"] == "SIGKILL"
    # The notice time is whole seconds (as the service writes it): the run was over before it.
    deadline = int(notice_at)
    assert state["ended_at"] <= deadline + 0.5, (state["ended_at"], deadline)
    seen = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    names = [e["event"] for e in seen]
    assert names.index("spot_watch_started") < names.index("spot_interruption_notice") < names.index("stop_initiated")
    assert [e["signal"] for e in seen if e["event"] == "signal"] == ["SIGTERM", "SIGKILL"]
    noticed = next(e for e in seen if e["event"] == "spot_interruption_notice")
    assert noticed["grace"] < 4 and noticed["grace"] + noticed["term_grace"] <= noticed["seconds_left"] - 0.5 + 0.01
    log = (run_dir / "training.log").read_text()
    assert "ignoring STOP_TRAINING" in log and "ignoring SIGTERM" in log
    assert "[runctl] spot interruption notice" in log
    assert state["spot_notice"]["action"] == "terminate"
