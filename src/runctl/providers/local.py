"""The local provider: this machine, the project dir used in place, nothing acquired or released."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..core.spec import RunSpec
from ..transport.base import Transport
from .base import (
    DOWNLOAD_CHECKPOINTS,
    STOP_HOST,
    SYNC_CODE,
    TERMINATE_HOST,
    Host,
    Missing,
    Placement,
    StartRequest,
    default_on_end,
    require,
    stated_price,
)

_NOT_OURS = Missing(
    "runctl does not power off this machine (local runs use it as it is)",
    "stop the run instead: runctl runs stop {run_id}",
)


class LocalProvider:
    name = "local"
    syncs_code = False
    missing: Mapping[str, Missing] = MappingProxyType(
        {
            SYNC_CODE: Missing("local runs use the project dir in place; there is nothing to sync", "drop --sync-code"),
            DOWNLOAD_CHECKPOINTS: Missing(
                "run {run_id} is local; its checkpoints are already here",
                "see them with: runctl checkpoint list {run_id}",
            ),
            STOP_HOST: _NOT_OURS,
            TERMINATE_HOST: _NOT_OURS,
        }
    )

    def check(self, request: StartRequest) -> None:
        """Local runs take one provider flag: the price this machine is counted at (--hourly-price)."""
        stated_price(request.options)

    def placement(self, request: StartRequest, root: Path, script: Path) -> Placement:
        from ..controller import resolve_python

        python = resolve_python(request.python) if script.suffix == ".py" else ""
        return Placement(python=python, project_dir=str(root))

    def acquire(self, request: StartRequest) -> tuple[Host, bool]:
        price = stated_price(request.options)
        host = Host(self.name, socket.gethostname() or "localhost", "localhost", hourly_price=price)
        if host.hourly_price is not None:
            host.info["price_source"] = "--hourly-price"
        return host, False

    def transport(self, host: Host, request: StartRequest) -> Transport:
        from ..transport.local import LocalTransport

        return LocalTransport()

    def reconnect(self, record: dict[str, Any]) -> Transport:
        from ..transport.local import LocalTransport

        return LocalTransport()

    def place(self, transport: Transport, spec: RunSpec, request: StartRequest) -> None:
        """The run lives in the project dir itself."""

    def on_end(self, request: StartRequest) -> dict[str, Any]:
        return default_on_end()

    def end_action(self, row: dict[str, Any]) -> str:
        return "none"

    def describe(self, transport: Transport) -> dict[str, Any]:
        return {"host": "localhost"}

    def release(self, host: Host, action: str) -> Host:
        if action != "none":
            require(self, action, run_id="RUN_ID")
        return host
