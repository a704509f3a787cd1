"""A faithful fake of the EC2 instance metadata service (IMDSv2), since nothing real runs here.

What it does, as the service documents it:

* ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` (1-21600) returns a token
  (text) valid that long; without the header or with a value out of range: 400. A GET of the token
  path is 405, a PUT carrying ``X-Forwarded-For`` is 403 (the service refuses tokens via proxies).
* Every GET needs ``X-aws-ec2-metadata-token``: 401 without it, with an unknown or an expired one.
* ``/latest/meta-data/instance-id``, ``placement/region``, ``placement/availability-zone``,
  ``instance-type``, ``local-ipv4``; a directory (``/latest/meta-data/``) lists its entries.
* ``spot/instance-action``: 404 until :meth:`Imds.schedule`, then
  ``{"action": "terminate"|"stop"|"hibernate", "time": "YYYY-MM-DDTHH:MM:SSZ"}``.
* ``events/recommendations/rebalance``: 404 until :meth:`Imds.rebalance`, then
  ``{"noticeTime": "...Z"}``.
* ``iam/security-credentials/`` lists the role given to :meth:`Imds.set_role`; the role's path
  returns the credential document (AccessKeyId, SecretAccessKey, Token, Expiration, ...).

Host-side code finds it through ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (``env()``), the variable the
AWS SDKs honour. Bind it to an address the network-namespace hosts reach (``S3Server.address`` or a
host's ``gateway``) when code on a host must call it.
"""

from __future__ import annotations

import datetime
import http.server
import json
import secrets
import threading
import time
from typing import Any

MAX_TTL = 21600
TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
ACTIONS = ("terminate", "stop", "hibernate")


def _zulu(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Imds:
    """The fake service on ``address`` (a free port); ``endpoint`` is its base URL."""

    def __init__(
        self,
        address: str = "127.0.0.1",
        instance_id: str = "i-0123456789abcdef0",
        region: str = "us-east-1",
        instance_type: str = "g5.xlarge",
    ) -> None:
        self.instance_id = instance_id
        self.region = region
        self.instance_type = instance_type
        self.local_ipv4 = address
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self._action: dict[str, str] | None = None
        self._rebalance: dict[str, str] | None = None
        self._role: tuple[str, dict[str, Any]] | None = None
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self._server = http.server.ThreadingHTTPServer((address, 0), self._handler_class())
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="imds-fake", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def env(self) -> dict[str, str]:
        """What points host-side code (and boto3) at this fake."""
        return {"AWS_EC2_METADATA_SERVICE_ENDPOINT": self.endpoint, "AWS_EC2_METADATA_DISABLED": "false"}

    # -- what a test changes -----------------------------------------------------------------------

    def schedule(self, action: str = "terminate", at: float | None = None) -> dict[str, str]:
        """Announce a spot interruption: `action` at time `at` (default: two minutes from now)."""
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
        notice = {"action": action, "time": _zulu(time.time() + 120 if at is None else at)}
        with self._lock:
            self._action = notice
        return notice

    def rebalance(self, at: float | None = None) -> dict[str, str]:
        """Post a rebalance recommendation (noticed at `at`, default now)."""
        notice = {"noticeTime": _zulu(time.time() if at is None else at)}
        with self._lock:
            self._rebalance = notice
        return notice

    def clear(self) -> None:
        """No interruption and no recommendation pending (404 again); tokens stay valid."""
        with self._lock:
            self._action = None
            self._rebalance = None

    def set_role(self, name: str, access_key: str, secret_key: str, token: str = "", hours: float = 6) -> None:
        """Give the instance a role whose credentials `iam/security-credentials/NAME` returns."""
        now = time.time()
        document = {
            "Code": "Success",
            "LastUpdated": _zulu(now),
            "Type": "AWS-HMAC",
            "AccessKeyId": access_key,
            "SecretAccessKey": secret_key,
            "Token": token,
            "Expiration": _zulu(now + hours * 3600),
        }
        with self._lock:
            self._role = (name, document)

    def expire_tokens(self) -> None:
        """Every token issued so far stops working (as after its TTL): GETs with it get 401."""
        with self._lock:
            self._tokens.clear()

    # -- the service -------------------------------------------------------------------------------

    def _issue(self, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.monotonic() + ttl
        return token

    def _valid(self, token: str | None) -> bool:
        if not token:
            return False
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and time.monotonic() < expiry

    def _lookup(self, path: str) -> tuple[int, str, str]:
        """(status, content type, body) of a metadata GET."""
        with self._lock:
            action, rebalance, role = self._action, self._rebalance, self._role
        values: dict[str, Any] = {
            "instance-id": self.instance_id,
            "instance-type": self.instance_type,
            "local-ipv4": self.local_ipv4,
            "placement/region": self.region,
            "placement/availability-zone": self.region + "a",
            "spot/instance-action": json.dumps(action) if action else None,
            "events/recommendations/rebalance": json.dumps(rebalance) if rebalance else None,
        }
        if role is not None:
            values["iam/security-credentials/" + role[0]] = json.dumps(role[1], indent=2)
        base = "/latest/meta-data/"
        if not path.startswith(base) and path != base.rstrip("/"):
            return 404, "text/plain", "Not Found"
        rel = path[len(base) :] if path.startswith(base) else ""
        present = {k: v for k, v in values.items() if v is not None}
        if rel in present:
            kind = "application/json" if rel.startswith(("spot/", "events/", "iam/")) else "text/plain"
            return 200, kind, str(present[rel])
        # A directory lists its entries, subdirectories with a trailing slash.
        prefix = rel if rel == "" or rel.endswith("/") else rel + "/"
        children = set()
        for key in present:
            if key.startswith(prefix):
                head, slash, _ = key[len(prefix) :].partition("/")
                children.add(head + slash)
        if children:
            return 200, "text/plain", "\n".join(sorted(children))
        return 404, "text/plain", "Not Found"

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        imds = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(
                self, status: int, body: str, kind: str = "text/plain", extra: dict[str, str] | None = None
            ) -> None:
                data = body.encode()
                imds.requests.append((self.command, self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if self.path != TOKEN_PATH:
                    self._answer(403 if self.path.startswith("/latest/meta-data") else 404, "Forbidden")
                    return
                if self.headers.get("X-Forwarded-For"):
                    self._answer(403, "Forbidden")
                    return
                raw = self.headers.get(TTL_HEADER)
                try:
                    ttl = int(raw or "")
                except ValueError:
                    ttl = 0
                if not 1 <= ttl <= MAX_TTL:
                    self._answer(400, "Bad Request")
                    return
                token = imds._issue(ttl)
                self._answer(200, token, extra={TTL_HEADER: str(ttl)})

            def do_GET(self) -> None:
                if self.path == TOKEN_PATH:
                    self._answer(405, "Method Not Allowed")
                    return
                if not imds._valid(self.headers.get(TOKEN_HEADER)):
                    self._answer(401, "Unauthorized")
                    return
                status, kind, body = imds._lookup(self.path.split("?", 1)[0])
                self._answer(status, body, kind)

        return Handler
