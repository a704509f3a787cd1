"""Who may use the dashboard: the holder of the token printed when it started, from a page of its own.

Every request, reads too, needs the per-start token: the run list names hosts, commands and
arguments, and the log may hold anything the script printed. A page gets it once from the URL
(`/?token=...`, as Jupyter does); the server answers with an HttpOnly, SameSite=Strict cookie and
the page drops the token from the address bar. Reads accept the `X-Runctl-Token` header or that
cookie. A state-changing request (POST) needs the header itself, which only a script of the
dashboard's own pages (or a client holding the token) can send, and, when it carries an Origin, the
dashboard's own (the Host it was sent to). A Host header other than the dashboard's addresses is refused, so a DNS name
rebound to 127.0.0.1 reaches nothing. Anything else is 403 and changes nothing.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .. import paths
from ..core.fsutil import atomic_write_json, read_json

TOKEN_HEADER = "x-runctl-token"
COOKIE = "runctl_token_%d"  # by port: cookies are not kept apart by port, two dashboards' would clash
STATE_FILE = "dashboard.json"
READ_METHODS = ("GET", "HEAD")

Scope = MutableMapping[str, Any]
Asgi = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def new_token() -> str:
    return secrets.token_urlsafe(24)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """How the bind address is written in a URL: an IPv6 one in brackets; any-address as 127.0.0.1."""
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return "[%s]" % host if ":" in host and not host.startswith("[") else host


def state_path() -> str:
    return str(paths.home() / STATE_FILE)


def write_state(state: dict[str, Any]) -> None:
    """Record the running dashboard (pid, port, token) for `--dashboard` to reuse: 0600, it holds the token."""
    atomic_write_json(state_path(), state, fsync=False)


def read_state() -> dict[str, Any] | None:
    state = read_json(state_path())
    return state if isinstance(state, dict) and state.get("token") and state.get("port") else None


def clear_state(pid: int) -> None:
    """Remove the state file if it is still this process's (a newer dashboard may have replaced it)."""
    state = read_state()
    if state is not None and state.get("pid") == pid:
        try:
            os.unlink(state_path())
        except OSError:
            pass


class Guard:
    """ASGI middleware in front of every route: the Host, token and Origin checks above."""

    def __init__(self, app: Asgi, token: str, host: str, port: int) -> None:
        self.app = app
        self.token = token
        self.port = port
        names = {"127.0.0.1", "localhost", "[::1]", url_host(host)}
        self.hosts = {"%s:%d" % (name, port) for name in names}
        # Bound to every address (--host 0.0.0.0): reached by any of this machine's names.
        self.any_host = host in ("0.0.0.0", "::", "")

    def _matches(self, value: str | None) -> bool:
        return bool(value) and hmac.compare_digest(str(value).encode(), self.token.encode())

    def problem(self, scope: Scope) -> str | None:
        """Why the request is refused, or None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        host = headers.get("host", "").lower()
        if host not in self.hosts and not self.any_host:
            return "unknown Host %r: open the dashboard at the URL it printed" % headers.get("host", "")
        method = scope.get("method", "GET")
        if method in READ_METHODS:
            from urllib.parse import parse_qs

            query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [None])[0]
            given = headers.get(TOKEN_HEADER) or _cookie(headers.get("cookie", ""), COOKIE % self.port) or query
            return None if self._matches(given) else "missing or wrong token: open the URL runctl dashboard printed"
        if not self._matches(headers.get(TOKEN_HEADER)):
            return "missing or wrong %s header" % "X-Runctl-Token"
        origin = headers.get("origin")
        if origin is not None and origin.lower() != "http://%s" % host:
            return "cross-origin request refused (Origin %s)" % origin
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return "cross-site request refused"
        return None

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self.problem(scope)
        if problem is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": problem}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None
