"""The dashboard's web app: three pages, the JSON API, and two event streams (Starlette).

Handlers that touch the store or a host are plain functions, which Starlette runs in its thread
pool; the event streams only read the feeds' memory (see live.py), every STREAM_TICK.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import controller
from ..cli.common import _jsonable as _plain
from ..core.errors import RunctlError, UsageError
from ..report_html import LOSS_SIZE, SMOOTHING, chart
from . import access, pages
from .live import Hub, Stores
from .present import host_summaries, run_details, run_summary

STREAM_TICK = 0.1  # how often an event stream looks for news (in memory)
LIST_EVERY = 1.0  # how often the runs list stream rebuilds the list (from the store)
KEEPALIVE = 15.0
LOG_WAIT = 3.0  # how long a log request waits for a live run's follower to catch up with the log


def _json(value: Any, status: int = 200) -> JSONResponse:
    # NaN and infinities become strings, as in `--output json` (a browser's JSON.parse refuses them).
    return JSONResponse(_plain(value), status_code=status)


def _sse(event: str, data: Any) -> str:
    return "event: %s\ndata: %s\n\n" % (event, json.dumps(_plain(data), default=str))


def _int(request: Request, name: str, default: int | None) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError("%s must be an integer, got %r" % (name, value)) from None


def create_app(token: str, host: str, port: int, stores: Stores | None = None) -> Any:
    stores = stores or Stores()
    hub = Hub(stores)

    def summary_of(run_id: str) -> dict[str, Any] | None:
        db = stores.get()
        row = db.get(run_id)
        if row is None:
            return None
        feed = hub.feeds.get(run_id)
        view = feed.view if feed is not None and feed.following and feed.view else None
        if view is None:
            view = controller.refreshed_or_last_known(db, row)
        return run_summary(db, db.get(run_id) or row, view)

    def listing(refresh: bool) -> list[dict[str, Any]]:
        db = stores.get()
        out = []
        for row in db.list(include_all=True):
            followed = hub.feeds.get(row["run_id"])
            view = None if refresh and not (followed and followed.following) else controller.view(row)
            out.append(run_summary(db, row, view if view is not None else controller.refreshed_or_last_known(db, row)))
        return out

    # ---- pages ----------------------------------------------------------------------------------

    def page(request: Request, name: str, **values: Any) -> Response:
        response = HTMLResponse(pages.page(name, token, **values))
        if request.query_params.get("token"):
            response.set_cookie(access.COOKIE % port, token, httponly=True, samesite="strict", path="/")
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
        )
        return response

    async def runs_page(request: Request) -> Response:
        return page(request, "runs")

    async def run_page(request: Request) -> Response:
        return page(request, "run", run_id=request.path_params["run_id"])

    async def hosts_page(request: Request) -> Response:
        return page(request, "hosts")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        types = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in types:
            return Response("not found", 404)
        body = resources.files("runctl.dashboard").joinpath("static").joinpath(name).read_bytes()
        return Response(body, media_type=types[name], headers={"Cache-Control": "no-cache"})

    # ---- API ------------------------------------------------------------------------------------

    def api_runs(request: Request) -> Response:
        runs = listing(refresh=True)
        status, provider = request.query_params.get("status"), request.query_params.get("provider")
        if status:
            runs = [r for r in runs if r["status"] == status or (status == "active" and r["active"])]
        if provider:
            runs = [r for r in runs if r["provider"] == provider]
        return _json(runs)

    def api_run(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        summary = summary_of(run_id)
        if summary is None:
            return _json({"error": "no run with id %r" % run_id}, 404)
        db = stores.get()
        row = db.get(run_id)
        assert row is not None
        details = run_details(db, row, summary)
        feed = hub.feeds.get(run_id)
        if feed is not None and feed.problem:
            details["problems"].append(feed.problem)
        return _json(details)

    def api_metrics(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            since = _int(request, "since", 0) or 0
            feed = hub.feed(run_id)
        except UsageError as exc:
            return _json({"error": exc.message}, 400)
        except KeyError:
            return _json({"error": "no run with id %r" % run_id}, 404)
        records, total = feed.metrics_since(since)
        return _json({"since": since, "count": total, "records": records})

    def api_log(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            offset = _int(request, "offset", None)
            feed = hub.feed(run_id)
        except UsageError as exc:
            return _json({"error": exc.message}, 400)
        except KeyError:
            return _json({"error": "no run with id %r" % run_id}, 404)
        if not feed.log_known:  # a live run: its follower streams the log from its start at once
            hub.want(run_id)
            deadline = time.monotonic() + LOG_WAIT
            while not feed.log_known and feed.following and time.monotonic() < deadline:
                time.sleep(0.02)
        return _json(feed.log_since(offset))

    def api_chart(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        metric = request.query_params.get("metric") or "loss"
        try:
            smoothing = float(request.query_params.get("smoothing") or SMOOTHING)
            width = _int(request, "width", LOSS_SIZE[0]) or LOSS_SIZE[0]
            feed = hub.feed(run_id)
        except (ValueError, UsageError):
            return _json({"error": "smoothing must be a number in [0, 1) and width an integer"}, 400)
        except KeyError:
            return _json({"error": "no run with id %r" % run_id}, 404)
        if not 0.0 <= smoothing < 1.0:
            return _json({"error": "smoothing must be at least 0 and below 1"}, 400)
        x_label, points = feed.series(metric)
        size = (max(240, min(width, 2400)), LOSS_SIZE[1])
        return Response(chart(metric, x_label, points, size, smoothing), media_type="image/svg+xml")

    def api_stop(request: Request, body: dict[str, Any]) -> Response:
        from ..core.stopping import MAX_GRACE

        run_id = request.path_params["run_id"]
        db = stores.get()
        row = db.get(run_id)
        if row is None:
            return _json({"error": "no run with id %r" % run_id}, 404)
        grace = body.get("grace")
        if grace is not None and (
            isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace <= MAX_GRACE
        ):
            return _json({"error": "grace must be a number of seconds from 0 to %d" % MAX_GRACE}, 400)
        try:
            result = controller.stop(db, row, None if grace is None else float(grace))
        except UsageError as exc:
            return _json({"error": exc.message, "hint": exc.hint}, 409)
        except RunctlError as exc:  # a run still being set up, or a host out of reach
            return _json({"error": exc.message, "hint": exc.hint}, 502)
        feed = hub.want(run_id)
        feed.until_end = True  # followed to its end (and its end-of-run step), watched or not
        return _json({"ok": True, "run_id": run_id, "stop": result})

    async def api_stop_async(request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return _json({"error": 'the body must be JSON, e.g. {} or {"grace": 30}'}, 400)
        if not isinstance(body, dict):
            return _json({"error": "the body must be a JSON object"}, 400)
        return await run_in_threadpool(api_stop, request, body)

    def api_hosts(request: Request) -> Response:
        return _json(host_summaries(stores.get()))

    def api_health(request: Request) -> Response:
        import os

        return _json({"ok": True, "pid": os.getpid(), "runs": len(hub.feeds)})

    # ---- event streams --------------------------------------------------------------------------

    async def run_events(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            metrics_sent = _int(request, "metrics", 0) or 0
            log_at = _int(request, "log", None)
            feed = await run_in_threadpool(hub.want, run_id)
        except UsageError as exc:
            return _json({"error": exc.message}, 400)
        except KeyError:
            return _json({"error": "no run with id %r" % run_id}, 404)

        async def stream() -> AsyncIterator[str]:
            nonlocal metrics_sent, log_at, feed
            seen, beat = -1, time.monotonic()
            said: tuple[Any, Any] = (None, None)  # the view and the host problem last sent
            yield "retry: 1000\n\n"
            while True:
                try:
                    feed = await run_in_threadpool(hub.want, run_id)
                except KeyError:  # the run's record was removed from the store
                    return
                if feed.version != seen:
                    seen = feed.version
                    with feed.lock:
                        view, problem = feed.view, feed.problem
                    if (view, problem) != said:
                        said = (view, problem)
                        summary = await run_in_threadpool(summary_of, run_id)
                        yield _sse("run", {"run": summary, "problem": problem})
                    records, _ = feed.metrics_since(metrics_sent)
                    if records:
                        yield _sse("metrics", {"since": metrics_sent, "records": records})
                        metrics_sent += len(records)
                    log = feed.log_since(log_at if log_at is not None else feed.log_end)
                    if log["text"] or log_at is None:
                        if log["text"]:
                            yield _sse("log", log)
                        log_at = log["next_offset"]
                    beat = time.monotonic()
                elif time.monotonic() - beat > KEEPALIVE:
                    beat = time.monotonic()
                    yield ": keepalive\n\n"
                await asyncio.sleep(STREAM_TICK)

        return _stream(stream())

    async def list_events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            said: dict[str, str] = {}
            beat = time.monotonic()
            yield "retry: 1000\n\n"
            while True:
                runs = await run_in_threadpool(listing, False)
                for run in runs:
                    if run["active"]:
                        await run_in_threadpool(hub.want, run["run_id"])
                hosts = await run_in_threadpool(lambda: host_summaries(stores.get()))
                for event, value in (("runs", runs), ("hosts", hosts)):
                    text = json.dumps(_plain(value), default=str)
                    if text != said.get(event):
                        said[event] = text
                        beat = time.monotonic()
                        yield "event: %s\ndata: %s\n\n" % (event, text)
                if time.monotonic() - beat > KEEPALIVE:
                    beat = time.monotonic()
                    yield ": keepalive\n\n"
                await asyncio.sleep(LIST_EVERY)

        return _stream(stream())

    def _stream(body: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(
            body, media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )

    routes = [
        Route("/", runs_page),
        Route("/runs/{run_id}", run_page),
        Route("/hosts", hosts_page),
        Route("/static/{name}", static),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/health", api_health),
        Route("/api/runs", api_runs),
        Route("/api/events", list_events),
        Route("/api/runs/{run_id}", api_run),
        Route("/api/runs/{run_id}/metrics", api_metrics),
        Route("/api/runs/{run_id}/log", api_log),
        Route("/api/runs/{run_id}/chart", api_chart),
        Route("/api/runs/{run_id}/events", run_events),
        Route("/api/runs/{run_id}/stop", api_stop_async, methods=["POST"]),
        Route("/api/hosts", api_hosts),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        hub.stop_all()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.hub = hub
    return access.Guard(app, token, host, port)
