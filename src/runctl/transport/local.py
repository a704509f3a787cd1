"""The local transport: the agent runs on this machine; its operations are called in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from ..agent import ops
from ..bundle import agent_artifact
from ..core.errors import HostError


class LocalTransport:
    name = "local"
    host = "localhost"

    def launch(self, run_dir: str, spec: dict[str, Any]) -> dict[str, Any]:
        # A fresh interpreter from the artifact: the supervisor carries none of the controller's
        # imports, and the same zip that travels to remote hosts is exercised here.
        try:
            proc = subprocess.run(
                [sys.executable, "-S", str(agent_artifact()), "launch", run_dir, "--spec-stdin"],
                input=json.dumps(spec).encode(),
                capture_output=True,
                timeout=3600,  # the agent answers once setup is under way or the script has started
                start_new_session=True,  # a signal to the controller's process group never reaches it
            )
        except subprocess.TimeoutExpired:
            raise HostError("the local agent did not answer", "check %s/agent.log" % run_dir) from None
        try:
            result: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise HostError(
                "the local agent did not start: %s" % (proc.stderr.decode().strip()[-500:] or "no output"),
                "rerun with RUNCTL_DEBUG=1 and check %s/agent.log" % run_dir,
            ) from exc
        return result

    def probe(self, run_dir: str) -> dict[str, Any]:
        return ops.probe(run_dir)

    def request_stop(self, run_dir: str, grace: float | None, message: str) -> dict[str, Any]:
        return ops.request_stop(run_dir, grace, message)

    def follow(self, run_dir: str, offset: int, seq: int) -> Iterator[tuple[str, Any]]:
        return ops.follow(run_dir, offset, seq, poll=0.02, heartbeat=0.25)

    def read_file(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "local"}
