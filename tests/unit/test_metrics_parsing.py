"""runctl.core.metrics: metrics from the log shapes of scripts that don't use runctl.training."""

from __future__ import annotations

import math
import re

import pytest

from runctl.core.metrics import LogParser, chunk_may_have_metrics, from_training_log, parse_line, parse_lines


@pytest.mark.parametrize(
    ("line", "loss"),
    [
        ("loss=0.12", 0.12),
        ("loss: 0.12", 0.12),
        ("Loss = 1e-3", 1e-3),
        ("LOSS:2.5", 2.5),
        ("train_loss=0.3", 0.3),
        ("loss=.5", 0.5),
        ("iter 3 loss = 4.2E+00 lr 1e-4", 4.2),
    ],
)
def test_loss_shapes(line: str, loss: float) -> None:
    record = parse_line(line)
    assert record is not None
    assert record["loss"] == pytest.approx(loss)


def test_hugging_face_dict_line() -> None:
    record = parse_line("{'loss': 0.12, 'grad_norm': 1.2, 'learning_rate': 5e-05, 'epoch': 2.5}")
    assert record == {
        "loss": 0.12,
        "grad_norm": 1.2,
        "learning_rate": 5e-05,
        "epoch": 3.0,
        "epoch_progress": 2.5,
    }


def test_hugging_face_dict_inside_a_progress_bar_line() -> None:
    record = parse_line(" 40%|████      | 20/50 [00:03<00:05] {'loss': 0.5, 'epoch': 1.0}")
    assert record is not None
    assert record["loss"] == 0.5
    assert record["epoch"] == 1.0


def test_hugging_face_first_fractional_epoch_is_epoch_one() -> None:
    record = parse_line("{'loss': 2.3, 'epoch': 0.04}")
    assert record is not None
    assert record["epoch"] == 1.0
    assert record["epoch_progress"] == 0.04


def test_hugging_face_summary_line_is_not_the_current_loss() -> None:
    # The end-of-training summary's train_loss is the run's average: it must not trip --auto-stop-loss.
    record = parse_line("{'train_runtime': 12.3, 'train_loss': 0.45, 'epoch': 3.0}")
    assert record is not None
    assert "loss" not in record
    assert record["train_loss"] == 0.45
    assert record["epoch"] == 3.0
    assert parse_line("{'train_loss': 0.45, 'epoch': 3.0}")["loss"] == 0.45  # type: ignore[index]


def test_hugging_face_eval_line_is_not_training_loss() -> None:
    record = parse_line("{'eval_loss': 0.3, 'eval_runtime': 1.0, 'epoch': 1.0}")
    assert record is not None
    assert "loss" not in record
    assert record["eval_loss"] == 0.3


def test_hugging_face_dict_line_with_nan_loss_is_diverged() -> None:
    record = parse_line("{'loss': nan, 'grad_norm': nan, 'learning_rate': 5e-05, 'epoch': 1.5}")
    assert record is not None
    assert math.isnan(record["loss"])
    assert record["epoch"] == 2.0


@pytest.mark.parametrize(
    ("line", "step", "total"),
    [
        ("step 10", 10, None),
        ("step=10", 10, None),
        ("Step: 10/100", 10, 100),
        ("global_step=12", 12, None),
        ("Step 7 / 20 done", 7, 20),
    ],
)
def test_step_shapes(line: str, step: int, total: int | None) -> None:
    record = parse_line(line)
    assert record is not None
    assert record["step"] == step
    assert record.get("total_steps") == total


def test_epoch_with_total_is_one_based() -> None:
    assert parse_line("Epoch 2/5") == {"epoch": 2.0, "total_epochs": 5}


def test_combined_line() -> None:
    record = parse_line("Epoch 5/5 | step 250/250 | loss=0.031")
    assert record == {"epoch": 5.0, "total_epochs": 5, "step": 250, "total_steps": 250, "loss": 0.031}


def test_pytorch_tutorial_bracketed_progress() -> None:
    record = parse_line("Epoch [2/5], Step [300/600], Loss: 0.2500")
    assert record == {"epoch": 2.0, "total_epochs": 5, "step": 300, "total_steps": 600, "loss": 0.25}


@pytest.mark.parametrize(
    "line",
    [
        "",
        "Loading dataset...",
        "Training complete",
        "Saved checkpoints/checkpoint_epoch_1.pt",
        "lossless compression",
        "loss_scale: 1024",
        "Training: |          | 0/? [00:00<?, ?it/s]",
    ],
)
def test_lines_without_a_metric(line: str) -> None:
    assert parse_line(line) is None


@pytest.mark.parametrize("line", ["steps per epoch: 100", "Batches per epoch = 469"])
def test_per_epoch_counts_are_not_an_epoch(line: str) -> None:
    record = parse_line(line)
    assert record is None or "epoch" not in record


