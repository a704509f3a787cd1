"""Following a run to its end from the CLI: shared by `train --wait` and `runs wait`."""

from __future__ import annotations

import sys
from typing import Any

from .. import controller
from ..core import status as st
from ..core.durations import format_duration
from ..store import Store
from .common import Detached, Output, emit_json, say


def _write_log(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def wait_for(
    store: Store,
    row: dict[str, Any],
    output: Output,
    timeout: float | None,
    stream_log: bool,
) -> int:
    """Follow until the run ends; returns the documented exit code for its outcome."""
    on_log = _write_log if (stream_log and output == Output.text) else None
    try:
        run = controller.follow(
            store, row, on_log, timeout, on_notice=say if output == Output.text else None, on_end_notice=say
        )
    except KeyboardInterrupt:
        raise Detached(
            "detached from run %s; it keeps going" % row["run_id"],
            "reattach with: runctl runs wait %s   (or: runctl runs logs %s --follow)" % (row["run_id"], row["run_id"]),
        ) from None
    current = store.get(row["run_id"])
    if current is not None and run.get("checkpoint_s3"):
        run = controller.await_uploads(store, current, say if output == Output.text else None)
    if run.get("disk_full"):
        disk_full(run, output)
    if run.get("checkpoint_s3_error") and run.get("status") == st.FAILED and not run.get("started_at"):
        s3_failed(run, output)
    report_end(run, output)
    release_failed(store, run)
    return st.exit_code_for(run["status"])


def release_failed(store: Store, run: dict[str, Any]) -> None:
    """A host the run's end could not release is a host error (exit 4) with the command that does it."""
    from ..core.errors import HostError
    from ..ending import failed_release

    failed = failed_release(store, run["run_id"])
    if failed is not None:
        action = (failed.get("release") or {}).get("action")
        raise HostError(
            "run %s ended, but its host could not be %s: %s"
            % (run["run_id"], "stopped" if action == "stop" else "terminated", failed.get("error")),
            failed.get("manual") or "release it by hand in the provider's console",
        )


def disk_full(run: dict[str, Any], output: Output) -> None:
    """A run ended by a full disk is a host error (exit 4): say where, and that space must be freed."""
    from ..core.errors import WriteFailed

    if output == Output.json:
        emit_json(run)
    error = WriteFailed("disk_full", str(run["disk_full"]), "" if run["provider"] == "local" else run["host"])
    error.message = "run %s failed: %s" % (run["run_id"], error.message)
    raise error


def s3_failed(run: dict[str, Any], output: Output) -> None:
    """A run the host could not give its S3 inputs (or bucket) failed before training: a host error (exit 4)."""
    from ..core.errors import HostError

    if output == Output.json:
        emit_json(run)
    raise HostError(
        "run %s failed before training: %s" % (run["run_id"], run.get("termination_message")),
        run.get("checkpoint_s3_hint") or "see the run log: runctl runs logs %s" % run["run_id"],
    )


def report_end(run: dict[str, Any], output: Output) -> None:
    if output == Output.json:
        emit_json(run)
        return
    took = ""
    if run.get("started_at") and run.get("ended_at"):
        took = " after %s" % format_duration(float(run["ended_at"]) - float(run["started_at"]))
    label = st.label(run["status"], run.get("termination_status"))
    if not st.is_terminal(run["status"]) and run.get("notice"):
        # Following ended without an end: its host went away (the notice says why and what to do).
        say("run %s is still %s as last seen: %s" % (run["run_id"], run["status"], run["notice"]))
        return
    say("run %s %s%s: %s" % (run["run_id"], label, took, run.get("termination_message") or ""))
