"""The agent artifact runs on the oldest Python hosts may have (3.8), with runctl.training importable."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from runctl.bundle import agent_artifact
from tests.support.pythons import python38


@pytest.mark.skipif(python38() is None, reason="no Python 3.8 on this machine")
def test_agent_zip_supervises_a_run_on_python38(tmp_path: Path, runctl_home: Path) -> None:
    py38 = python38()
    assert py38 is not None
    project = tmp_path / "p"
    project.mkdir()
    (project / "t.py").write_text(
        "import sys\n"
        "from runctl.training import report\n"
        "assert sys.version_info[:2] == (3, 8), sys.version_info\n"
        "for i in range(3):\n"
        "    report(step=i + 1, loss=1.0 / (i + 1))\n"
        "print('py38 ok')\n"
        "sys.exit(3)\n"
    )
    run_dir = project / ".runctl" / "runs" / "py38run"
    spec = {"run_id": "py38run", "name": "t", "project_dir": str(project), "command": [py38, "t.py"], "created_at": 1}
    artifact = str(agent_artifact())
    launched = subprocess.run(
        [py38, artifact, "launch", str(run_dir), "--spec-stdin"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert launched.returncode == 0, launched.stderr
    assert json.loads(launched.stdout)["ok"] is True
    waited = subprocess.run(
        [py38, artifact, "wait", str(run_dir), "--seq", "2", "--timeout", "20"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    state = json.loads(waited.stdout)
    assert state["status"] == "failed"
    assert state["exit_code"] == 3
    assert state["step"] == 3 and state["loss"] == pytest.approx(1 / 3)
    assert "py38 ok" in (run_dir / "training.log").read_text()


@pytest.mark.skipif(python38() is None, reason="no Python 3.8 on this machine")
def test_agent_zip_performs_on_end_on_python38(tmp_path: Path, runctl_home: Path) -> None:
    import time

    py38 = python38()
    assert py38 is not None
    project = tmp_path / "p"
    (project / "checkpoints").mkdir(parents=True)
    (project / "t.py").write_text("open('checkpoints/c.pt', 'wb').write(b'w' * 10)\n")
    record = tmp_path / "on_end_calls"
    run_dir = project / ".runctl" / "runs" / "py38end"
    spec = {
        "run_id": "py38end",
        "name": "t",
        "project_dir": str(project),
        "command": [py38, "t.py"],
        "created_at": 1,
        "on_end": {"command": [py38, "-c", "import sys; open(sys.argv[1], 'w').write('ran')", str(record)]},
    }
    launched = subprocess.run(
        [py38, str(agent_artifact()), "launch", str(run_dir), "--spec-stdin"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert launched.returncode == 0, launched.stderr
    deadline = time.monotonic() + 30
    result: dict = {}
    while time.monotonic() < deadline and not result.get("ended_at"):
        time.sleep(0.1)
        try:
            result = json.loads((run_dir / "on_end.json").read_text())
        except (OSError, ValueError):
            pass
    assert result.get("exit_code") == 0, result
    assert result["proof"]["checkpoints_in_place"]["files"][0]["size"] == 10
    assert record.read_text() == "ran"
