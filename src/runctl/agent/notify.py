"""Webhook notifications sent from the host, so they fire even with the controller gone.

Each POST runs in its own thread with a short timeout; a failing endpoint is recorded as an event
and never affects the run.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Dict, List

TIMEOUT_SECONDS = 5.0


def slack_text(payload: Dict[str, Any]) -> str:
    if payload.get("run_id") is None and payload.get("message"):
        return "runctl %s: %s" % (payload.get("event"), payload["message"])  # a host event (watchdog leak)
    parts = ["runctl run %s (%s): %s" % (payload.get("run_id"), payload.get("name"), payload.get("event"))]
    if payload.get("status"):
        parts.append("status %s" % payload["status"])
    if payload.get("termination_status"):
        parts.append("%s: %s" % (payload["termination_status"], payload.get("termination_message", "")))
    return " — ".join(parts)


def redact(url: str) -> str:
    """Webhook URLs often embed their secret in the path: only scheme and host are ever logged."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    return "%s://%s/..." % (parts.scheme, parts.hostname or "?")


class Notifier:
    def __init__(self, urls: List[str], on_error: Callable[[str, str], None]) -> None:
        self.urls = list(urls)
        self.on_error = on_error
        self.threads: List[threading.Thread] = []

    def send(self, payload: Dict[str, Any]) -> None:
        if not self.urls:
            return
        body = dict(payload)
        body["text"] = slack_text(payload)
        data = json.dumps(body, default=str).encode()
        for url in self.urls:
            thread = threading.Thread(target=self._post, args=(url, data), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _post(self, url: str, data: bytes) -> None:
        import urllib.request  # only runs with --notify pay for http.client, ssl and email

        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                response.read(1024)
        except Exception as exc:  # any failure is only reported, never raised into the run
            self.on_error(redact(url), type(exc).__name__)

    def flush(self, timeout: float = TIMEOUT_SECONDS + 1) -> None:
        for thread in self.threads:
            thread.join(timeout)
        self.threads = [t for t in self.threads if t.is_alive()]
