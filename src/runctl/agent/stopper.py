"""The stop sequence of one run, as the agent carries it out: STOP_TRAINING, SIGTERM, SIGKILL.

When each signal is due is decided by the pure core.stopping.Sequence from the agent's monotonic
clock, passed in by the caller; this module only reads the requests (stop_request.json, the user's
STOP_TRAINING files, a signal to the agent), records what it did, and hands the due signal to the
`send` callback. No process is touched here, so it is unit-tested with a run dir and a clock.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..core import layout, policies, stopping
from ..core import status as st
from ..core.fsutil import atomic_write, read_json
from .record import RunRecord

Send = Callable[[str], List[Dict[str, object]]]  # signal name -> the other processes it reached


class Stopper:
    def __init__(self, record: RunRecord, project_dir: str, notify: Callable[[str], None]) -> None:
        self.record = record
        self.notify = notify
        self.stop_file = record.path(layout.STOP_FILE)
        self.original_stop_file = os.path.join(project_dir, layout.ORIGINAL_STOP_FILE)
        self.request_path = record.path(layout.STOP_REQUEST)
        self.engine: Optional[policies.PolicyEngine] = None  # set once the script runs
        self.reason: Optional[policies.Decision] = None
        self.sequence: Optional[stopping.Sequence] = None
        self.request_seen: Any = None
        self.signal_name = ""
        self.signal_at: Optional[float] = None
        self.exited_at: Optional[float] = None  # once set, nothing can stop the process any more
        self.budget_hurried = False

    @property
    def term_sent(self) -> bool:
        return self.sequence is not None and self.sequence.term_sent_at is not None

    def on_signal(self, name: str, at: float) -> None:
        """The agent itself received SIGTERM or SIGINT: a stop the user asked for."""
        self.signal_name = name
        self.signal_at = at

    def asked(self) -> Tuple[str, Optional[float]]:
        """Why the user asked for a stop (controller request, signal, a STOP_TRAINING file) and its grace.

        Only meaningful before the agent stops the run itself: it writes STOP_TRAINING only then.
        """
        request = read_json(self.request_path)
        if request is not None:
            self.request_seen = stopping.request_key(request)
            grace = policies.finite(request.get("grace"))
            return str(request.get("message") or "stopped by the user"), grace
        if self.signal_name:
            return "the agent received %s" % self.signal_name, None
        if os.path.exists(self.stop_file):
            return "STOP_TRAINING file created", None
        if os.path.exists(self.original_stop_file):
            return "%s file created" % layout.ORIGINAL_STOP_FILE, None
        return "", None

    def check_controls(self, mono: float) -> None:
        """Stop requests from the controller, the user's STOP_TRAINING files, and signals to the agent.

        Once stopping, a newer request from the controller (`runctl runs stop --grace N` or `--now`)
        can still hurry the sequence: the earliest deadline wins.
        """
        if self.reason is not None:
            self.check_hurry(mono)
            return
        reason, grace = self.asked()
        if reason:
            self.initiate(policies.Decision(st.T_USER_STOP, reason), mono, grace=grace)

    def check_hurry(self, mono: float) -> None:
        request = read_json(self.request_path)
        if request is None or self.sequence is None or stopping.request_key(request) == self.request_seen:
            return
        self.request_seen = stopping.request_key(request)
        assert self.engine is not None
        grace = stopping.clamp_grace(request.get("grace"), float(self.engine.cfg["stop_grace"]))
        hurried = self.sequence.add(mono, grace)
        self.record.event("stop_requested_again", grace=grace, hurried=hurried, message=request.get("message"))

    def apply(self, decision: Optional[policies.Decision], mono: float) -> None:
        """A policy's decision: a notice is recorded and sent; anything else starts the stop."""
        if decision is None:
            return
        if decision.action == policies.NOTIFY:
            self.record.event("policy_notice", termination_status=decision.termination_status, message=decision.message)
            self.record.write_status(notice=decision.message)
            self.notify("policy")
            return
        if self.reason is not None and decision.termination_status in (st.T_BUDGET, st.T_SPOT):
            self.hurry_for_budget(decision, mono)
            return
        grace = 0.0 if decision.action == policies.STOP_NOW else decision.grace
        if grace is not None and self.engine is not None:
            grace = min(grace, float(self.engine.cfg["stop_grace"]))  # a deadline only ever shortens it
        self.initiate(decision, mono, grace=grace)

    def hurry_for_budget(self, decision: policies.Decision, mono: float) -> None:
        """The budget runs out (or a spot notice comes) while a stop is under way (say `runs stop
        --grace 1h`): the stop keeps its reason but must end within that window, like a stop it began."""
        if self.budget_hurried or self.sequence is None or decision.grace is None or decision.term_grace is None:
            return
        self.budget_hurried = True
        if self.sequence.term_sent_at is None:
            self.sequence.add(mono, decision.grace)
            self.sequence.term_grace = min(self.sequence.term_grace, max(0.0, decision.term_grace))
        else:
            self.sequence.add(mono, decision.grace + decision.term_grace)  # brings SIGKILL forward
        self.record.event(
            "stop_hurried_by_budget" if decision.termination_status == st.T_BUDGET else "stop_hurried_by_spot_notice",
            message=decision.message,
        )

    def initiate(self, decision: policies.Decision, mono: float, grace: Optional[float] = None) -> None:
        """Graceful first: STOP_TRAINING for the script, then SIGTERM to the group, then SIGKILL."""
        if self.reason is not None or self.engine is None:
            return
        if self.exited_at is not None:
            self.record.event(
                "policy_after_exit",
                termination_status=decision.termination_status,
                message=decision.message,
                exited_at=self.exited_at,
                note="fired on output read after the process had exited: not the end reason",
            )
            return
        self.reason = decision
        grace = stopping.clamp_grace(grace, float(self.engine.cfg["stop_grace"]))
        if not os.path.exists(self.stop_file):
            atomic_write(self.stop_file, (decision.message + "\n").encode())
        term_grace = float(self.engine.cfg["term_grace"])
        if decision.term_grace is not None:
            term_grace = min(term_grace, max(0.0, decision.term_grace))
        self.sequence = stopping.Sequence(term_grace)
        self.sequence.add(mono, grace)
        self.record.event(
            "stop_initiated",
            termination_status=decision.termination_status,
            message=decision.message,
            grace=grace,
        )
        if self.record.ended:
            return
        self.record.write_status(
            fsync=True,
            status=st.STOPPING,
            termination_status=decision.termination_status,
            termination_message=decision.message,
        )
        self.notify("policy")

    def advance(self, mono: float, send: Send, target: str) -> Optional[str]:
        """Send the signal the stop sequence says is due (to `target` and every other descendant)."""
        if self.sequence is None:
            return None
        due = self.sequence.due(mono)
        if due is None:
            return None
        self.sequence.sent(due, mono)
        others = send(due)
        self.record.event("signal", signal=due, target=target, processes=others)
        return due

    def at_exit(self, exited_at: float) -> None:
        """A stop asked for around the moment the process exited on its own: record what it was.

        A STOP_TRAINING file the user created while the process lived may have been honoured by the
        script: that run was stopped by the user. A stop request the agent had not yet passed on (no
        STOP_TRAINING written), or one that came after the exit, stopped nothing: the run ended
        naturally. Both times go to events.jsonl either way.
        """
        if self.reason is not None:
            return
        reason, _ = self.asked()
        if not reason:
            return
        by_file = any(
            os.path.exists(path) and os.path.getmtime(path) <= exited_at
            for path in (self.stop_file, self.original_stop_file)
        )
        self.record.event(
            "stop_at_exit",
            message=reason,
            requested_at=self.requested_at(),
            exited_at=exited_at,
            counted=by_file,
            note=(
                "the script could see the stop file before it exited"
                if by_file
                else "the process exited before runctl asked it to stop"
            ),
        )
        if by_file:
            self.reason = policies.Decision(st.T_USER_STOP, reason)

    def requested_at(self) -> Optional[float]:
        """When the stop was asked for: the request's own time, else the stop file's."""
        request = read_json(self.request_path)
        if request is not None and policies.is_finite(request.get("t")):
            return float(request["t"])
        for path in (self.stop_file, self.original_stop_file):
            try:
                return os.path.getmtime(path)
            except OSError:
                continue
        return self.signal_at
