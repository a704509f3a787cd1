"""The Lambda Cloud API (v1.8.x) over httpx: the key, the rate limits, retries, and errors by `code`.

Lambda answers `{"data": ...}` or `{"error": {"code", "message", "suggestion"?}}`; runctl branches on
`code` only (the API's own advice: messages change). Its limits are about one request a second and
one launch per 12 seconds, so a client-side limiter spaces calls out instead of collecting 429s, and
a 429, a 5xx or a dropped connection is retried with backoff (core/retry.py). A launch is the one
call that is not safe to repeat blindly: it is retried only when it certainly did not arrive (429,
connection refused), and otherwise the caller looks for the instance its launch token names.

httpx is imported here only, when a client is made: `runctl --help` never loads it. The API key is
never printed, logged or put in an error message.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import CloudError, UsageError
from ..core.retry import retry

URL_ENV = "RUNCTL_LAMBDA_API_URL"
DEFAULT_URL = "https://cloud.lambda.ai/api/v1"
KEY_ENV = "LAMBDA_API_KEY"
KEY_FILE = Path("~/.lambda_cloud/lambda_keys")  # the Lambda CLI's (SkyPilot reads it too)
# Seconds between requests and between launches: "REQUEST,LAUNCH" (tests shorten them).
RATE_ENV = "RUNCTL_LAMBDA_RATE"
DEFAULT_RATE = (1.0, 12.0)
# Backoff on a transient failure: "BASE,CAP" seconds (tests shorten them).
BACKOFF_ENV = "RUNCTL_LAMBDA_BACKOFF"
DEFAULT_BACKOFF = (2.0, 20.0)
ATTEMPTS = 6
BILLING_ATTEMPTS = 10  # terminate: worth trying longer, a forgotten instance bills by the hour
TIMEOUT = 30.0
KEYS_PAGE = "https://cloud.lambda.ai/api-keys"


def _pair(env: str, default: tuple[float, float]) -> tuple[float, float]:
    raw = os.environ.get(env)
    if not raw:
        return default
    try:
        first, _, second = raw.partition(",")
        return float(first), float(second or first)
    except ValueError:
        raise UsageError("invalid %s=%r" % (env, raw), "use two numbers of seconds, e.g. %s=1,12" % env) from None


# ---- the key ------------------------------------------------------------------------------------


def api_key() -> str:
    """LAMBDA_API_KEY, else `[lambda] api_key` of the runctl config, else the Lambda CLI's key file."""
    given = os.environ.get(KEY_ENV, "").strip()
    if given:
        return given
    from .. import paths

    config = paths.user_config()
    if config.is_file():
        from ..config import _load_toml

        section = _load_toml(config).get("lambda") or {}
        if isinstance(section, dict) and str(section.get("api_key") or "").strip():
            return str(section["api_key"]).strip()
    found = key_from_file(KEY_FILE.expanduser())
    if found:
        return found
    raise UsageError(
        "no Lambda API key",
        "create one at %s, then export %s=... (or put api_key = ... in %s)" % (KEYS_PAGE, KEY_ENV, KEY_FILE),
    )


def key_from_file(path: Path) -> str | None:
    """The key in a Lambda CLI key file: its `api_key = KEY` line."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == "api_key" and value.strip():
            return value.strip()
    return None


# ---- limits -------------------------------------------------------------------------------------


class Limiter:
    """At most one request per `interval` seconds (one launch per `launch_interval`), in this process.

    A 429's Retry-After pushes the next request out (`defer`), so every retry waits for it too.
    """

    def __init__(self, interval: float, launch_interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.launch_interval, self.clock = interval, launch_interval, clock
        self.next_at = 0.0
        self.next_launch_at = 0.0
        self.lock = threading.Lock()

    def wait(self, launch: bool = False) -> None:
        with self.lock:
            now = self.clock()
            at = max(now, self.next_at, self.next_launch_at if launch else 0.0)
            self.next_at = at + self.interval
            if launch:
                self.next_launch_at = at + self.launch_interval
        if at > now:
            time.sleep(at - now)

    def defer(self, seconds: float) -> None:
        with self.lock:
            self.next_at = max(self.next_at, self.clock() + seconds)


class Transient(CloudError):
    """A failure worth trying again (429, 5xx, connection); `sent` says whether the request may have arrived."""

    def __init__(self, message: str, code: str, sent: bool) -> None:
        super().__init__(message, "Lambda's API may be busy or down; try again in a minute", code)
        self.sent = sent


class Unanswered(CloudError):
    """A call that failed transiently until its attempts ran out; `sent`: it may have been carried out."""

    def __init__(self, message: str, hint: str | None, code: str, sent: bool) -> None:
        super().__init__(message, hint, code)
        self.sent = sent


# ---- errors by code -----------------------------------------------------------------------------


def error_for(status: int, body: Any) -> CloudError | UsageError:
    """Lambda's error body as runctl's error: what is wrong and the fix, by `code` (never by message)."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    code = str(error.get("code") or "http-%d" % status)
    message = str(error.get("message") or "HTTP %d" % status)
    suggestion = str(error.get("suggestion") or "")
    if code == "global/invalid-api-key":
        return CloudError(
            "Lambda rejected the API key (invalid, expired or deleted)",
            "create a key at %s and export %s=..." % (KEYS_PAGE, KEY_ENV),
            code,
        )
    if code == "global/account-inactive":
        return CloudError(
            "your Lambda account is inactive",
            suggestion or "verify your email and add a payment method at https://cloud.lambda.ai, or contact support",
            code,
        )
    if code == "global/quota-exceeded":
        return CloudError(
            "Lambda quota exceeded" + ("" if "quota exceeded" in message.lower() else ": %s" % message),
            "terminate instances you do not need (runctl lambda list), or ask Lambda support to raise it",
            code,
        )
    if code == "global/invalid-parameters":
        return UsageError("Lambda refused the request: %s" % message, suggestion or "check the flags given")
    if code == "global/object-does-not-exist":
        return UsageError(message, suggestion or "list what exists: runctl lambda list (or lambda ssh-keys)")
    if code == "global/duplicate":
        return UsageError(message, suggestion or "pick another name")
    if code == "instance-operations/launch/insufficient-capacity":
        return CloudError("no capacity: %s" % message, suggestion or "try another region or type", code)
    hint = suggestion or "try again in a minute"
    return CloudError("Lambda API error %s: %s" % (code, message), hint, code)


