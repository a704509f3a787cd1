"""`--dashboard` on a train command: the dashboard that already runs (recorded in RUNCTL_HOME), or a
new one started detached, which outlives the command. Standard library only (no web stack here)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

from .. import paths
from ..core.errors import HostError
from . import access

START_SECONDS = 20.0


def answers(state: dict[str, Any]) -> bool:
    """Whether the recorded dashboard is up and is that one (its health, asked with its token)."""
    host = access.url_host(str(state.get("host") or "127.0.0.1"))
    request = urllib.request.Request(
        "http://%s:%d/api/health" % (host, int(state["port"])), headers={"X-Runctl-Token": str(state["token"])}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(json.loads(response.read()).get("ok"))
    except (OSError, ValueError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ensure_running() -> dict[str, Any]:
    """The running dashboard's state ({pid, port, token, url}), starting one if none answers."""
    from .serve import DEFAULT_PORT

    state = access.read_state()
    if state is not None and answers(state):
        return state
    port = DEFAULT_PORT if _port_free(DEFAULT_PORT) else 0
    log_path = str(paths.home() / "dashboard.log")
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runctl", "dashboard", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # it outlives this command, and a Ctrl-C here never reaches it
            close_fds=True,
        )
    finally:
        os.close(log)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        ended = proc.poll() is not None  # it lost the port to another started at the same moment, say
        state = access.read_state()
        if state is not None and answers(state):
            return state
        if ended:
            break
        time.sleep(0.1)
    raise HostError("the dashboard did not start", "see %s, or run: runctl dashboard" % log_path)


def run_url(state: dict[str, Any], run_id: str) -> str:
    host = access.url_host(str(state.get("host") or "127.0.0.1"))
    return "http://%s:%d/runs/%s?token=%s" % (host, int(state["port"]), run_id, state["token"])
