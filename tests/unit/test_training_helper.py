"""runctl.training: the helper that training scripts import."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from runctl import training
from runctl.training import integrations

ENV_VARS = (
    "RUNCTL_RUN_ID",
    "RUNCTL_RUN_DIR",
    "RUNCTL_PROJECT_DIR",
    "RUNCTL_CHECKPOINT_DIR",
    "RUNCTL_STOP_FILE",
    "RUNCTL_METRICS_FILE",
    "RUNCTL_RESUME_FROM",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(training, "_warned", False)


@pytest.fixture
def metrics_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    path = tmp_path / "run" / "metrics.jsonl"
    path.parent.mkdir()
    monkeypatch.setenv("RUNCTL_METRICS_FILE", str(path))
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------------------------------
# report


def test_report_writes_one_json_line_per_call(metrics_file: Path) -> None:
    before = time.time()
    training.report(step=10, epoch=1, loss=0.5, total_epochs=3, accuracy=0.9)
    training.report(step=11, epoch=1, loss=0.25, total_epochs=3)

    text = metrics_file.read_text()
    assert text.endswith("\n")
    first, second = read_lines(metrics_file)
    assert first["source"] == "report"
    assert before <= first["t"] <= time.time()
    assert {k: first[k] for k in ("step", "epoch", "loss", "total_epochs", "accuracy")} == {
        "step": 10,
        "epoch": 1,
        "loss": 0.5,
        "total_epochs": 3,
        "accuracy": 0.9,
    }
    assert second["step"] == 11
    assert second["loss"] == 0.25


def test_report_omits_none_values(metrics_file: Path) -> None:
    training.report(step=3, loss=None, accuracy=None, lr=0.001)

    (record,) = read_lines(metrics_file)
    assert set(record) == {"t", "source", "step", "lr"}


def test_report_preserves_nan_and_infinity(metrics_file: Path) -> None:
    training.report(step=1, loss=float("nan"), grad_norm=float("inf"))

    line = metrics_file.read_text()
    assert "NaN" in line
    (record,) = read_lines(metrics_file)
    assert math.isnan(record["loss"])
    assert record["grad_norm"] == math.inf


def test_report_coerces_scalars(metrics_file: Path) -> None:
    class Scalar:
        """Stands for a numpy or torch scalar: only .item() gives the number."""

        def __init__(self, value: float) -> None:
            self.value = value

        def item(self) -> float:
            return self.value

    training.report(step=Scalar(7), epoch=2.0, loss=Scalar(0.125), total_epochs="4", acc=Scalar(0.5), tag="x")

    (record,) = read_lines(metrics_file)
    assert record["step"] == 7 and isinstance(record["step"], int)
    assert record["epoch"] == 2 and isinstance(record["epoch"], int)
    assert record["loss"] == 0.125
    assert record["total_epochs"] == 4
    assert record["acc"] == 0.5
    assert record["tag"] == "x"


def test_report_coerces_real_numpy_and_torch_scalars(metrics_file: Path) -> None:
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")

    training.report(step=np.int64(5), loss=torch.tensor(0.5), acc=np.float32(0.25))

    (record,) = read_lines(metrics_file)
    assert record["step"] == 5
    assert record["loss"] == 0.5
    assert record["acc"] == 0.25


def test_report_is_a_no_op_without_metrics_file(tmp_path: Path) -> None:
    training.report(step=1, loss=0.5)

    assert list(tmp_path.iterdir()) == []


def test_report_never_raises_on_io_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNCTL_METRICS_FILE", str(tmp_path / "missing-dir" / "metrics.jsonl"))

    training.report(step=1, loss=0.5)
    training.report(step=2, loss=0.4)

    err = capsys.readouterr().err
    assert err.count("runctl.training: warning") == 1
    assert "metrics" in err


def _report_many(path: str, worker: int, count: int) -> None:
    os.environ["RUNCTL_METRICS_FILE"] = path
    padding = "x" * (worker * 50)  # lines of different lengths make interleaving visible
    for i in range(count):
        training.report(step=i, epoch=1, loss=0.5, worker=worker, padding=padding)


def test_report_lines_from_concurrent_processes_never_interleave(metrics_file: Path) -> None:
    workers, per_worker = 4, 500
    context = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "fork")
    processes = [context.Process(target=_report_many, args=(str(metrics_file), w, per_worker)) for w in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0

    lines = metrics_file.read_text().splitlines()
    assert len(lines) == workers * per_worker
    records = [json.loads(line) for line in lines]
    for w in range(workers):
        steps = [r["step"] for r in records if r["worker"] == w]
        assert steps == list(range(per_worker))
        assert all(r["padding"] == "x" * (w * 50) for r in records if r["worker"] == w)


# --------------------------------------------------------------------------------------------------
# should_stop, locations


def test_should_stop_follows_runctl_stop_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stop_file = tmp_path / "run" / "STOP_TRAINING"
    stop_file.parent.mkdir()
    monkeypatch.setenv("RUNCTL_STOP_FILE", str(stop_file))

    assert training.should_stop() is False
    stop_file.touch()
    assert training.should_stop() is True
    stop_file.unlink()
    assert training.should_stop() is False


def test_should_stop_follows_legacy_path_in_project_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "training_output").mkdir(parents=True)
    monkeypatch.setenv("RUNCTL_PROJECT_DIR", str(project))

    assert training.should_stop() is False
    (project / "training_output" / "STOP_TRAINING").touch()
    assert training.should_stop() is True


def test_should_stop_legacy_path_defaults_to_cwd(tmp_path: Path) -> None:
    assert training.should_stop() is False
    (tmp_path / "training_output").mkdir()
    (tmp_path / "training_output" / "STOP_TRAINING").touch()
    assert training.should_stop() is True


def test_checkpoint_dir_default_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert training.checkpoint_dir() == tmp_path / "checkpoints"
    assert (tmp_path / "checkpoints").is_dir()

    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setenv("RUNCTL_PROJECT_DIR", str(project))
    assert training.checkpoint_dir() == project / "checkpoints"

    custom = tmp_path / "elsewhere" / "ckpts"
    monkeypatch.setenv("RUNCTL_CHECKPOINT_DIR", str(custom))
    assert training.checkpoint_dir() == custom
    assert custom.is_dir()


def test_resume_from_and_run_id(monkeypatch: pytest.MonkeyPatch) -> None:
    assert training.resume_from() is None
    assert training.run_id() is None
    monkeypatch.setenv("RUNCTL_RESUME_FROM", "")
    assert training.resume_from() is None
    monkeypatch.setenv("RUNCTL_RESUME_FROM", "checkpoints/checkpoint_epoch_1.json")
    assert training.resume_from() == Path("checkpoints/checkpoint_epoch_1.json")
    monkeypatch.setenv("RUNCTL_RUN_ID", "r-123")
    assert training.run_id() == "r-123"


# --------------------------------------------------------------------------------------------------
# mark_complete, atomic files


def test_mark_complete_writes_non_empty_marker_atomically(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setenv("RUNCTL_PROJECT_DIR", str(project))
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy_replace(src: str, dst: str) -> None:
        replaced.append((os.fspath(src), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(training.os, "replace", spy_replace)

    path = training.mark_complete("accuracy=0.95", checkpoint="checkpoints/checkpoint_epoch_3.pt")

    assert path == project / "training_complete.txt"
    lines = path.read_text().splitlines()
    assert lines[0].startswith("Training completed successfully at ")
    assert lines[1] == "accuracy=0.95"
    assert lines[2] == "Final checkpoint: checkpoints/checkpoint_epoch_3.pt"
    # written under a temporary name in the same directory, then renamed onto the final name
    ((src, dst),) = replaced
    assert Path(src).parent == project and Path(src).name != "training_complete.txt"
    assert dst == str(path)
    assert sorted(p.name for p in project.iterdir()) == ["training_complete.txt"]


def test_mark_complete_without_extras(tmp_path: Path) -> None:
    path = training.mark_complete()
    assert path == tmp_path / "training_complete.txt"
    text = path.read_text()
    assert text.startswith("Training completed successfully at ")
    assert text.count("\n") == 1


def test_atomic_path_replaces_file(tmp_path: Path) -> None:
    target = tmp_path / "ckpt" / "model.pt"
    with training.atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(".") and tmp.suffix == ".pt"
        assert not target.exists()
        tmp.write_bytes(b"new state")
    assert target.read_bytes() == b"new state"
    assert [p.name for p in target.parent.iterdir()] == ["model.pt"]


def test_atomic_path_on_exception_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"old state")

    with pytest.raises(RuntimeError, match="disk on fire"), training.atomic_path(target) as tmp:
        tmp.write_bytes(b"half writ")
        raise RuntimeError("disk on fire")

    assert target.read_bytes() == b"old state"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_atomic_path_on_exception_without_old_file_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    with pytest.raises(KeyboardInterrupt), training.atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_fails_when_nothing_was_written(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    with pytest.raises(FileNotFoundError), training.atomic_path(target):
        pass
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint-500"
    target.mkdir()
    (target / "old.bin").write_text("old")

    with training.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "model.bin").write_text("new")

    assert sorted(p.name for p in target.iterdir()) == ["model.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-500"]


def test_atomic_write_bytes_and_str(tmp_path: Path) -> None:
    assert training.atomic_write(tmp_path / "a.bin", b"\x00\x01") == tmp_path / "a.bin"
    training.atomic_write(tmp_path / "b.txt", "héllo")
    training.atomic_write(tmp_path / "b.txt", "again")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt"]


# --------------------------------------------------------------------------------------------------
# latest_checkpoint


def test_latest_checkpoint_orders_by_epoch_number_not_time(tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for epoch in (10, 2, 9):
        (ckpts / f"checkpoint_epoch_{epoch}.pt").write_bytes(b"x")
    # epoch 9 is the newest file, epoch 10 must still win
    now = time.time()
    os.utime(ckpts / "checkpoint_epoch_10.pt", (now - 100, now - 100))
    (ckpts / ".checkpoint_epoch_11.tmp-123-4.pt").write_bytes(b"partial")
    (ckpts / "checkpoint_epoch_12.pt").write_bytes(b"")  # empty: never a usable checkpoint
    (ckpts / "checkpoint_epoch_final.pt").write_bytes(b"x")  # no number

    assert training.latest_checkpoint() == ckpts / "checkpoint_epoch_10.pt"
    assert training.latest_checkpoint(ckpts) == ckpts / "checkpoint_epoch_10.pt"


def test_latest_checkpoint_breaks_ties_with_further_numbers(tmp_path: Path) -> None:
    for name in (
        "checkpoint_epoch_3_step_500.pt",
        "checkpoint_epoch_3_step_1000.pt",
        "checkpoint_epoch_2.pt",
    ):
        (tmp_path / name).write_bytes(b"x")
    assert training.latest_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch_3_step_1000.pt"


def test_latest_checkpoint_other_pattern_and_empty(tmp_path: Path) -> None:
    assert training.latest_checkpoint(tmp_path / "missing") is None
    assert training.latest_checkpoint(tmp_path) is None
    for step in (500, 1500, 1000):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert training.latest_checkpoint(tmp_path, pattern="checkpoint-*") == tmp_path / "checkpoint-1500"


def test_latest_checkpoint_does_not_create_default_dir(tmp_path: Path) -> None:
    assert training.latest_checkpoint() is None
    assert not (tmp_path / "checkpoints").exists()


# --------------------------------------------------------------------------------------------------
# integrations


def test_integrations_import_without_frameworks() -> None:
    # The module imports without transformers or lightning; the classes need them only on access.
    assert callable(integrations.huggingface_callback)
    assert callable(integrations.lightning_callback)
    with pytest.raises(AttributeError):
        _ = integrations.NoSuchThing  # type: ignore[attr-defined]


def test_hf_payload_maps_trainer_state() -> None:
    args = SimpleNamespace(num_train_epochs=3.0)
    state = SimpleNamespace(global_step=120, epoch=1.5, max_steps=240, num_train_epochs=3)
    payload = integrations._hf_payload(
        args, state, {"loss": 0.75, "learning_rate": 1e-4, "epoch": 1.5, "total_flos": 1e12, "note": "x"}
    )
    assert payload == {
        "step": 120,
        "epoch": 2,
        "loss": 0.75,
        "total_epochs": 3,
        "epoch_progress": 1.5,
        "total_steps": 240,
        "learning_rate": 1e-4,
    }
    end = integrations._hf_payload(args, SimpleNamespace(global_step=240, epoch=3.0), {"eval_loss": 0.5})
    assert end["epoch"] == 3 and end["loss"] is None and end["eval_loss"] == 0.5


def test_lightning_payload_maps_trainer() -> None:
    trainer = SimpleNamespace(
        global_step=42,
        current_epoch=0,
        max_epochs=5,
        max_steps=-1,
        callback_metrics={"train_loss": 0.3, "val_acc": 0.8},
    )
    assert integrations._lightning_payload(trainer, {"loss": 0.25}) == {
        "step": 42,
        "epoch": 1,
        "loss": 0.25,
        "total_epochs": 5,
        "train_loss": 0.3,
        "val_acc": 0.8,
    }
    assert integrations._lightning_payload(trainer, None)["loss"] == 0.3


def test_huggingface_callback_stops_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import transformers

    metrics = tmp_path / "metrics.jsonl"
    stop_file = tmp_path / "STOP_TRAINING"
    monkeypatch.setenv("RUNCTL_METRICS_FILE", str(metrics))
    monkeypatch.setenv("RUNCTL_STOP_FILE", str(stop_file))

    callback = integrations.huggingface_callback()
    assert isinstance(callback, transformers.TrainerCallback)
    assert isinstance(callback, integrations.HuggingFaceCallback)
    args = SimpleNamespace(num_train_epochs=2)
    state = transformers.TrainerState()
    state.global_step, state.epoch = 10, 0.5
    control = transformers.TrainerControl()

    callback.on_log(args, state, control, logs={"loss": 1.25, "epoch": 0.5})
    callback.on_step_end(args, state, control)
    assert not control.should_training_stop
    stop_file.touch()
    callback.on_step_end(args, state, control)
    assert control.should_training_stop and control.should_save
    (record,) = read_lines(metrics)
    assert record["loss"] == 1.25 and record["step"] == 10 and record["epoch"] == 1


def test_lightning_callback_stops_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import lightning.pytorch as pl
    import torch

    monkeypatch.setenv("RUNCTL_METRICS_FILE", str(tmp_path / "metrics.jsonl"))
    monkeypatch.setenv("RUNCTL_STOP_FILE", str(tmp_path / "STOP_TRAINING"))
    monkeypatch.setenv("RUNCTL_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    (tmp_path / "STOP_TRAINING").touch()

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.TensorDataset(torch.randn(64, 2), torch.randn(64, 1))
    callback = integrations.lightning_callback()
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
        default_root_dir=str(tmp_path),
    )
    trainer.fit(Model(), torch.utils.data.DataLoader(data, batch_size=8))

    assert callback.stop_requested
    assert trainer.global_step < 24
    assert list((tmp_path / "checkpoints").glob("checkpoint_step_*.ckpt"))
    assert read_lines(tmp_path / "metrics.jsonl")