@pytest.mark.parametrize(
    "line",
    [
        "python train_stub.py --fail-at-step 3",
        "args: --fail-at-step=3",
        "max-step 5",
        "config max_step=5 warmup_step=2",
        "--hang-at-step 4",
    ],
)
def test_option_names_are_not_steps(line: str) -> None:
    record = parse_line(line)
    assert record is None or "step" not in record


def test_option_names_are_not_losses_or_epochs() -> None:
    assert parse_line("train_stub.py --epochs 5 --loss-start 2.0 --loss-end 0.1") is None


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf"])
def test_non_finite_loss_is_kept(text: str) -> None:
    record = parse_line("step 5 loss=%s" % text)
    assert record is not None
    assert record["step"] == 5
    assert not math.isfinite(record["loss"])
    if text.lower() == "nan":
        assert math.isnan(record["loss"])


def test_custom_regex_with_named_groups() -> None:
    custom = re.compile(r"it (?P<step>\d+) acc (?P<accuracy>[\d.]+) phase (?P<phase>\w+)")
    record = parse_line("it 42 acc 0.913 phase warmup", custom)
    assert record == {"step": 42.0, "accuracy": 0.913, "phase": "warmup"}


def test_custom_regex_takes_precedence_over_built_in_shapes() -> None:
    custom = re.compile(r"objective (?P<loss>[\d.]+)")
    record = parse_line("loss=9.0 objective 0.5", custom)
    assert record is not None
    assert record["loss"] == 0.5


def test_custom_regex_unmatched_group_is_left_out() -> None:
    custom = re.compile(r"acc (?P<accuracy>[\d.]+)(?: f1 (?P<f1>[\d.]+))?")
    assert parse_line("acc 0.5", custom) == {"accuracy": 0.5}
    assert parse_line("nothing here", custom) is None


def test_parse_lines_keeps_only_lines_with_metrics() -> None:
    lines = ["starting", "step 1 loss=0.9", "saving", "step 2 loss=0.8"]
    assert parse_lines(lines) == [{"step": 1, "loss": 0.9}, {"step": 2, "loss": 0.8}]


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        (b"step 1\n", True),
        (b"LOSS: 1\n", True),
        (b"Epoch 1/2\n", True),
        (b"{'loss': 0.1}\n", True),
        (b"downloading shard 3 of 8\n" * 1000, False),
        (b"", False),
    ],
)
def test_chunk_prefilter(chunk: bytes, expected: bool) -> None:
    assert chunk_may_have_metrics(chunk) is expected


def test_prefilter_never_drops_a_line_the_parser_would_read() -> None:
    lines = ["loss=0.12", "Step: 10/100", "Epoch 2/5", "{'loss': 0.12, 'epoch': 2.5}", "global_step=1"]
    for line in lines:
        assert parse_line(line) is not None
        assert chunk_may_have_metrics(line.encode())


# --------------------------------------------------------------------------------------------------
# openadapt-style training_log.json


def test_from_training_log_takes_the_latest_loss_entry() -> None:
    data = {
        "epoch": 1,
        "step": 20,
        "loss": 0.7,
        "total_epochs": 3,
        "losses": [
            {"epoch": 1, "step": 10, "loss": 0.9, "lr": 1e-4},
            {"epoch": 2, "step": 25, "loss": 0.6, "lr": 1e-4},
        ],
        "termination_status": "",
    }
    assert from_training_log(data) == {"epoch": 2, "step": 25, "loss": 0.6, "total_epochs": 3}


def test_from_training_log_without_losses_uses_top_level_values() -> None:
    assert from_training_log({"epoch": 2, "step": 40, "loss": 0.3, "losses": []}) == {
        "epoch": 2,
        "step": 40,
        "loss": 0.3,
    }


def test_from_training_log_with_nothing_useful() -> None:
    assert from_training_log({}) is None
    assert from_training_log({"losses": "n/a", "step": "ten", "job_id": "x"}) is None


# --------------------------------------------------------------------------------------------------
# What today's libraries and scripts print


def test_transformers_5_quotes_the_numbers_of_its_log_dicts() -> None:
    record = parse_line("{'loss': '3.716', 'grad_norm': '1.226', 'learning_rate': '0.0012', 'epoch': '0.5'}")
    assert record == {"loss": 3.716, "grad_norm": 1.226, "learning_rate": 0.0012, "epoch": 1.0, "epoch_progress": 0.5}
    assert parse_line('{"eval_loss": "0.25", "epoch": "1"}') == {"eval_loss": 0.25, "epoch": 1.0, "epoch_progress": 1.0}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("iter 10: loss 4.1234, time 12.34ms", {"loss": 4.1234}),
        ("step 50: train loss 0.49, val loss 0.55", {"step": 50, "loss": 0.49, "val_loss": 0.55}),
        ("epoch 3 | val_loss: 0.7 | loss: 0.5", {"epoch": 3.0, "loss": 0.5, "val_loss": 0.7}),
        ("test loss 1.5", {"test_loss": 1.5}),
        ("{'eval_loss': '0.3', 'epoch': '2.0'}", {"eval_loss": 0.3, "epoch": 2.0, "epoch_progress": 2.0}),
    ],
)
def test_loss_followed_by_a_space_and_validation_losses_apart(line: str, expected: dict) -> None:
    assert parse_line(line) == expected