def transient(exc: BaseException) -> bool:
    return isinstance(exc, Transient)


class LambdaApi:
    """One client: every call limited, retried when transient, and answered as `data` or a runctl error."""

    def __init__(self, key: str | None = None, url: str | None = None) -> None:
        import httpx

        self.key = key or api_key()
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        interval, launch_interval = _pair(RATE_ENV, DEFAULT_RATE)
        self.limiter = Limiter(interval, launch_interval)
        self.backoff = _pair(BACKOFF_ENV, DEFAULT_BACKOFF)
        self.http = httpx.Client(
            base_url=self.url,
            timeout=TIMEOUT,
            headers={"Authorization": "Bearer " + self.key, "Accept": "application/json"},
        )
        self.calls = 0  # requests sent, retries included (the benchmark counts them)

    def close(self) -> None:
        self.http.close()

    # ---- one request ---------------------------------------------------------------------------

    def send(self, method: str, path: str, body: Any = None, launch: bool = False) -> Any:
        """One attempt: the `data` of the answer; Transient for what is worth retrying."""
        import httpx

        self.limiter.wait(launch)
        self.calls += 1
        try:
            answer = self.http.request(method, path, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise Transient("cannot reach %s: %s" % (self.url, type(exc).__name__), "connection", sent=False) from None
        except httpx.TransportError as exc:
            raise Transient("%s %s failed: %s" % (method, path, type(exc).__name__), "connection", sent=True) from None
        try:
            parsed = answer.json()
        except ValueError:
            parsed = None
        if answer.status_code == 429:
            after = answer.headers.get("Retry-After")
            if after and after.replace(".", "", 1).isdigit():
                self.limiter.defer(min(float(after), 60.0))
            raise Transient("Lambda's rate limit (429) on %s %s" % (method, path), "rate-limited", sent=False)
        if answer.status_code >= 500:
            code = str(((parsed or {}).get("error") or {}).get("code") or "http-%d" % answer.status_code)
            raise Transient("Lambda API error %s on %s %s" % (code, method, path), code, sent=True)
        if answer.status_code >= 400 or not isinstance(parsed, dict) or "data" not in parsed:
            raise error_for(answer.status_code, parsed)
        return parsed["data"]

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        attempts: int = ATTEMPTS,
        launch: bool = False,
        retry_if: Callable[[BaseException], bool] = transient,
    ) -> Any:
        base, cap = self.backoff
        try:
            return retry(lambda: self.send(method, path, body, launch), retry_if, attempts, base, cap)
        except Transient as exc:
            raise Unanswered(exc.message + " (after %d attempts)" % attempts, exc.hint, exc.code, exc.sent) from None

    # ---- the endpoints runctl uses --------------------------------------------------------------

    def instance_types(self) -> dict[str, Any]:
        return dict(self.call("GET", "/instance-types"))

    def instances(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/instances"))

    def instance(self, instance_id: str, attempts: int = ATTEMPTS) -> dict[str, Any]:
        return dict(self.call("GET", "/instances/%s" % instance_id, attempts=attempts))

    def launch(self, body: dict[str, Any]) -> list[str]:
        """The ids launched; retried only when the request certainly did not arrive (see the module doc)."""
        data = self.call(
            "POST",
            "/instance-operations/launch",
            body,
            launch=True,
            retry_if=lambda exc: isinstance(exc, Transient) and not exc.sent,
        )
        return [str(i) for i in (data or {}).get("instance_ids") or []]

    def terminate(self, instance_ids: list[str]) -> list[dict[str, Any]]:
        data = self.call(
            "POST", "/instance-operations/terminate", {"instance_ids": instance_ids}, attempts=BILLING_ATTEMPTS
        )
        return list((data or {}).get("terminated_instances") or [])

    def ssh_keys(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/ssh-keys"))

    def add_ssh_key(self, name: str, public_key: str) -> dict[str, Any]:
        return dict(self.call("POST", "/ssh-keys", {"name": name, "public_key": public_key}))
