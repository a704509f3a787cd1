"""Metrics from the common log shapes, for scripts that do not use runctl.training.

Recognised: `loss=0.12`, `loss: 0.12`, Hugging Face Trainer dict lines (`{'loss': 0.12, 'epoch': 1.0}`),
`step 10`, `step=10`, `Epoch 2/5`, and any user regex with named groups. Epochs in metrics are
1-based: the epoch in progress, as people write them (`Epoch 2/5`, `--epochs 5`); the final
epoch is the one where `epoch >= total_epochs`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional, Pattern

_NUM = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|NaN|inf|Inf|-inf))"
_LOSS = re.compile(r"(?<![\w-])(?:train_)?loss\s*[=:]\s*" + _NUM, re.IGNORECASE)
# "per epoch"/"per step" name a count, not the current value; `[2/5]` brackets are the PyTorch tutorial shape.
_STEP = re.compile(r"(?<![\w-])(?<!per )(?:global_)?step\s*[=:]?\s*\[?\s*(\d+)(?:\s*/\s*(\d+))?", re.IGNORECASE)
_EPOCH = re.compile(r"(?<![\w-])(?<!per )epoch\s*[=:]?\s*\[?\s*(\d+(?:\.\d+)?)(?:\s*/\s*(\d+))?", re.IGNORECASE)
_DICT = re.compile(r"\{[^{}]*'(?:loss|train_loss|eval_loss)'[^{}]*\}")
_DICT_ITEM = re.compile(r"'(\w+)'\s*:\s*" + _NUM)


def _number(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


def chunk_may_have_metrics(chunk: bytes) -> bool:
    """A cheap pre-filter so high-volume logs without metrics cost almost nothing.

    Substring search on a lowercased copy runs at memory speed; a case-insensitive regex
    alternation is about a hundred times slower on megabytes of output.
    """
    low = chunk.lower()
    return b"loss" in low or b"step" in low or b"epoch" in low


def parse_line(line: str, custom: Optional[Pattern[str]] = None) -> Optional[Dict[str, Any]]:
    """The metrics one log line carries, or None."""
    record: Dict[str, Any] = {}
    if custom is not None:
        match = custom.search(line)
        if match:
            for key, value in match.groupdict().items():
                if value is not None:
                    number = _number(value)
                    record[key] = number if number is not None else value
    dict_match = _DICT.search(line)
    if dict_match:
        # Key/number pairs, not literal_eval: Python prints NaN as a bare `nan`, which must still count.
        for key, value in _DICT_ITEM.findall(dict_match.group(0)):
            number = _number(value)
            if number is not None:
                record.setdefault(key, number)
        if record:
            if "epoch" in record:
                # Hugging Face logs fractional progress (2.5 = half-way through the 3rd epoch).
                record["epoch_progress"] = record["epoch"]
                record["epoch"] = float(max(1, math.ceil(record["epoch"]))) if math.isfinite(record["epoch"]) else None
            if "train_loss" in record and "loss" not in record:
                record["loss"] = record["train_loss"]
    if "loss" not in record:
        match = _LOSS.search(line)
        if match:
            record["loss"] = _number(match.group(1))
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
    return record or None


def parse_lines(lines: List[str], custom: Optional[Pattern[str]] = None) -> List[Dict[str, Any]]:
    out = []
    for line in lines:
        rec = parse_line(line, custom)
        if rec:
            out.append(rec)
    return out


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
