"""Real training libraries end to end through the CLI: Hugging Face Trainer, Lightning, a tqdm loop.

Each test starts two runs side by side (the libraries take seconds to import): one that
--auto-stop-loss stops, and one watched in `runs status` while it trains, then stopped with
`runs stop`. Models are tiny and built from configs, data is generated, nothing is downloaded.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES
from tests.support.runs import events, kill_leftover_runs, log_text, poll, run_dir, start_run

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(autouse=True)
def trainers(project: Path) -> Iterator[None]:
    for script in (EXAMPLES / "trainers").glob("*.py"):
        shutil.copy(script, project / script.name)
    yield
    kill_leftover_runs(project)


def start(cli, script: str, *flags: str, args: tuple[str, ...] = ()) -> str:  # type: ignore[no-untyped-def]
    return start_run(cli, script, "--python", sys.executable, "--env", "HF_HUB_OFFLINE=1", *flags, args=args)


def status(cli, run_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    result = cli("runs", "status", run_id, "-o", "json")
    assert result.code == 0, result.err
    return result.json


def wait(cli, run_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    result = cli("runs", "wait", run_id, "-o", "json", timeout=240, env=OFFLINE)
    assert result.out.strip(), result.err
    return result.json


def live_metrics(cli, run_id: str, min_step: int = 1) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """`runs status` of a run that is still training and already shows a loss and a step."""

    def shown() -> dict[str, Any] | None:
        state = status(cli, run_id)
        assert state["status"] in ("running", "pending", "setting_up"), state
        if state.get("loss") is not None and (state.get("step") or 0) >= min_step:
            return state
        return None

    return poll(shown, 150, "live metrics of run %s" % run_id, interval=0.3)


def user_stop(cli, run_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    result = cli("runs", "stop", run_id, "--grace", "5", "-o", "json", timeout=120)
    assert result.code in (0, 1), result.err
    ended = wait(cli, run_id)
    assert (ended["status"], ended["termination_status"]) == ("stopped", "user_stop"), ended
    return ended


def series(cli, run_id: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    result = cli("runs", "metrics", run_id, "-o", "json")
    assert result.code == 0, result.err
    return result.json


def auto_stopped(ended: dict[str, Any], threshold: float) -> None:
    assert (ended["status"], ended["termination_status"]) == ("completed", "auto_low_loss"), ended
    assert "below threshold" in ended["termination_message"]
    assert ended["min_loss"] < threshold


def checkpoint_paths(cli, run_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    result = cli("checkpoint", "list", run_id, "-o", "json")
    assert result.code == 0, result.err
    return [f["path"] for f in result.json["files"] if f["this_run"]]


def test_hugging_face_trainer_unmodified(cli, project: Path) -> None:
    auto = start(cli, "train_hf.py", "--auto-stop-loss", "2.0", "--stop-grace", "1s", args=("--epochs", "30"))
    watched = start(cli, "train_hf.py", args=("--epochs", "100", "--delay", "0.05"))

    live = live_metrics(cli, watched, min_step=4)
    assert live["epoch"] >= 1 and live["total_steps"] == 800  # the Trainer's bar: N/M steps
    assert 0 < live["loss"] < 5
    user_stop(cli, watched)

    ended = wait(cli, auto)
    auto_stopped(ended, 2.0)
    records = series(cli, auto)
    assert {r["source"] for r in records} == {"log"}
    dicts = [r for r in records if "grad_norm" in r]  # the Trainer's quoted log dicts
    assert dicts and all(r["epoch"] >= 1 and 0 < r["epoch_progress"] <= 30 for r in dicts)
    assert any(r.get("step") and r.get("total_steps") == 240 for r in records)


def test_hugging_face_trainer_with_callback(cli, project: Path) -> None:
    auto = start(cli, "train_hf.py", "--auto-stop-loss", "2.0", args=("--callback", "--epochs", "30"))
    watched = start(cli, "train_hf.py", args=("--callback", "--epochs", "100", "--delay", "0.05"))

    live = live_metrics(cli, watched, min_step=4)
    assert live["total_epochs"] == 100 and live["epoch"] >= 1
    user_stop(cli, watched)

    ended = wait(cli, auto)
    auto_stopped(ended, 2.0)
    assert ended["exit_code"] == 0  # the callback saved and stopped the Trainer before any signal
    # Once the callback reports, the printed copies of its values are not counted again.
    assert {r["source"] for r in series(cli, auto) if "loss" in r} == {"report"}
    saved = checkpoint_paths(cli, auto)
    assert any(p.startswith("checkpoint-") and p.endswith("model.safetensors") for p in saved), saved
    assert "saving a checkpoint and stopping" in log_text(project, auto)


def test_lightning_unmodified_tqdm_bar_and_rich_bar_under_tty(cli, project: Path) -> None:
    auto = start(
        cli, "train_lightning.py", "--auto-stop-loss", "0.5", "--stop-grace", "1s",
        args=("--bar", "tqdm", "--epochs", "20", "--delay", "0.01"),
    )  # fmt: skip
    watched = start(
        cli, "train_lightning.py", "--tty", "--hang-timeout", "60s",
        args=("--bar", "rich", "--epochs", "200", "--batches", "4", "--delay", "0.1"),
    )  # fmt: skip

    live = live_metrics(cli, watched, min_step=5)
    # Rich draws `Epoch 1/199`: the second epoch of 200, not the first of 199.
    assert live["total_epochs"] == 200 and live["epoch"] >= 2
    assert live["total_steps"] == 800
    stopped = user_stop(cli, watched)
    assert stopped["termination_status"] != "hang"
    log = (run_dir(project, watched) / "training.log").read_bytes()
    raw = (run_dir(project, watched) / "training.raw.log").read_bytes()
    assert b"\x1b[" in raw and b"\x1b" not in log
    assert "Epoch 1/199" in log.decode()
    assert any(p.startswith("lightning_logs/") and p.endswith(".ckpt") for p in checkpoint_paths(cli, watched))

    ended = wait(cli, auto)
    auto_stopped(ended, 0.5)
    records = series(cli, auto)
    assert records[0]["epoch"] == 1  # Lightning's `Epoch 0:` is the first epoch
    assert max(r.get("step", 0) for r in records) > 16  # global steps, across epochs


def test_lightning_with_callback(cli, project: Path) -> None:
    auto = start(cli, "train_lightning.py", "--auto-stop-loss", "0.5", args=("--callback", "--epochs", "50"))
    watched = start(cli, "train_lightning.py", args=("--callback", "--epochs", "200", "--delay", "0.05"))

    live = live_metrics(cli, watched, min_step=3)
    assert live["total_epochs"] == 200 and live["epoch"] >= 1
    user_stop(cli, watched)

    ended = wait(cli, auto)
    auto_stopped(ended, 0.5)
    assert ended["exit_code"] == 0
    saved = checkpoint_paths(cli, auto)
    assert any(p.startswith("checkpoint_step_") for p in saved), saved
    assert ended["last_checkpoint"].endswith(".ckpt")


def test_tqdm_loop_metrics_hang_and_end_reasons(cli, project: Path) -> None:
    auto = start(cli, "train_tqdm.py", "--auto-stop-loss", "0.5", "--stop-grace", "1s", args=("--steps", "2000"))
    stalled = start(cli, "train_tqdm.py", "--hang-timeout", "3s", "--stop-grace", "1s", args=("--stall-at", "60"))
    # Its loss (2 exp(-step/6)) goes below 0.015 only at its last step, just before it exits.
    natural = start(cli, "train_tqdm.py", "--auto-stop-loss", "0.015", args=("--steps", "30", "--delay", "0.0"))
    watched = start(cli, "train_tqdm.py", args=("--steps", "100000", "--delay", "0.01"))

    live = live_metrics(cli, watched, min_step=20)
    assert live["total_steps"] == 100000 and live["step"] < 100000
    user_stop(cli, watched)

    ended = wait(cli, auto)
    auto_stopped(ended, 0.5)
    assert ended["last_checkpoint"].endswith("out/ckpt.pt")
    assert "out/ckpt.pt" in checkpoint_paths(cli, auto)

    # The bar goes on redrawing at step 60: no progress, so --hang-timeout fires.
    hung = wait(cli, stalled)
    assert (hung["status"], hung["termination_status"]) == ("stopped", "hang"), hung
    assert hung["step"] in (59, 60)  # tqdm shows 59 done while the 60th runs

    # Its loss went below the threshold only in output read after it had exited: not a policy stop.
    done = wait(cli, natural)
    assert (done["status"], done["termination_status"]) == ("completed", "auto_complete"), done
    assert done["loss"] < 0.015
    assert any(e["event"] == "policy_after_exit" for e in events(project, natural))


@pytest.mark.parametrize("pattern", ["/etc/*", "../elsewhere/*.pt", ""])
def test_bad_checkpoint_glob_starts_nothing(cli, project: Path, pattern: str) -> None:
    result = cli("local", "train", "train_tqdm.py", "--checkpoint-glob", pattern)
    assert result.code == 2, result.err
    assert "--checkpoint-glob" in result.err and "Traceback" not in result.err
    assert result.out == ""
    assert not (project / ".runctl" / "runs").exists() or not any((project / ".runctl" / "runs").iterdir())
    assert cli("runs", "list", "-o", "json").json == []
