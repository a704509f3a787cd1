"""The dashboard's live view of runs: one follower thread per run someone is watching.

A watched run that is still going is followed with `controller.follow`, the same machinery as `runs
wait` (the local agent's stream in-process, the remote agent's stream over one SSH connection): every
status it sees is recorded in the store, and new metrics are read from metrics.jsonl from where the
last read stopped. Nothing is polled on a host that no page is watching: a follower whose run no
page has asked about for IDLE_SECONDS ends, and one is started again when a page asks.

The web handlers only read the feeds' memory (under their lock); a `version` that moves on every
change lets an event stream tell in microseconds whether it has anything to send.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .. import charts, controller
from ..core import layout
from ..core import status as st
from ..core.errors import RunctlError
from ..core.fsutil import parse_jsonl
from ..store import Store

IDLE_SECONDS = 15.0  # a follower nobody asked about for this long ends
LOG_WINDOW = 1 << 20  # the last MiB of a run's log is kept in memory
REMOTE_METRICS_EVERY = 0.25  # at most this often a remote run's metrics.jsonl is read again
RETRY_SECONDS = 3.0  # after a follower failed (host unreachable), wait this long before another


class NotWanted(Exception):
    """Raised inside a follower to end it: no page watches its run any more."""


class Stores:
    """One store connection per thread (SQLite connections are not shared between threads)."""

    def __init__(self, path: Any = None) -> None:
        self.path = path
        self.local = threading.local()

    def get(self) -> Store:
        db = getattr(self.local, "store", None)
        if db is None:
            db = self.local.store = Store(self.path)
        return db


class RunFeed:
    """What the dashboard knows of one run: its view, its metric records, the tail of its log."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.lock = threading.Lock()
        self.version = 0
        self.view: dict[str, Any] = {}
        self.records: list[dict[str, Any]] = []
        self.carried: charts.Carried = {}  # the records' metrics as chart series, carried once each
        self.metrics_offset = 0  # bytes of metrics.jsonl read so far (complete lines only)
        self.log = bytearray()  # the window of the log kept: bytes [log_end - len(log), log_end)
        self.log_end = 0
        self.log_known = False  # whether log_end is the log's real size (read or streamed from its start)
        self.problem: str | None = None
        self.thread: threading.Thread | None = None
        self.wanted_at = time.monotonic()
        self.failed_at = 0.0
        self.metrics_read_at = 0.0
        self.metrics_due = False
        self.loaded = threading.Event()
        self.until_end = False  # a stop was asked here: follow the run to its end, watched or not
        self.missing = False

    # ---- changes (under the lock) -----------------------------------------------------------

    def changed(self) -> None:
        self.version += 1

    def add_metrics(self, data: bytes) -> None:
        """Append the complete lines of `data` (metrics.jsonl from `metrics_offset`)."""
        end = data.rfind(b"\n") + 1
        if end == 0:
            return
        found = parse_jsonl(data[:end])
        with self.lock:
            self.metrics_offset += end
            if found:
                self.records.extend(found)
                charts.carry(found, self.carried)
                self.changed()

    def add_log(self, data: bytes, position: int) -> None:
        """Log bytes that start at byte `position` of the log; bytes already held are skipped."""
        with self.lock:
            if position + len(data) <= self.log_end:
                return
            data = data[max(0, self.log_end - position) :]
            self.log.extend(data)
            self.log_end += len(data)
            if len(self.log) > LOG_WINDOW:
                del self.log[: len(self.log) - LOG_WINDOW]
            self.changed()

    def set_view(self, view: dict[str, Any]) -> None:
        with self.lock:
            if view != self.view:
                self.view = view
                self.changed()

    # ---- reads (for the handlers) -----------------------------------------------------------

    def metrics_since(self, since: int, limit: int = 20000) -> tuple[list[dict[str, Any]], int]:
        """Records from index `since` (at most `limit`), and the total count."""
        with self.lock:
            return self.records[max(0, since) : max(0, since) + limit], len(self.records)

    def log_since(self, offset: int | None, tail: int = 64 << 10) -> dict[str, Any]:
        """Log text from byte `offset` (None: the last `tail` bytes): {"offset", "next_offset", "text", "truncated"}."""
        with self.lock:
            start_held = self.log_end - len(self.log)
            if offset is None or offset < 0:
                offset = max(start_held, self.log_end - tail)
            truncated = offset < start_held
            begin = max(offset, start_held)
            data = bytes(self.log[begin - start_held :]) if begin < self.log_end else b""
            return {
                "offset": begin,
                "next_offset": max(begin, self.log_end),
                "text": data.decode("utf-8", "replace"),
                "truncated": truncated,
            }

    def series(self, metric: str) -> tuple[str, list[charts.Point]]:
        """One metric's chart series (x label, finite points)."""
        with self.lock:
            pairs = list(self.carried.get(metric, ()))
        return charts.series_of(pairs)

    @property
    def following(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class Hub:
    """Every feed of this dashboard, and the followers that keep them live."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.feeds: dict[str, RunFeed] = {}
        self.lock = threading.Lock()

    def feed(self, run_id: str) -> RunFeed:
        """The run's feed, loaded on first use (view, metrics, log); KeyError for an unknown run."""
        with self.lock:
            found = self.feeds.get(run_id)
            if found is None:
                found = self.feeds[run_id] = RunFeed(run_id)
                fresh = True
            else:
                fresh = False
        if fresh:
            try:
                self._load(found)
            except BaseException:
                found.missing = True  # nothing half loaded is kept: the next request loads it again
                with self.lock:
                    self.feeds.pop(run_id, None)
                raise
            finally:
                found.loaded.set()
        found.loaded.wait(60)  # a second request for the same run waits for the first one's load
        if found.missing:
            raise KeyError(run_id)
        return found

    def _load(self, feed: RunFeed) -> None:
        db = self.stores.get()
        row = db.get(feed.run_id)
        if row is None:
            feed.missing = True
            with self.lock:
                self.feeds.pop(feed.run_id, None)
            return
        try:
            view = controller.refresh(db, row)
        except RunctlError as exc:
            view = controller.view(row)
            view["warning"] = "last known state; %s" % exc.message
        feed.set_view(view)
        if controller.being_launched(row):
            return
        self.read_metrics(feed, row)
        if st.is_terminal(view["status"]) or not self.can_follow(row):
            data = self._read(row, layout.LOG) or b""
            feed.add_log(data, 0)
            with feed.lock:
                feed.log_known = True

    @staticmethod
    def can_follow(row: dict[str, Any]) -> bool:
        return bool(row.get("run_dir"))

    def _read(self, row: dict[str, Any], name: str, start: int | None = None) -> bytes | None:
        try:
            return controller.transport_for(row).read_file("%s/%s" % (row["run_dir"], name), start=start)
        except (RunctlError, OSError):
            return None

    def read_metrics(self, feed: RunFeed, row: dict[str, Any]) -> None:
        feed.metrics_read_at = time.monotonic()
        feed.metrics_due = False
        data = self._read(row, layout.METRICS, feed.metrics_offset)
        if data:
            feed.add_metrics(data)

    # ---- followers --------------------------------------------------------------------------

    def want(self, run_id: str) -> RunFeed:
        """A page is watching the run: keep its feed live (start its follower if it has none)."""
        feed = self.feed(run_id)
        feed.wanted_at = time.monotonic()
        with feed.lock:
            view = feed.view
            if feed.following or st.is_terminal(str(view.get("status"))):
                return feed
            if time.monotonic() - feed.failed_at < RETRY_SECONDS:
                return feed
            feed.thread = threading.Thread(target=self._follow, args=(feed,), name="follow-%s" % run_id, daemon=True)
            feed.thread.start()
        return feed

    def _follow(self, feed: RunFeed) -> None:
        db = self.stores.get()
        row = db.get(feed.run_id)
        if row is None:
            return
        remote = (row.get("transport") or {}).get("kind") != "local"
        position = [0]

        def on_log(data: bytes) -> None:
            feed.add_log(data, position[0])
            position[0] += len(data)

        def on_frame(kind: str, payload: Any) -> None:
            if kind != "log" and not feed.log_known:
                with feed.lock:
                    feed.log_known = True  # the stream has caught up with the log
                    feed.changed()
            if kind == "reconnecting" and feed.problem is None:
                with feed.lock:
                    feed.problem = "connection to %s lost; reconnecting..." % row["host"]
                    feed.changed()
            elif kind != "log" and feed.problem is not None:
                with feed.lock:
                    feed.problem = None
                    feed.changed()
            if kind in ("status", "end"):
                fresh = db.get(feed.run_id) or row
                feed.set_view(controller.view(fresh))
                feed.metrics_due = True
            if feed.metrics_due and (
                kind == "end" or not remote or time.monotonic() - feed.metrics_read_at >= REMOTE_METRICS_EVERY
            ):
                self.read_metrics(feed, row)
            if kind != "end" and not feed.until_end and time.monotonic() - feed.wanted_at > IDLE_SECONDS:
                raise NotWanted

        try:
            final = controller.follow(db, row, on_log, None, from_start=True, on_frame=on_frame)
            with feed.lock:
                feed.log_known = True
            feed.set_view(final)
            self.read_metrics(feed, db.get(feed.run_id) or row)
        except NotWanted:
            pass
        except (RunctlError, OSError) as exc:
            with feed.lock:
                feed.problem = exc.message if isinstance(exc, RunctlError) else str(exc)
                feed.failed_at = time.monotonic()
                feed.changed()

    def stop_all(self) -> None:
        """Let every follower end at its next frame (the server is shutting down)."""
        for feed in list(self.feeds.values()):
            feed.until_end = False
            feed.wanted_at = -IDLE_SECONDS
