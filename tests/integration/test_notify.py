"""Webhook notifications from the agent, received by a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.runs import events, kill_leftover_runs, run_dir, status_file, train_wait

SECRET = "T000/B000/s3cr3t-token"
STUB = ("--epochs", "2", "--steps-per-epoch", "20", "--delay", "0.03")


class Hook:
    """A webhook endpoint: records every POST (path and JSON body) and answers with `status`."""

    def __init__(self, status: int = 200) -> None:
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with hook.lock:
                    hook.received.append(
                        {
                            "path": self.path,
                            "content_type": self.headers.get("Content-Type"),
                            "body": json.loads(body),
                            "t": time.time(),
                        }
                    )
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:%d/hooks/%s" % (self.server.server_address[1], SECRET)

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r["body"] for r in self.received]

    def wait_for(self, event: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for body in self.bodies():
                if body.get("event") == event:
                    return body
            time.sleep(0.05)
        raise AssertionError("no %r notification within %gs; got %s" % (event, timeout, self.bodies()))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.close()


@pytest.fixture
def failing_hook() -> Iterator[Hook]:
    server = Hook(status=500)
    yield server
    server.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return "http://127.0.0.1:%d/hooks/%s" % (port, SECRET)


@pytest.fixture(autouse=True)
def no_leftover_runs(project: Path) -> Iterator[None]:
    yield
    kill_leftover_runs(project)


def stub_wait(cli, *flags: str, args: tuple[str, ...] = STUB):  # type: ignore[no-untyped-def]
    return train_wait(cli, "train_stub.py", *flags, args=args)


def agent_finished(project: Path, run_id: str, timeout: float = 15) -> list[dict[str, Any]]:
    """The run's events once the agent wrote its last one (notifications are flushed before it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = events(project, run_id)
        if any(e["event"] == "ended" for e in found):
            return found
        time.sleep(0.05)
    raise AssertionError("the agent of run %s did not finish" % run_id)


def test_started_policy_and_ended_events_are_posted(cli, project: Path, hook: Hook) -> None:
    code, run = stub_wait(cli, "--notify", hook.url, "--auto-stop-loss", "0.5", "--stop-grace", "5")
    assert code == 0
    run_id = run["run_id"]
    assert run["termination_status"] == "auto_low_loss"
    started = hook.wait_for("started")
    policy = hook.wait_for("policy")
    ended = hook.wait_for("ended")
    for body in (started, policy, ended):
        assert body["run_id"] == run_id
        assert body["name"] == "train_stub"
        assert isinstance(body["text"], str) and run_id in body["text"]
    assert started["status"] == "running"
    assert policy["termination_status"] == "auto_low_loss"
    assert "below threshold 0.5" in policy["text"]
    assert ended["status"] == "completed"
    assert ended["termination_status"] == "auto_low_loss"
    assert "completed" in ended["text"]
    events_order = [b["event"] for b in hook.bodies()]
    assert events_order.index("started") < events_order.index("policy") < events_order.index("ended")
    assert events_order.count("ended") == 1
    with hook.lock:
        assert {r["path"] for r in hook.received} == {"/hooks/" + SECRET}
        assert {r["content_type"] for r in hook.received} == {"application/json"}
    assert not [e for e in agent_finished(project, run_id) if e["event"] == "notify_failed"]


def test_every_notify_url_gets_the_events(cli, project: Path, hook: Hook) -> None:
    second = Hook()
    try:
        (project / "runctl.toml").write_text('[policies]\nnotify = ["%s"]\n' % second.url)
        code, run = stub_wait(cli, "--notify", hook.url, args=("--epochs", "1", "--steps-per-epoch", "3"))
        assert code == 0
        for server in (hook, second):
            assert server.wait_for("ended")["status"] == "completed"
            assert server.wait_for("started")["run_id"] == run["run_id"]
    finally:
        second.close()


def test_failed_run_is_notified(cli, project: Path, hook: Hook) -> None:
    code, run = stub_wait(
        cli,
        "--notify",
        hook.url,
        args=("--epochs", "1", "--steps-per-epoch", "10", "--delay", "0", "--fail-at-step", "3"),
    )
    assert code == 1
    ended = hook.wait_for("ended")
    assert ended["status"] == "failed"
    assert ended["run_id"] == run["run_id"]
    assert "failed" in ended["text"]


@pytest.mark.parametrize("endpoint", ["closed_port", "http_500"])
def test_failing_notifications_never_affect_the_run(cli, project: Path, failing_hook: Hook, endpoint: str) -> None:
    url = closed_port_url() if endpoint == "closed_port" else failing_hook.url
    code, run = stub_wait(cli, "--notify", url, args=("--epochs", "1", "--steps-per-epoch", "5", "--delay", "0.01"))
    assert code == 0
    assert (run["status"], run["termination_status"]) == ("completed", "auto_complete")
    assert run["step"] == 5
    found = agent_finished(project, run["run_id"])
    failures = [e for e in found if e["event"] == "notify_failed"]
    assert failures, found
    assert all(f["url"].startswith("http://127.0.0.1") for f in failures)
    text = (run_dir(project, run["run_id"]) / "events.jsonl").read_text()
    assert SECRET not in text and "s3cr3t" not in text
    if endpoint == "http_500":
        assert failing_hook.wait_for("ended")["status"] == "completed"
    assert status_file(project, run["run_id"])["status"] == "completed"
