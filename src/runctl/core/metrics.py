"""Metrics from the common log shapes, for scripts that do not use runctl.training.

Recognised in one record (a line, or one redraw of a progress bar):
- `loss=0.12`, `loss: 0.12`, `loss 0.12`, `train loss 0.12`, `Loss = 1e-3`; `val loss 0.5`,
  `val_loss: 0.5`, `eval_loss`, `test loss` are separate metrics (`val_loss`, `eval_loss`,
  `test_loss`): the loss policies act on the training loss only;
- Hugging Face Trainer dict lines, with plain or quoted numbers (`{'loss': '3.716', 'epoch': '0.5'}`);
- Keras lines (`32/32 [====] - 0s 2ms/step - loss: 0.1234 - accuracy: 0.91`);
- `step 10`, `step=10`, `Step [300/600]`, `Epoch 2/5`, `Epoch [2/5]`;
- progress-bar counters (tqdm `| 20/24 [00:07<00:02`, Rich `15/16 0:00:01`, Keras `5/100 [==>`)
  as step and total steps, and tqdm's `set_postfix(loss=...)`;
- any user regex with named groups.

Epochs in metrics are 1-based: the epoch in progress, as people write them (`Epoch 2/5`, `--epochs 5`);
the final epoch is the one where `epoch >= total_epochs`. Lightning numbers epochs from 0: its bars
(`Epoch 3:  40%|` from tqdm, `Epoch 3/14  ━━` from Rich, whose total is the last index) are converted,
and so is any log whose first epoch is `Epoch 0`. Hugging Face's fractional epochs (2.5 = half-way
through the third) become 3, with the fraction kept as `epoch_progress`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Match, Optional, Pattern, Tuple

_NUM_TEXT = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|NaN|inf|Inf|-inf)"
_NUM = "(" + _NUM_TEXT + ")"
_LOSS = re.compile(
    r"(?<![\w-])(?:(train|training|val|valid|validation|eval|test)[ _])?loss(?![\w-])\s*[=:]?\s*" + _NUM,
    re.IGNORECASE,
)
_LOSS_NAMES = {
    "val": "val_loss",
    "valid": "val_loss",
    "validation": "val_loss",
    "eval": "eval_loss",
    "test": "test_loss",
}
# "per epoch"/"per step" name a count, not the current value; `[2/5]` brackets are the PyTorch tutorial shape.
_STEP = re.compile(r"(?<![\w-])(?<!per )(?:global_)?step\s*[=:]?\s*\[?\s*(\d+)(?:\s*/\s*(\d+))?", re.IGNORECASE)
_EPOCH = re.compile(r"(?<![\w-])(?<!per )epoch\s*[=:]?\s*\[?\s*(\d+(?:\.\d+)?)(?:\s*/\s*(\d+))?", re.IGNORECASE)
_DICT = re.compile(r"\{[^{}]*['\"](?:loss|train_loss|eval_loss)['\"][^{}]*\}")
_DICT_ITEM = re.compile(r"['\"](\w+)['\"]\s*:\s*['\"]?" + _NUM + r"['\"]?")
_KERAS_ITEM = re.compile(r"(?:^|\s)-\s+(\w+):\s*" + _NUM)
# A bar's counter: tqdm `| 20/24 [00:07<`, Rich `15/16 0:00:01`, Keras `5/100 [==>` or `5/100 ━━`.
_BAR = re.compile(r"(?<![\w./])(\d+)/(\d+)\s*(?:\[[\d=>.]|\d+:\d\d|[━╸╺])")
# Bars of evaluation loops count their own batches, not training steps.
_NOT_TRAINING_BAR = re.compile(r"validat|sanity|testing|predict|evaluat", re.IGNORECASE)
# Lightning's bars, 0-based: tqdm `Epoch 3:  40%|`, Rich `Epoch 3/14  ━━` (14 = max_epochs - 1).
_LIGHTNING_TQDM = re.compile(r"^\s*Epoch (\d+):\s+\d+%\|")
_LIGHTNING_RICH = re.compile(r"^\s*Epoch (\d+)/(\d+)\s+[━╸╺]")
_BAR_LABEL_NOISE = re.compile(r"\d+%|[^\w:/ ]")


def _number(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


# Words every recognised line contains. Progress bars (`it/s`, Rich's `━`) also count, but only in
# records: a bar redraws with `\r`, and chunks holding a `\r` are always split into records.
_HINTS = (b"loss", b"step", b"epoch")
_TEXT_HINTS = ("loss", "step", "epoch", "it/s", "s/it", "\u2501")


def may_have_metrics(text: str) -> bool:
    """chunk_may_have_metrics for one decoded record."""
    low = text.lower()
    return any(word in low for word in _TEXT_HINTS)


def chunk_may_have_metrics(chunk: bytes) -> bool:
    """A cheap pre-filter so high-volume logs without metrics cost almost nothing.

    Substring search on a lowercased copy runs at memory speed; a case-insensitive regex
    alternation is about a hundred times slower on megabytes of output.
    """
    low = chunk.lower()
    return any(word in low for word in _HINTS)


def _dict_metrics(line: str, record: Dict[str, Any]) -> None:
    dict_match = _DICT.search(line)
    if not dict_match:
        return
    # Key/number pairs, not literal_eval: Python prints NaN as a bare `nan`, which must still count.
    found: Dict[str, Any] = {}
    for key, value in _DICT_ITEM.findall(dict_match.group(0)):
        number = _number(value)
        if number is not None:
            found.setdefault(key, number)
    if "epoch" in found:
        progress = found["epoch"]
        found["epoch_progress"] = progress
        found["epoch"] = float(max(1, math.ceil(progress))) if math.isfinite(progress) else None
    # The end-of-training summary's train_loss is the run's average, not the current loss.
    if "train_loss" in found and "loss" not in found and "train_runtime" not in found:
        found["loss"] = found["train_loss"]
    for key, value in found.items():
        record.setdefault(key, value)


def _loss_metrics(line: str, record: Dict[str, Any]) -> None:
    for match in _LOSS.finditer(line):
        prefix = (match.group(1) or "").lower()
        name = _LOSS_NAMES.get(prefix, "loss")
        if name not in record:
            record[name] = _number(match.group(2))


def _find_bar(line: str) -> Optional[Match[str]]:
    """A progress bar's counter, after the `Epoch N/M` that starts a Rich bar."""
    if "/" not in line:
        return None
    rich = _LIGHTNING_RICH.match(line)
    return _BAR.search(line, rich.end() if rich else 0)


