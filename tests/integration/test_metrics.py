"""Live metrics end to end: helper reports, parsed log lines, training_log.json, and `runs metrics`."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.runs import kill_leftover_runs, poll, train_wait, write_script


@pytest.fixture(autouse=True)
def no_leftover_runs(project: Path) -> Iterator[None]:
    """A failing test must not leave a training process behind."""
    yield
    kill_leftover_runs(project)


def series(cli, run_id: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    result = cli("runs", "metrics", run_id, "-o", "json")
    assert result.code == 0, result.err
    return result.json


def test_metrics_series_in_json_csv_and_text(cli, project: Path) -> None:
    code, run = train_wait(cli, "train_stub.py", args=("--epochs", "2", "--steps-per-epoch", "5", "--delay", "0.02"))
    assert code == 0, run
    run_id = run["run_id"]

    records = series(cli, run_id)
    assert [r["step"] for r in records] == list(range(1, 11))
    assert [r["epoch"] for r in records] == [1] * 5 + [2] * 5
    assert all(r["source"] == "report" for r in records)
    assert records[0]["loss"] == pytest.approx(2.0)
    assert records[-1]["loss"] == pytest.approx(0.1)
    assert all(isinstance(r["t"], float) for r in records)

    result = cli("runs", "metrics", run_id[:4], "-o", "csv")
    assert result.code == 0, result.err
    rows = list(csv.DictReader(io.StringIO(result.out)))
    assert rows and list(rows[0])[:4] == ["t", "step", "epoch", "loss"]
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    assert float(rows[-1]["loss"]) == pytest.approx(0.1)
    assert rows[0]["total_epochs"] == "2"

    result = cli("runs", "metrics", run_id)
    assert result.code == 0, result.err
    assert re.search(r"STEP\s+EPOCH\s+LOSS", result.out), result.out
    lines = [line for line in result.out.splitlines() if line.strip()]
    assert len(lines) == 11
    assert lines[-1].split()[:2] == ["10", "2"]


def test_metrics_of_an_unknown_run_and_a_bad_format(cli, project: Path) -> None:
    result = cli("runs", "metrics", "deadbeef", "-o", "json")
    assert result.code == 2
    assert "deadbeef" in result.err
    assert "Traceback" not in result.err
    assert result.out == ""
    result = cli("runs", "metrics", "deadbeef", "-o", "xml")
    assert result.code == 2
    assert "xml" in result.err
    assert result.out == ""


def test_status_shows_live_progress(cli, project: Path) -> None:
    result = cli("local", "train", "train_stub.py", "--", "--epochs", "2", "--steps-per-epoch", "40", "--delay", "0.03")
    assert result.code == 0, result.err
    run_id = result.out.strip()

    def progressed() -> dict[str, Any] | None:
        shown = cli("runs", "status", run_id, "-o", "json").json
        return shown if (shown.get("step") or 0) >= 25 and shown.get("eta_seconds") is not None else None

    live = poll(progressed, 15, "progress in runs status")
    assert live["status"] == "running"
    assert isinstance(live["step"], int) and live["step"] < 80
    assert live["epoch"] in (1, 2)
    assert live["total_epochs"] == 2
    assert 0.1 < live["loss"] < 2.0
    assert live["min_loss"] == pytest.approx(live["loss"])  # the stub's loss only goes down
    # About 1 / 0.03 s per step, allowing for a loaded machine.
    assert 5 < live["steps_per_sec"] < 40
    assert 0 < live["eta_seconds"] < 20

    wait = cli("runs", "wait", run_id, "-o", "json")
    assert wait.code == 0, wait.err
    final = wait.json
    assert (final["step"], final["epoch"]) == (80, 2)
    assert final["min_loss"] == pytest.approx(0.1)
    text = cli("runs", "status", run_id)
    assert "80" in text.out + text.err


LOG_SHAPES = """
    import time

    for line in (
        "warming up",
        "loss=0.5",
        "{'loss': 0.4, 'learning_rate': 5e-05, 'epoch': 1.0}",
        "Epoch 2/5",
        "step 10",
        "train_loss: 0.3",
    ):
        print(line, flush=True)
        time.sleep(0.15)
