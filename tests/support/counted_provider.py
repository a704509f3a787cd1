"""A provider for tests: it "acquires" this machine as a new host each time, counts every acquire
and release, and can fail at any pipeline step. The run itself is real (the local agent)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from runctl.core.errors import HostError
from runctl.core.spec import RunSpec
from runctl.providers.base import Host, Missing, Placement, StartRequest, default_on_end
from runctl.transport.base import CodeSync, Transport
from runctl.transport.local import LocalTransport
from runctl.transport.sync import SyncResult

STEPS = ("connect", "sync", "bootstrap", "launch", "launch-after-start")
_ids = itertools.count(1)


class FaultyTransport(LocalTransport):
    """The local transport, failing with a HostError at `fail_at` (launch-after-start: once the agent runs)."""

    def __init__(self, fail_at: str | None) -> None:
        self.fail_at = fail_at

    def _maybe_fail(self, step: str) -> None:
        if self.fail_at == step:
            raise HostError("%s failed (test provider)" % step)

    def connect(self) -> None:
        self._maybe_fail("connect")

    def bootstrap(self, spec: dict[str, Any]) -> None:
        self._maybe_fail("bootstrap")

    def sync_code(self, job: CodeSync) -> SyncResult:
        self._maybe_fail("sync")
        return SyncResult(files_sent=0, bytes_total=0, seconds=0.0)

    def launch(self, run_dir: str, spec: dict[str, Any]) -> dict[str, Any]:
        self._maybe_fail("launch")
        result = super().launch(run_dir, spec)
        self._maybe_fail("launch-after-start")
        return result

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "counted"}


class CountedProvider:
    name = "counted"
    syncs_code = True
    missing: Mapping[str, Missing] = MappingProxyType({})

    def __init__(self) -> None:
        self.fail_at: str | None = None
        self.acquired: list[str] = []
        self.released: list[tuple[str, str]] = []
        self.states: dict[str, str] = {}

    def check(self, request: StartRequest) -> None:
        pass

    def placement(self, request: StartRequest, root: Path, script: Path) -> Placement:
        return Placement(python=request.python or "python3", project_dir=str(root))

    def acquire(self, request: StartRequest) -> tuple[Host, bool]:
        host_id = "test-%d-%d" % (os.getpid(), next(_ids))
        self.acquired.append(host_id)
        self.states[host_id] = "running"
        return Host(self.name, host_id, "127.0.0.1", "test-region", "t.tiny", 0.5), True

    def transport(self, host: Host, request: StartRequest) -> Transport:
        return FaultyTransport(self.fail_at)

    def reconnect(self, record: dict[str, Any]) -> Transport:
        return FaultyTransport(None)

    def place(self, transport: Transport, spec: RunSpec, request: StartRequest) -> None:
        pass

    def on_end(self, request: StartRequest) -> dict[str, Any]:
        return default_on_end()

    def end_action(self, row: dict[str, Any]) -> str:
        return "terminate"

    def describe(self, transport: Transport) -> dict[str, Any]:
        return {"host": "counted"}

    def release(self, host: Host, action: str) -> Host:
        self.released.append((host.id, action))
        self.states[host.id] = {"terminate": "terminated", "stop": "stopped"}.get(action, self.states[host.id])
        return self.lookup(host)

    def lookup(self, host: Host) -> Host:
        """The host's state as the provider reports it (what a release is confirmed by)."""
        return Host(host.provider, host.id, host.address, host.region, host.instance_type, host.hourly_price,
                    self.states[host.id])  # fmt: skip
