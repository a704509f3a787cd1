"""What `runctl runs report` puts in a report: everything known of one run, read once, from the store
and through the run's transport (so a run on an SSH or cloud host is read where its run dir is).

A part that cannot be read (a host gone, a file missing) is left out with the reason in `problems`:
the report of a run whose host was terminated still shows what the store knows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from . import controller
from .core import layout
from .core.errors import HostError, RunctlError, UsageError
from .core.fsutil import parse_jsonl
from .report_html import seconds
from .store import Store
from .transport.base import Transport

LOG_TAIL_LINES = 40
TAIL_BYTES = 2 << 20  # the sparkline reads at most the last 2 MiB of metrics.jsonl


class _Reader:
    """Reads the run's files through its transport; once the host fails to answer, the other parts
    are not asked for again (each would wait for its own connection timeout)."""

    def __init__(self, row: dict[str, Any], problems: list[str]) -> None:
        self.row = row
        self.problems = problems
        self.down: str | None = None
        self.transport: Transport | None = None

    def call(self, what: str, action: Callable[[Transport], Any]) -> Any:
        if self.down is not None:
            self.problems.append("%s not read: %s" % (what, self.down))
            return None
        try:
            if self.transport is None:
                self.transport = controller.transport_for(self.row)
            return action(self.transport)
        except (RunctlError, OSError) as exc:
            reason = exc.message if isinstance(exc, RunctlError) else str(exc)
            if isinstance(exc, HostError):
                self.down = reason
            self.problems.append("%s could not be read: %s" % (what, reason))
            return None

    def file(self, name: str, tail: int | None = None) -> bytes | None:
        path = os.path.join(self.row["run_dir"], name)
        data: bytes | None = self.call(name, lambda transport: transport.read_file(path, tail))
        return data


def metrics(row: dict[str, Any], tail_bytes: int | None = None) -> list[dict[str, Any]]:
    """The run's metrics.jsonl records ([] when there are none or it cannot be read); with
    `tail_bytes`, only those in its last `tail_bytes` bytes."""
    # A first line cut by the tail is not valid JSON, and is skipped.
    return parse_jsonl(_Reader(row, []).file(layout.METRICS, tail_bytes) or b"")


def collect(store: Store, row: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The report's data for the run `row`, `run` being its refreshed view (as `runs status` shows it)."""
    problems: list[str] = []
    fresh = store.get(row["run_id"]) or row
    reader = _Reader(fresh, problems)
    metrics_data = reader.file(layout.METRICS)
    events_data = reader.file(layout.EVENTS)
    log_data = reader.file(layout.LOG)
    listing: dict[str, Any] | None = None
    if fresh.get("started_at") or fresh["status"] not in controller.PRE_LAUNCH:
        listing = reader.call("the checkpoint dir", lambda transport: transport.list_checkpoints(fresh["run_dir"]))
    timeline = [{"source": "controller", **e} for e in store.events(row["run_id"])]
    agent_events = parse_jsonl(events_data or b"")
    for event in agent_events:  # the uploader's own carry "source": "s3-upload", kept as who did it
        kind = event.get("event", "?")
        timeline.append({"source": "agent", "kind": kind, **{k: v for k, v in event.items() if k != "event"}})
    timeline.sort(key=lambda e: seconds(e.get("t")))
    log_lines = (log_data or b"").decode("utf-8", "replace").splitlines()[-LOG_TAIL_LINES:]
    spec = fresh.get("spec") or {}
    return {
        "run": run,
        "spec": {"script": spec.get("script"), "script_args": spec.get("script_args") or []},
        "metrics": parse_jsonl(metrics_data or b""),
        "timeline": timeline,
        "log_tail": log_lines,
        "checkpoints": listing,
        "downloaded": [e for e in timeline if e["kind"] == "checkpoints_downloaded"],
        "s3": (fresh.get("state") or {}).get("checkpoint_s3"),
        "s3_uploads": [e for e in agent_events if e.get("event") == "checkpoint_uploaded"],
        "problems": problems,
        "generated_at": time.time(),
    }


def check_target(path: str) -> str:
    """The absolute path the report goes to, refused before any work when it cannot be a file there."""
    target = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(target):
        raise UsageError(
            "%s is a directory" % path,
            "name the report file, for example: --html %s" % os.path.join(path, "report.html"),
        )
    if os.path.exists(target) and not os.path.isfile(target):
        raise UsageError(
            "%s is not a regular file (a device, socket or pipe is never replaced)" % path,
            "name a new file or an existing report, for example: --html report.html",
        )
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise UsageError(
            "cannot write %s: %s is not a directory" % (path, parent),
            "create it first, or name a file in an existing directory",
        )
    return target


def write(target: str, html: str) -> None:
    """Replace `target` atomically (a temp file beside it, renamed): a reader never sees half a report,
    and a failed write leaves nothing behind."""
    from .core.fsutil import atomic_write

    try:
        atomic_write(target, html.encode("utf-8"), fsync=True, mode=0o644)
    except OSError as exc:
        raise UsageError(
            "cannot write %s: %s" % (target, exc.strerror or exc), "name a file in a directory you can write"
        ) from None