def test_tqdm_counter_is_step_and_total_and_its_postfix_is_read() -> None:
    assert parse_line("100%|██████████| 50/50 [00:05<00:00, 9.8it/s]") == {"step": 50, "total_steps": 50}
    record = parse_line("train:  42%|████▏     | 42/100 [00:00<00:01, 420.0it/s, loss=0.512]")
    assert record == {"step": 42, "total_steps": 100, "loss": 0.512}


def test_keras_lines() -> None:
    record = parse_line("32/32 [==============================] - 0s 2ms/step - loss: 0.1234 - accuracy: 0.9100")
    assert record == {"step": 32, "total_steps": 32, "loss": 0.1234, "accuracy": 0.91}
    record = parse_line("32/32 ━━━━━━━━━━━━━━━━━━━━ 0s 2ms/step - accuracy: 0.9 - loss: 0.25 - val_loss: 0.5")
    assert record is not None
    assert (record["loss"], record["val_loss"], record["accuracy"]) == (0.25, 0.5, 0.9)


def test_lightning_tqdm_bar_epochs_are_zero_based() -> None:
    record = parse_line("Epoch 2:  12%|█▎        | 2/16 [00:00<00:00, 31.79it/s, v_num=0, train_loss=5.220]")
    # The third epoch; its bar counts this epoch's batches, after 2 x 16 earlier ones.
    assert record == {"epoch": 3.0, "step": 34, "loss": 5.22}


def test_lightning_rich_bar_epochs_and_total_are_zero_based() -> None:
    line = "Epoch 1/2  ━━━━━━━━━━━━━━━━━━━╸━ 15/16 0:00:00 • 0:00:01 60.40it/s train_loss: 2.959"
    assert parse_line(line) == {"epoch": 2.0, "total_epochs": 3, "step": 31, "total_steps": 48, "loss": 2.959}


def test_evaluation_bars_are_not_training_steps() -> None:
    assert parse_line("Validation DataLoader 0:  50%|█████     | 2/4 [00:00<00:00, 9.1it/s]") is None
    assert parse_line("Sanity Checking DataLoader 0: 100%|██████████| 2/2 [00:00<00:00]") is None


def test_a_log_whose_first_epoch_is_zero_is_converted() -> None:
    parser = LogParser()
    assert parser.parse("Epoch [0/3] loss: 1.0") == {"epoch": 1.0, "total_epochs": 3, "loss": 1.0}
    assert parser.parse("Epoch [2/3] loss: 0.5") == {"epoch": 3.0, "total_epochs": 3, "loss": 0.5}
    one_based = LogParser()
    assert one_based.parse("Epoch 1/3 loss=1.0") == {"epoch": 1.0, "total_epochs": 3, "loss": 1.0}


def test_parser_drops_a_redraw_without_progress_and_shorter_evaluation_bars() -> None:
    parser = LogParser()
    assert parser.parse(" 10%|█         | 10/100 [00:01<00:09, 9.9it/s]") == {"step": 10, "total_steps": 100}
    assert parser.parse(" 10%|█         | 10/100 [00:02<00:09, 9.7it/s]") is None
    assert parser.parse(" 50%|█████     | 2/4 [00:00<00:00]") is None  # an unlabelled evaluation bar
    assert parser.parse(" 11%|█         | 11/100 [00:02<00:09, 9.7it/s]") == {"step": 11, "total_steps": 100}


def test_final_epoch_stall_rule_sees_lightnings_last_epoch_as_final() -> None:
    from runctl.core.policies import PolicyEngine

    record = parse_line("Epoch 14/14  ━━━━━━━━━━━━━━━━━━━━ 16/16 0:00:00 • 0:00:00 57.20it/s train_loss: 0.127")
    assert record is not None and (record["epoch"], record["total_epochs"]) == (15.0, 15)
    engine = PolicyEngine({"stall_polls": 1}, 0.0)
    engine.on_metric(record, 1.0)
    assert engine.on_poll() is None
    decision = engine.on_poll()
    assert decision is not None and decision.termination_status == "auto_complete"
    assert "final epoch 15/15" in decision.message