"""


def test_common_log_shapes_become_metrics(cli, project: Path) -> None:
    script = write_script(project, "plain.py", LOG_SHAPES)
    code, run = train_wait(cli, script)
    assert code == 0, run
    records = series(cli, run["run_id"])
    assert all(r["source"] == "log" for r in records)
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses == [pytest.approx(0.5), pytest.approx(0.4), pytest.approx(0.3)]
    hf = next(r for r in records if r.get("loss") == pytest.approx(0.4))
    assert hf["epoch"] == 1
    assert hf["learning_rate"] == pytest.approx(5e-05)
    assert any(r.get("epoch") == 2 and r.get("total_epochs") == 5 for r in records)
    assert any(r.get("step") == 10 for r in records)
    assert not any("warming" in json.dumps(r) for r in records)
    assert (run["step"], run["epoch"], run["total_epochs"]) == (10, 2, 5)
    assert run["loss"] == pytest.approx(0.3)
    assert run["min_loss"] == pytest.approx(0.3)


def test_metrics_regex_captures_custom_values(cli, project: Path) -> None:
    script = write_script(
        project,
        "acc.py",
        """
        import time

        for i, acc in enumerate((0.5, 0.75, 0.875), 1):
            print("iteration %d acc=%s" % (i, acc), flush=True)
            time.sleep(0.1)
        """,
    )
    code, run = train_wait(cli, script, "--metrics-regex", r"acc=(?P<acc>[\d.]+)")
    assert code == 0, run
    records = series(cli, run["run_id"])
    assert [r["acc"] for r in records if "acc" in r] == [0.5, 0.75, 0.875]
    rows = list(csv.DictReader(io.StringIO(cli("runs", "metrics", run["run_id"], "-o", "csv").out)))
    assert [r["acc"] for r in rows if r["acc"]] == ["0.5", "0.75", "0.875"]


@pytest.mark.parametrize(
    ("regex", "said"),
    [(r"acc=([\d.]+)", "named group"), (r"acc=(?P<acc>[\d.]+", "metrics-regex")],
)
def test_bad_metrics_regex_is_rejected_before_starting(cli, project: Path, regex: str, said: str) -> None:
    result = cli("local", "train", "train_stub.py", "--metrics-regex", regex)
    assert result.code == 2
    assert said in result.err
    assert "Traceback" not in result.err
    assert not (project / ".runctl" / "runs").exists() or not any((project / ".runctl" / "runs").iterdir())


def test_openadapt_training_log_json_is_read(cli, project: Path) -> None:
    script = write_script(
        project,
        "openadapt.py",
        """
        import json
        import os
        import time

        os.makedirs("training_output", exist_ok=True)
        losses = []
        for step in range(1, 6):
            loss = round(1.0 / step, 3)
            losses.append({"epoch": 0, "step": step, "loss": loss})
            data = {"epoch": 0, "step": step, "loss": loss, "total_epochs": 1, "losses": losses}
            with open("training_output/training_log.json.tmp", "w") as handle:
                json.dump(data, handle)
            os.replace("training_output/training_log.json.tmp", "training_output/training_log.json")
            print("wrote training_output/training_log.json", flush=True)
            time.sleep(0.5)
        """,
    )
    code, run = train_wait(cli, script, "--poll-interval", "0.3")
    assert code == 0, run
    records = series(cli, run["run_id"])
    from_file = [r for r in records if r.get("source") == "training_log"]
    steps = [r["step"] for r in from_file]
    assert len(steps) >= 3, records
    assert steps == sorted(steps)
    assert steps[-1] == 5
    assert from_file[-1]["loss"] == pytest.approx(0.2)
    assert run["step"] == 5
    assert run["loss"] == pytest.approx(0.2)
    assert run["min_loss"] == pytest.approx(0.2)
