"""The transport interface every host is reached through."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


class Transport(Protocol):
    """What the controller needs from a host to run and follow a run there."""

    name: str

    @property
    def host(self) -> str: ...

    def launch(self, run_dir: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Write the spec, start the agent detached, return once the script runs (or failed to)."""
        ...

    def probe(self, run_dir: str) -> dict[str, Any]:
        """status.json with the liveness of agent and process checked."""
        ...

    def request_stop(self, run_dir: str, grace: float | None, message: str) -> dict[str, Any]: ...

    def follow(self, run_dir: str, offset: int, seq: int) -> Iterator[tuple[str, Any]]:
        """("log", bytes), ("status", dict), ("heartbeat", None) ... ("end", dict)."""
        ...

    def read_file(self, path: str) -> bytes | None: ...

    def to_dict(self) -> dict[str, Any]:
        """What the store keeps to reach this host again."""
        ...