def _bar_metrics(line: str, record: Dict[str, Any]) -> None:
    """Step and total from a progress bar's counter, with Lightning's 0-based epoch converted."""
    bar = _find_bar(line)
    if bar is None or _NOT_TRAINING_BAR.search(line[: bar.start()]):
        return
    done, total = int(bar.group(1)), int(bar.group(2))
    lightning = _LIGHTNING_TQDM.match(line)
    rich = _LIGHTNING_RICH.match(line) if lightning is None else None
    if lightning or rich:
        index = int((lightning or rich).group(1))  # type: ignore[union-attr]
        record["epoch"] = float(index + 1)
        record["epoch_base"] = 0
        # The bar counts the batches of this epoch: the global step is the batches before it plus these.
        record.setdefault("step", index * total + done)
        record["steps_per_epoch"] = total
        if rich:
            record["total_epochs"] = int(rich.group(2)) + 1
            record.setdefault("total_steps", total * record["total_epochs"])
        return
    record.setdefault("step", done)
    record.setdefault("total_steps", total)
    record["bar"] = True


def parse_line(line: str, custom: Optional[Pattern[str]] = None) -> Optional[Dict[str, Any]]:
    """The metrics one log record carries, or None (stateless: see LogParser for a whole log)."""
    record = _parse(line, custom)
    if record is not None:
        for key in _INTERNAL:
            record.pop(key, None)
    return record


