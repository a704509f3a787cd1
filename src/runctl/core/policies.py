"""Stop policies as pure decisions over observed state; no processes, clocks or sockets.

The agent feeds the engine metric reports and periodic observations (with the time passed in) and
acts on the decisions it returns. Everything here is deterministic and unit-testable.
"""

from __future__ import annotations

import math
from typing import Any, Dict, NamedTuple, Optional

from . import status as st

STOP = "stop"
NOTIFY = "notify"
STOP_NOW = "stop_now"  # the work is provably done (marker): no stop grace, straight to SIGTERM

DEFAULTS: Dict[str, Any] = {
    "auto_stop_loss": None,
    "auto_stop_patience": 1,
    "exit_grace": 60.0,
    "stall_polls": 3,
    "poll_interval": 5.0,
    "hang_timeout": None,
    "on_hang": STOP,
    "max_duration": None,
    "on_nan": STOP,
    "stop_grace": 30.0,
    "term_grace": 10.0,
}


class Decision(NamedTuple):
    termination_status: str
    message: str
    action: str = STOP


def normalize(policies: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Defaults filled in; a non-positive loss threshold means disabled (the original's `-1`)."""
    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in (policies or {}).items() if v is not None})
    loss = cfg.get("auto_stop_loss")
    if loss is not None and float(loss) <= 0:
        cfg["auto_stop_loss"] = None
    cfg["auto_stop_patience"] = max(1, int(cfg["auto_stop_patience"]))
    cfg["stall_polls"] = max(1, int(cfg["stall_polls"]))
    return cfg


def is_finite(value: Any) -> bool:
    return finite(value) is not None


def finite(value: Any) -> Optional[float]:
    """`value` as a finite float, or None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class PolicyEngine:
    """Tracks what the policies need across observations and says when one fires."""

    def __init__(self, policies: Optional[Dict[str, Any]], started_at: float) -> None:
        self.cfg = normalize(policies)
        self.started_at = started_at
        self.below_count = 0
        self.last_activity = started_at
        self.last_polled_step: Optional[float] = None
        self.stall_count = 0
        self.marker_ready_at: Optional[float] = None
        self.hang_notified = False
        self.epoch: Optional[float] = None
        self.total_epochs: Optional[float] = None
        self.step: Optional[float] = None

    def on_output(self, now: float) -> None:
        self.last_activity = max(self.last_activity, now)

    def on_metric(self, record: Dict[str, Any], now: float) -> Optional[Decision]:
        """A metric report arrived; loss rules are checked at once, not on the next poll."""
        self.on_output(now)
        for key in ("epoch", "total_epochs", "step"):
            if is_finite(record.get(key)):
                setattr(self, key, float(record[key]))
        if "loss" not in record or record["loss"] is None:
            return None
        try:
            loss = float(record["loss"])
        except (TypeError, ValueError):
            return None
        if not math.isfinite(loss):
            self.below_count = 0
            if self.cfg["on_nan"] == STOP:
                where = " at step %d" % self.step if self.step is not None else ""
                return Decision(st.T_DIVERGED, "loss became %s%s" % (loss, where))
            return None
        threshold = self.cfg["auto_stop_loss"]
        if threshold is None:
            return None
        if loss < float(threshold):
            self.below_count += 1
        else:
            self.below_count = 0
        patience = self.cfg["auto_stop_patience"]
        if self.below_count >= patience:
            reports = "" if patience == 1 else " for %d consecutive reports" % patience
            return Decision(
                st.T_AUTO_LOW_LOSS,
                "loss %.4g below threshold %.4g%s" % (loss, float(threshold), reports),
            )
        return None

    def on_tick(self, now: float, marker_ready: bool) -> Optional[Decision]:
        """Cheap checks done every agent tick: max duration, hang, a lingering process after the marker."""
        cfg = self.cfg
        if cfg["max_duration"] is not None and now - self.started_at >= float(cfg["max_duration"]):
            return Decision(st.T_MAX_DURATION, "ran for the maximum duration of %gs" % cfg["max_duration"])
        if marker_ready:
            if self.marker_ready_at is None:
                self.marker_ready_at = now
            elif now - self.marker_ready_at >= float(cfg["exit_grace"]):
                return Decision(
                    st.T_AUTO_COMPLETE,
                    "completion marker written but the process was still alive %gs later" % cfg["exit_grace"],
                    STOP_NOW,
                )
        else:
            self.marker_ready_at = None
        hang = cfg["hang_timeout"]
        if hang is not None and now - self.last_activity >= float(hang):
            if cfg["on_hang"] == NOTIFY:
                if self.hang_notified:
                    return None
                self.hang_notified = True
                return Decision(st.T_HANG, "no output or metric for %gs" % float(hang), NOTIFY)
            return Decision(st.T_HANG, "no output or metric for %gs" % float(hang))
        if hang is not None and now - self.last_activity < float(hang):
            self.hang_notified = False
        return None

    def on_poll(self) -> Optional[Decision]:
        """Every `poll_interval`: final-epoch step stall (the original system's completion rule).

        Epochs are 1-based, so the final epoch is `epoch >= total_epochs` (the original's 0-based
        `epoch >= total_epochs - 1`).
        """
        step, epoch, total = self.step, self.epoch, self.total_epochs
        if step is None or epoch is None or total is None or epoch < total:
            self.last_polled_step, self.stall_count = step, 0
            return None
        if self.last_polled_step is not None and step <= self.last_polled_step:
            self.stall_count += 1
        else:
            self.stall_count = 0
        self.last_polled_step = step
        if self.stall_count >= self.cfg["stall_polls"]:
            return Decision(
                st.T_AUTO_COMPLETE,
                "final epoch %g/%g: step %d unchanged for %d polls" % (epoch, total, step, self.stall_count),
            )
        return None


def final_status(reason: Optional[Decision], exit_code: int, signalled_by_us: bool) -> str:
    """The terminal status of a run whose process exited with `exit_code`.

    Without a stop of ours, exit 0 is completed and anything else failed. After a stop we
    initiated, the reason decides, except that a process which failed on its own (non-zero exit
    before any signal of ours) while stopping for a "work is done" reason is still failed.
    """
    if reason is None:
        return st.COMPLETED if exit_code == 0 else st.FAILED
    status = st.STATUS_FOR_TERMINATION.get(reason.termination_status, st.STOPPED)
    if status == st.COMPLETED and exit_code != 0 and not signalled_by_us:
        return st.FAILED
    return status
