"""Real PyTorch CPU training (examples/train_mnist.py) run through runctl as a user would."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.runs import kill_leftover_runs, run_dir

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

pytestmark = pytest.mark.slow

# The interpreter running the tests has torch; the script must run with it.
PYTHON = ("--python", sys.executable)


@pytest.fixture(autouse=True)
def no_leftover_runs(project: Path) -> Iterator[None]:
    yield
    kill_leftover_runs(project)


def latest_run(cli) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    listed = cli("runs", "list", "-o", "json")
    assert listed.code == 0, listed.err
    return max(listed.json, key=lambda r: r["created_at"])


def epoch_lines(log: str) -> list[tuple[int, int, float]]:
    """(epoch, step, accuracy) of each `epoch E/N step S ... accuracy=A` line."""
    return [
        (int(m.group(1)), int(m.group(2)), float(m.group(3)))
        for m in re.finditer(r"^epoch (\d+)/\d+ step (\d+) .*accuracy=([\d.]+)", log, re.MULTILINE)
    ]


def test_mnist_trains_checkpoints_and_resumes(cli, project: Path) -> None:
    result = cli(
        "local", "train", "train_mnist.py", *PYTHON, "--wait", "--", "--epochs", "4", "--checkpoint-interval", "1"
    )
    assert result.code == 0, result.err[-2000:]
    # --wait streams the training log to stdout.
    match = re.search(r"Training complete: 4 epochs, test accuracy ([\d.]+)", result.out)
    assert match, result.out[-2000:]
    assert float(match.group(1)) >= 0.9
    assert [e for e, _, _ in epoch_lines(result.out)] == [1, 2, 3, 4]
    run = latest_run(cli)
    assert (run["status"], run["termination_status"]) == ("completed", "auto_complete")
    assert run["exit_code"] == 0
    checkpoints = project / "checkpoints"
    for epoch in range(1, 5):
        assert (checkpoints / f"checkpoint_epoch_{epoch}.pt").stat().st_size > 0
    assert not [p.name for p in checkpoints.iterdir() if p.name.startswith(".")]
    marker = (project / "training_complete.txt").read_text()
    assert "checkpoint_epoch_4.pt" in marker
    log = (run_dir(project, run["run_id"]) / "training.log").read_text()
    assert "Training complete" in log
    metrics = cli("runs", "metrics", run["run_id"], "-o", "json").json
    accuracies = [m["accuracy"] for m in metrics if "accuracy" in m]
    assert len(accuracies) == 4 and accuracies[-1] >= 0.9
    assert run["total_epochs"] == 4 and run["epoch"] == 4
    steps_per_epoch = run["step"] // 4
    assert run["step"] == steps_per_epoch * 4

    state = torch.load(checkpoints / "checkpoint_epoch_2.pt", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["epoch_complete"], state["step"]) == (2, True, 2 * steps_per_epoch)

    resumed = cli(
        "local",
        "train",
        "train_mnist.py",
        *PYTHON,
        "--wait",
        "--",
        "--epochs",
        "4",
        "--resume-from",
        "checkpoints/checkpoint_epoch_2.pt",
    )
    assert resumed.code == 0, resumed.err[-2000:]
    assert "Resumed from checkpoints/checkpoint_epoch_2.pt: epoch 2" in resumed.out
    lines = epoch_lines(resumed.out)
    assert [e for e, _, _ in lines] == [3, 4]
    assert [s for _, s, _ in lines] == [3 * steps_per_epoch, 4 * steps_per_epoch]
    assert lines[-1][2] >= 0.9
    second = latest_run(cli)
    assert second["run_id"] != run["run_id"]
    assert (second["status"], second["termination_status"]) == ("completed", "auto_complete")
    reports = [m for m in cli("runs", "metrics", second["run_id"], "-o", "json").json if m["source"] == "report"]
    assert (reports[0]["epoch"], reports[0]["step"]) == (3, 2 * steps_per_epoch + 1)
    assert (reports[-1]["epoch"], reports[-1]["step"]) == (4, 4 * steps_per_epoch)


def test_mnist_auto_stop_loss_saves_a_checkpoint(cli, project: Path) -> None:
    # Batch losses fall below 0.3 during epoch 2 of 10 (seeded): far from the end of the training.
    result = cli(
        "local",
        "train",
        "train_mnist.py",
        *PYTHON,
        "--wait",
        "-o",
        "json",
        "--auto-stop-loss",
        "0.3",
        "--stop-grace",
        "20",
        "--",
        "--epochs",
        "10",
    )
    assert result.code == 0, result.err[-2000:]
    run = result.json
    assert (run["status"], run["termination_status"]) == ("completed", "auto_low_loss")
    match = re.search(r"loss ([\d.]+) below threshold 0\.3\b", run["termination_message"])
    assert match and float(match.group(1)) < 0.3, run["termination_message"]
    log = (run_dir(project, run["run_id"]) / "training.log").read_text()
    saved = re.search(r"Stop requested: saved checkpoint (\S+)", log)
    assert saved, log[-2000:]
    state = torch.load(saved.group(1), map_location="cpu", weights_only=True)
    assert state["epoch_complete"] is False
    assert 1 <= state["epoch"] < 10
    assert run["exit_code"] == 0
    assert not (project / "training_complete.txt").exists()
    assert "Training complete" not in log