_INTERNAL = ("bar", "epoch_base", "steps_per_epoch")


def _parse(line: str, custom: Optional[Pattern[str]]) -> Optional[Dict[str, Any]]:
    """parse_line's record, with what LogParser needs: `bar`, `epoch_base`, `steps_per_epoch`."""
    record: Dict[str, Any] = {}
    if custom is not None:
        match = custom.search(line)
        if match:
            for key, value in match.groupdict().items():
                if value is not None:
                    number = _number(value)
                    record[key] = number if number is not None else value
    if "'" in line or '"' in line:
        _dict_metrics(line, record)
    if "/step" in line or " - loss:" in line:
        for key, value in _KERAS_ITEM.findall(line):
            record.setdefault(key, _number(value))
    _loss_metrics(line, record)
    _bar_metrics(line, record)
    if "step" not in record:
        match = _STEP.search(line)
        if match:
            record["step"] = int(match.group(1))
            if match.group(2):
                record.setdefault("total_steps", int(match.group(2)))
    if "epoch" not in record:
        match = _EPOCH.search(line)
        if match:
            record["epoch"] = float(match.group(1))
            if match.group(2):
                record.setdefault("total_epochs", int(match.group(2)))
    record = {k: v for k, v in record.items() if v is not None}
    if set(record) <= set(_INTERNAL):
        return None
    return record


def parse_lines(lines: List[str], custom: Optional[Pattern[str]] = None) -> List[Dict[str, Any]]:
    out = []
    for line in lines:
        rec = parse_line(line, custom)
        if rec:
            out.append(rec)
    return out


class LogParser:
    """Metrics from a whole log, record by record, with what one record alone cannot tell.

    - a log whose first epoch is `Epoch 0` numbers from 0: its epochs are shifted to 1-based;
    - a bar shorter than the longest seen (an evaluation loop's) does not set the step;
    - a record identical to the previous one (a bar redrawn without progress) is no new metric.
    """

    def __init__(self, custom: Optional[Pattern[str]] = None) -> None:
        self.custom = custom
        self.zero_based: Optional[bool] = None
        self.longest_bar = 0
        self.last: Optional[Dict[str, Any]] = None

    def parse(self, line: str) -> Optional[Dict[str, Any]]:
        record = _parse(line, self.custom)
        if record is None:
            return None
        base = record.pop("epoch_base", None)
        if record.pop("bar", False):
            total = int(record.get("total_steps") or 0)
            if total < self.longest_bar:
                record.pop("step", None)
                record.pop("total_steps", None)
            self.longest_bar = max(self.longest_bar, total)
        epoch = record.get("epoch")
        if base is None and epoch is not None and "epoch_progress" not in record and float(epoch).is_integer():
            if self.zero_based is None:
                self.zero_based = epoch == 0
            if self.zero_based:
                record["epoch"] = epoch + 1
        record.pop("steps_per_epoch", None)
        if not record or record == self.last:
            return None
        self.last = dict(record)
        return record


def from_training_log(data: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The latest metrics in an openadapt-style training_log.json."""
    record: Dict[str, Any] = {}
    losses = data.get("losses")
    if isinstance(losses, list) and losses and isinstance(losses[-1], dict):
        record.update({k: v for k, v in losses[-1].items() if k in ("epoch", "step", "loss")})
    for key in ("epoch", "step", "loss", "total_epochs"):
        if key in data and isinstance(data[key], (int, float)) and key not in record:
            record[key] = data[key]
    return record or None


def bar_counter(line: str) -> Optional[Tuple[str, int]]:
    """(what precedes the counter, the counter) of a progress bar, or None: the bar's identity and progress."""
    bar = _find_bar(line)
    if bar is None:
        return None
    label = _BAR_LABEL_NOISE.sub("", line[: bar.start()]).strip()
    return label[:60], int(bar.group(1))
