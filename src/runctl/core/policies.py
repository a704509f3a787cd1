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
    "max_cost": None,
}


class Decision(NamedTuple):
    termination_status: str
    message: str
    action: str = STOP
    # A stop that must end by a deadline (a budget) carries its own graces: seconds before SIGTERM,
    # then before SIGKILL. None: the run's --stop-grace and term grace.
    grace: Optional[float] = None
    term_grace: Optional[float] = None


class Spend(NamedTuple):
    """What a run has cost so far at its host's hourly price, against its budget."""

    spent: float
    budget: float
    hourly_price: float
    elapsed: float

    @property
    def per_second(self) -> float:
        return self.hourly_price / 3600.0

    @property
    def seconds_left(self) -> float:
        """Time until the budget is spent at the current rate (0 once it is)."""
        return max(0.0, (self.budget - self.spent) / self.per_second) if self.per_second > 0 else math.inf

    def describe(self) -> str:
        return "spent $%s of $%s budget at $%s/hr after %.1f s" % (
            money(self.spent),
            money(self.budget),
            rate(self.hourly_price),
            self.elapsed,
        )

    def as_dict(self) -> Dict[str, Any]:
        return {
            "spent": round(self.spent, 9),
            "max_cost": self.budget,
            "hourly_price": self.hourly_price,
            "elapsed": round(self.elapsed, 3),
            "seconds_left": round(self.seconds_left, 3),
        }


def money(amount: float) -> str:
    """Dollars to the cent, to four places under a dollar (a few seconds of a GPU), and to three
    significant digits under a cent (a few seconds of a small instance)."""
    if abs(amount) >= 1:
        return "%.2f" % amount
    if abs(amount) >= 0.01 or amount == 0:
        return "%.4f" % amount
    decimals = min(12, 2 - int(math.floor(math.log10(abs(amount)))))
    return "%.*f" % (decimals, amount)


def rate(hourly_price: float) -> str:
    """An hourly price as price lists write it: `1.006`, `0.0104`, `32.77`."""
    return "%.4g" % hourly_price


def spend(max_cost: float, hourly_price: float, since: float, now: float) -> Spend:
    elapsed = max(0.0, now - since)
    return Spend(hourly_price * elapsed / 3600.0, float(max_cost), float(hourly_price), elapsed)


def budget_decision(
    max_cost: Optional[float], hourly_price: Optional[float], since: float, now: float, poll: float, tick: float
) -> Optional[Decision]:
    """The budget rule, pure: stop once the run's cost is within one poll interval's cost of `max_cost`.

    Cost is `hourly_price` times the time since `since` (when the agent took the run on), so it holds
    on the host alone. Firing one poll early leaves the stop sequence two poll intervals before the
    run has overshot by one poll's cost; its graces are cut to fit that window (less `tick`s of slack
    for the agent's own loop), so even a script that ignores STOP_TRAINING is killed in time.
    """
    if max_cost is None or hourly_price is None or hourly_price <= 0:
        return None
    now_spend = spend(max_cost, hourly_price, since, now)
    poll_cost = now_spend.per_second * poll
    if now_spend.spent < now_spend.budget - poll_cost:
        return None
    slack = 3 * tick + 0.1 * poll  # the loop's own latency: signals go out at the next tick, exits are seen after
    window = max(0.0, (now_spend.budget + poll_cost - now_spend.spent) / now_spend.per_second - slack)
    term = window / 4.0
    return Decision(
        st.T_BUDGET,
        now_spend.describe() + "; stopping within one poll interval ($%s)" % money(poll_cost),
        grace=window - term,
        term_grace=term,
    )


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

    def __init__(
        self,
        policies: Optional[Dict[str, Any]],
        started_at: float,
        hourly_price: Optional[float] = None,
        cost_since: Optional[float] = None,
        tick: float = 0.0,
    ) -> None:
        self.cfg = normalize(policies)
        self.started_at = started_at
        self.hourly_price = finite(hourly_price)
        # When the host began working on the run, on the clock `on_budget` is given (the agent's
        # monotonic clock: a wall clock stepped by NTP must not make the money look spent or unspent).
        self.cost_since = started_at if cost_since is None else cost_since
        self.tick = tick
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

    def spend(self, clock: float) -> Optional[Spend]:
        """The run's cost against its budget, when it has one (and its host a price)."""
        if self.cfg["max_cost"] is None or self.hourly_price is None:
            return None
        return spend(float(self.cfg["max_cost"]), self.hourly_price, self.cost_since, clock)

    def on_budget(self, clock: float) -> Optional[Decision]:
        """Every agent tick, before the other rules: the budget (`clock` as for `cost_since`)."""
        cfg = self.cfg
        return budget_decision(
            cfg["max_cost"], self.hourly_price, self.cost_since, clock, float(cfg["poll_interval"]), self.tick
        )

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
