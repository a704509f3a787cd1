"""The local transport: the agent runs on this machine; its operations are called in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..agent import ops
from ..bundle import agent_artifact
from ..core.errors import HostError, UsageError

if TYPE_CHECKING:
    from .base import CodeSync
    from .manifest import Plan
    from .sync import SyncResult


class LocalTransport:
    name = "local"
    host = "localhost"

    def connect(self) -> None:
        """Nothing to reach: the agent runs from this installation's artifact."""

    def bootstrap(self, spec: dict[str, Any]) -> None:
        """Nothing to prepare: the run uses this machine as it is."""

    def sync_code(self, job: CodeSync) -> SyncResult:
        raise UsageError("local runs use the project dir in place; there is nothing to sync")

    def stage_data(self, local_paths: list[Path], remote_data_dir: str) -> None:
        raise UsageError("local runs read their data in place; there is nothing to stage")

    def list_checkpoints(self, run_dir: str) -> dict[str, Any]:
        return ops.list_checkpoints(run_dir)

    def download(self, remote_dir: str, paths: list[str], target: Path, progress: bool) -> Plan:
        raise UsageError("local checkpoints are already on this machine", "see them with: runctl checkpoint list")

    def digests(self, run_dir: str, base: str, paths: list[str]) -> dict[str, Any]:
        return ops.checkpoint_digests(run_dir, base, paths)

    def on_end_claim(self, run_dir: str) -> dict[str, Any]:
        return ops.on_end_claim(run_dir, "controller")

    def s3_proof(self, run_dir: str, wait: float) -> dict[str, Any]:
        return ops.s3_proof(run_dir, wait)

    def on_end_result(self, run_dir: str, result: dict[str, Any]) -> dict[str, Any]:
        return ops.on_end_result(run_dir, result)

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

    def read_file(self, path: str, tail: int | None = None, start: int | None = None) -> bytes | None:
        try:
            with open(path, "rb") as handle:
                if tail is not None:
                    handle.seek(max(0, os.fstat(handle.fileno()).st_size - tail))
                elif start:
                    handle.seek(start)
                return handle.read()
        except OSError:
            return None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "local"}
