"""The spot watcher: a thread of the agent that polls the instance metadata service for a notice.

Only on spot instances (the controller knows the instance's lifecycle and puts a `spot` block in
the spec). IMDSv2 as the AWS SDKs speak it: a token from `PUT /latest/api/token` (renewed before it
lapses, and at once when the service answers 401), then `GET spot/instance-action` every
`interval` seconds; 404 means nothing is scheduled. The endpoint is found as the SDKs find it
(core.spot.endpoint). A failure (no service, a timeout, a 5xx) is recorded once, the polls go on,
and its recovery is recorded too; nothing here raises into the agent.

The thread only observes: the first notice is kept in `notice` for the supervisor's loop, which
acts on it (core.spot.stop_plan), so every file and signal of the run stays with that one loop.
"""

from __future__ import annotations

import configparser
import os
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Optional

from ..core import spot

Event = Callable[..., None]
HTTP_TIMEOUT = 2.0


def config_endpoint(env: Dict[str, str]) -> Optional[str]:
    """`ec2_metadata_service_endpoint` of the AWS config file's profile (AWS_PROFILE, else default)."""
    path = env.get("AWS_CONFIG_FILE") or os.path.join(os.path.expanduser("~"), ".aws", "config")
    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None
    profile = env.get("AWS_PROFILE") or "default"
    section = profile if profile == "default" else "profile " + profile
    if not parser.has_section(section):
        return None
    value = parser.get(section, "ec2_metadata_service_endpoint", fallback="") or None
    return value.strip() if value else None


class SpotWatch:
    """Polls `spot/instance-action`; `notice` is set (once) when EC2 schedules the instance's end."""

    def __init__(self, spec_value: Any, event: Event, env: Optional[Dict[str, str]] = None) -> None:
        environ = dict(os.environ if env is None else env)
        self.settings = spot.settings(spec_value)
        self.endpoint = spot.endpoint(environ, config_endpoint(environ))
        self.event = event
        self.notice: Optional[spot.Notice] = None
        self.token: Optional[str] = None
        self.token_at: Optional[float] = None  # monotonic time the token was issued
        self.ttl = float(spot.TOKEN_TTL)
        self.failing: Optional[str] = None  # the error being retried, recorded once
        self.polls = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self.event("spot_watch_started", endpoint=self.endpoint, interval=self.settings["interval"])
        self._thread = threading.Thread(target=self._loop, name="runctl-spot-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(HTTP_TIMEOUT + 1.0)

    def _loop(self) -> None:
        while not self._stop.is_set() and self.notice is None:
            try:
                self.poll_once()
            except Exception as exc:  # never into the agent: record once, keep polling
                self._failed("%s: %s" % (type(exc).__name__, exc))
            self._stop.wait(self.settings["interval"])

    # ---- one poll ----------------------------------------------------------------------------

    def _request(self, method: str, path: str, headers: Dict[str, str]) -> "tuple[int, bytes]":
        request = urllib.request.Request(self.endpoint + path, method=method, headers=headers)
        if method == "PUT":
            request.data = b""
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read()
            except OSError:
                body = b""
            return exc.code, body

    def _token(self) -> str:
        if self.token is None or spot.token_due(self.token_at, self.ttl, time.monotonic()):
            status, body = self._request("PUT", spot.TOKEN_PATH, {spot.TTL_HEADER: str(spot.TOKEN_TTL)})
            if status != 200 or not body.strip():
                raise WatchError("no IMDSv2 token from %s (HTTP %d)" % (self.endpoint, status))
            self.token, self.token_at = body.decode("ascii", "replace").strip(), time.monotonic()
        return self.token

    def poll_once(self) -> Optional[spot.Notice]:
        """One look at `spot/instance-action`; the notice when there is one."""
        self.polls += 1
        status, body = self._request("GET", spot.ACTION_PATH, {spot.TOKEN_HEADER: self._token()})
        if status == 401:  # the token lapsed or the service restarted: a new one, once
            self.token = None
            status, body = self._request("GET", spot.ACTION_PATH, {spot.TOKEN_HEADER: self._token()})
        if status == 404:
            self._recovered()
            return None
        if status != 200:
            raise WatchError("spot/instance-action answered HTTP %d" % status)
        notice = spot.parse_notice(body.decode("utf-8", "replace"), time.time())
        if notice is None:
            raise WatchError("spot/instance-action answered something that is not a notice: %r" % body[:200])
        self._recovered()
        self.notice = notice
        return notice

    def _failed(self, message: str) -> None:
        if self.failing is None:
            self.event("spot_watch_error", error=message, endpoint=self.endpoint, note="retrying every poll")
        self.failing = message

    def _recovered(self) -> None:
        if self.failing is not None:
            self.event("spot_watch_recovered", after=self.failing)
            self.failing = None


class WatchError(Exception):
    """The metadata service did not answer as documented."""


def decision(notice: spot.Notice, cfg: Dict[str, Any], uploads: bool, settings: Dict[str, float], now: float) -> Any:
    """The stop a notice asks for: `spot_interruption`, its graces cut to fit before the notice's time."""
    from ..core import policies
    from ..core import status as st

    plan = spot.stop_plan(
        notice.at,
        now,
        float(cfg["stop_grace"]),
        float(cfg["term_grace"]),
        settings["upload_reserve"] if uploads else 0.0,
        settings["margin"],
    )
    return policies.Decision(st.T_SPOT, notice.describe(), grace=plan.grace, term_grace=plan.term_grace)
