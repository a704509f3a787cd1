"""The transport interface every host is reached through."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .manifest import Plan
    from .sync import SyncResult


@dataclass(frozen=True)
class CodeSync:
    """One code sync: the local project into `remote_dir`, which must be runctl's own for `project`."""

    local_root: Path
    remote_dir: str
    project: str
    includes: list[str] = field(default_factory=list)  # patterns synced even if ignored
    protect: tuple[str, ...] = ()  # project paths the host writes: never deleted by the sync
    adopt: bool = False  # mark an existing non-empty dir as runctl's, keeping what is there


class Transport(Protocol):
    """What the controller needs from a host to run and follow a run there."""

    name: str

    @property
    def host(self) -> str: ...

    def connect(self) -> Any:
        """Reach the host and make sure this version of the agent is there (once per version)."""
        ...

    def bootstrap(self, spec: dict[str, Any]) -> None:
        """Prepare the host for this run before launch (nothing on hosts whose agent builds all)."""
        ...

    def sync_code(self, job: CodeSync) -> SyncResult:
        """Ship the project (providers whose `syncs_code` is false never call it)."""
        ...

    def stage_data(self, local_paths: list[Path], remote_data_dir: str) -> None: ...

    def list_checkpoints(self, run_dir: str) -> dict[str, Any]: ...

    def download(self, remote_dir: str, paths: list[str], target: Path, progress: bool) -> Plan:
        """Pull these files (relative to remote_dir) into target; files runctl did not write are kept."""
        ...

    def digests(self, run_dir: str, base: str, paths: list[str]) -> dict[str, Any]:
        """Size and sha256 of the run's checkpoint files (relative to `base`), read on the host."""
        ...

    def on_end_claim(self, run_dir: str) -> dict[str, Any]:
        """Claim the run's end-of-run step for this controller (see agent `on-end-claim`)."""
        ...

    def on_end_result(self, run_dir: str, result: dict[str, Any]) -> dict[str, Any]: ...

    def s3_proof(self, run_dir: str, wait: float) -> dict[str, Any]:
        """{"proof", "reason"}: the run's checkpoints verified in S3, waited for up to `wait` s (agent `s3-proof`)."""
        ...

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

    def read_file(self, path: str, tail: int | None = None, start: int | None = None) -> bytes | None:
        """The file's bytes (with `tail`, only its last `tail` bytes; with `start`, those from byte
        `start` on), or None when it cannot be read."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """What the store keeps to reach this host again."""
        ...
