"""Metrics intake: what the run reports, from its log, runctl.training reports, and training_log.json.

Every metric lands in metrics.jsonl, the one series a controller reads, and is then applied to the
run's state (step, loss, rates, ETA) and handed to the policy engine. A script that reports through
runctl.training is trusted over what its log shows: parsing the log would count each value twice.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict, List, Optional

from ..core import checkpoints, layout, metrics, policies
from ..core.fsutil import append_json, read_json, read_jsonl
from .logtail import LogTail
from .record import RunRecord

LOG_METRIC_DELAY = 0.08
READ_BYTES = 1 << 18
HISTORY_LIMIT = 10000
STATE_KEYS = ("step", "epoch", "total_epochs", "loss", "total_steps", "val_loss", "eval_loss")

Apply = Callable[[Optional[policies.Decision]], None]


class Intake:
    def __init__(self, record: RunRecord, spec: Dict[str, Any], apply: Apply) -> None:
        self.record = record
        self.spec = spec
        self.apply = apply
        self.engine: Optional[policies.PolicyEngine] = None  # set once the script runs
        self.tail_fd = -1
        self.metrics_offset = 0
        self.helper_reports = False
        self.log_records: List[Dict[str, Any]] = []
        custom = spec.get("metrics_regex")
        self.logtail = LogTail(re.compile(custom) if custom else None)
        self.first_metric: Optional[Dict[str, Any]] = None
        self.training_log_mtime: Optional[float] = None

    @property
    def state(self) -> Dict[str, Any]:
        return self.record.state

    # ---- the log ---------------------------------------------------------------------------

    def tail_log(self, now: float) -> bool:
        """Read what the script appended to its log since the last tick; False when nothing was new.

        Only progress (a new line, a bar whose counter moved) counts against --hang-timeout.
        """
        got = False
        while True:
            data = os.read(self.tail_fd, READ_BYTES)
            if not data:
                return got
            got = True
            moved, found = self.logtail.feed(data, parse=not self.helper_reports)
            if moved:
                if self.engine is not None:
                    self.engine.on_output(now)
                self.state["last_output_at"] = now
            self.queue_log_records(found, now)

    def finish_log(self, now: float) -> None:
        """The last of the log, once the script has exited: an unfinished last line is a line too."""
        self.tail_log(now)
        self.queue_log_records(self.logtail.finish(parse=not self.helper_reports), now)

    def queue_log_records(self, found: List[Dict[str, Any]], now: float) -> None:
        for record in found:
            record.update({"t": now, "source": "log"})
            self.log_records.append(record)

    def flush_log_metrics(self, now: float, final: bool = False) -> None:
        """Publish metrics parsed from the log, unless the script reports through runctl.training.

        Parsed records wait LOG_METRIC_DELAY first: a script that both prints and reports its loss
        must not have each value counted twice, and its first report may land just after the line.
        """
        self.read_metrics(now)
        if self.helper_reports:
            self.log_records = []
            return
        ready = [r for r in self.log_records if final or now - r["t"] >= LOG_METRIC_DELAY]
        if not ready:
            return
        self.log_records = self.log_records[len(ready) :]
        for record in ready:
            append_json(self.record.path(layout.METRICS), record)
        self.read_metrics(now)

    # ---- metrics.jsonl ---------------------------------------------------------------------

    def read_metrics(self, now: float) -> None:
        found, self.metrics_offset = read_jsonl(self.record.path(layout.METRICS), self.metrics_offset)
        for record in found:
            self.on_metric(record, now)

    def on_metric(self, record: Dict[str, Any], now: float) -> None:
        if record.get("source") == "report":
            self.helper_reports = True
        t = float(record.get("t") or now)
        update: Dict[str, Any] = {"last_metric_at": t}
        for key in STATE_KEYS:
            if key in record and record[key] is not None:
                update[key] = record[key]
        if policies.is_finite(record.get("loss")):
            current = self.state.get("min_loss")
            loss = float(record["loss"])
            update["min_loss"] = loss if current is None else min(float(current), loss)
        if record.get("checkpoint"):
            update["last_checkpoint"] = record["checkpoint"]
        self.state.update(update)
        self.update_rates(record, t)
        self.record.dirty = True
        if self.engine is not None:
            self.apply(self.engine.on_metric(record, now))

    def update_rates(self, record: Dict[str, Any], t: float) -> None:
        """Steps per second since the first report, and an ETA when the total is known."""
        if not policies.is_finite(record.get("step")):
            return
        step = float(record["step"])
        if self.first_metric is None:
            self.first_metric = {"t": t, "step": step}
            return
        elapsed = t - self.first_metric["t"]
        done = step - self.first_metric["step"]
        if elapsed <= 0 or done <= 0:
            return
        rate = done / elapsed
        self.state["steps_per_sec"] = round(rate, 4)
        total = policies.finite(self.state.get("total_steps"))
        epochs, epoch = policies.finite(self.state.get("total_epochs")), policies.finite(self.state.get("epoch"))
        if total is None and epochs is not None and epoch is not None and epoch >= 1:
            # Rough: assume the epoch in progress is half done.
            total = step * epochs / max(epoch - 0.5, 0.5)
        if total is not None:
            self.state["eta_seconds"] = round(max(0.0, total - step) / rate, 1)

    def loss_history(self) -> List[Dict[str, Any]]:
        """The loss series of the run (the original dashboards' `losses`), its last HISTORY_LIMIT points."""
        found, _ = read_jsonl(self.record.path(layout.METRICS))
        history = [{k: r.get(k) for k in ("epoch", "step", "loss", "t")} for r in found if "loss" in r]
        return history[-HISTORY_LIMIT:]

    # ---- files the script writes -------------------------------------------------------------

    def read_training_log(self, now: float) -> None:
        """Metrics from an openadapt-style training_output/training_log.json, when the script writes one."""
        path = os.path.join(self.record.project_dir, layout.ORIGINAL_SUMMARY)
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            return
        if mtime == self.training_log_mtime or mtime < float(self.state.get("started_at") or 0):
            return
        self.training_log_mtime = mtime
        data = read_json(path)
        record = metrics.from_training_log(data) if data else None
        if record and not self.helper_reports:
            record.update({"t": now, "source": "training_log"})
            append_json(self.record.path(layout.METRICS), record)
            self.read_metrics(now)

    def scan_checkpoints(self, directory: str) -> None:
        """The newest finished checkpoint written during this run (see core.checkpoints)."""
        project = self.record.project_dir
        started = float(self.state.get("started_at") or 0)
        files = checkpoints.find(project, directory, self.spec.get("checkpoint_globs") or None)
        found = checkpoints.newest(files, started)
        newest = checkpoints.absolute(found, project, directory) if found else None
        if newest and newest != self.state.get("last_checkpoint"):
            self.state["last_checkpoint"] = newest
            self.record.dirty = True
