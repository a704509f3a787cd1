"""The end of a run: how its exit reads, why it ended (the verdict), and the summary it leaves.

The verdict is a pure function of what the agent observed (the stop it initiated, the exit code,
the completion marker, the log's last exception); the supervisor gathers the observations and
records the result. The host's end-of-run step (`on_end`) comes after, in agent/onend.py.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Dict, List, Optional, Tuple

from ..core import completion, failure, policies
from ..core import status as st

TAIL_BYTES = 1 << 16

Verdict = Tuple[str, str, str]  # status, termination_status, termination_message


def exit_fields(returncode: int) -> Tuple[int, Optional[str]]:
    """(the exit code a shell would show, the signal's name when a signal ended the process)."""
    if returncode >= 0:
        return returncode, None
    return 128 - returncode, signal.Signals(-returncode).name


def verdict(
    reason: Optional[policies.Decision],
    exit_code: int,
    term_sent: bool,
    marker: Dict[str, Any],
    started_at: Optional[float],
    now: float,
    log_tail: str,
) -> Verdict:
    """Why the run ended: the stop the agent initiated if any, else the completion rules."""
    if reason is not None:
        status = policies.final_status(reason, exit_code, term_sent)
        if status == st.FAILED and reason.termination_status != st.T_DIVERGED:
            return (
                status,
                st.T_FAILED,
                "%s while stopping (%s: %s)"
                % (completion.describe_exit(exit_code), reason.termination_status, reason.message),
            )
        return status, reason.termination_status, reason.message
    found = completion.classify(
        completion.Evidence(
            now=now + completion.MARKER_STABLE_SECONDS,  # the process is gone: the marker can't change
            started_at=started_at,
            exit_code=exit_code,
            marker_size=marker.get("size"),
            marker_mtime=marker.get("mtime"),
        )
    )
    message = found.message
    if found.status == st.FAILED:
        cause = failure.summary(log_tail)
        if cause:
            message += ": " + cause
    return found.status, found.termination_status, message


def log_tail(path: str) -> str:
    """The last TAIL_BYTES of the run log ("" when it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - TAIL_BYTES))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def summary(run_id: str, state: Dict[str, Any], losses: List[Dict[str, Any]]) -> Dict[str, Any]:
    """A training_log.json-compatible summary (the original dashboards' keys)."""
    s = state
    return {
        "job_id": run_id,
        "run_id": run_id,
        "name": s.get("name"),
        "status": s.get("status"),
        "epoch": s.get("epoch"),
        "total_epochs": s.get("total_epochs"),
        "step": s.get("step"),
        "loss": s.get("loss"),
        "min_loss": s.get("min_loss"),
        "losses": losses,
        "elapsed_time": s.get("duration"),
        "start_time": s.get("started_at"),
        "termination_status": s.get("termination_status") or "",
        "termination_message": s.get("termination_message") or "",
        "exit_code": s.get("exit_code"),
    }
