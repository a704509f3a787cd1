"""What a provider is: where hosts come from, how they are reached, and how they are let go.

A provider acquires a host (or looks up one the user names), hands the start pipeline a
`Transport` to it, and releases it (`none`, `stop` or `terminate`) when a run is over. What a
provider cannot do is declared, each with the sentence a user sees and the command that works
instead; the CLI checks before it acts (`require`), so a missing capability is exit 2, never a
half-done action.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..core.errors import UsageError
from ..core.spec import RunSpec
from ..transport.base import Transport

RELEASE_ACTIONS = ("none", "stop", "terminate")

# Capabilities a provider may lack (the keys of `Provider.missing`).
SYNC_CODE = "sync_code"
DOWNLOAD_CHECKPOINTS = "download_checkpoints"
STOP_HOST = "stop"
TERMINATE_HOST = "terminate"


@dataclass
class Host:
    """One machine a run lives on, as the store keeps it (`Store.upsert_host`)."""

    provider: str
    id: str
    address: str
    region: str | None = None
    instance_type: str | None = None
    hourly_price: float | None = None
    state: str = "running"
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Missing:
    """A capability the provider lacks: what the user is told, and what to do instead.

    Both are format strings over the names the caller passes to `require` (e.g. `{run_id}`).
    """

    message: str
    instead: str


@dataclass
class StartRequest:
    """Everything a `<provider> train` command asks for, before anything is checked or created."""

    provider: str
    script: str
    project_dir: str | None = None
    name: str | None = None
    env: list[str] = field(default_factory=list)
    python: str | None = None
    script_args: list[str] = field(default_factory=list)
    notify: list[str] = field(default_factory=list)
    metrics_regex: str | None = None
    checkpoint_dir: str | None = None
    resume_from: str | None = None
    setup: str | None = None
    tty: bool = False
    checkpoint_globs: list[str] = field(default_factory=list)
    flags: dict[str, Any] = field(default_factory=dict)  # policies given on the command line
    options: dict[str, Any] = field(default_factory=dict)  # the provider's own flags
    say: Callable[[str], None] | None = None  # progress for people (stderr); None = quiet
    checkpoint_s3: str | None = None  # --checkpoint-s3 s3://bucket/prefix (checked)
    forward_aws_credentials: str | None = None  # --forward-aws-credentials: "session" or "static"
    data_s3: str | None = None  # --data-s3 s3://bucket/path (checked)
    resume: str | None = None  # --resume: latest | NAME | RUN_ID[/NAME] | s3://bucket/key (resolved in build_spec)


@dataclass
class Placement:
    """Where the spec builder puts a run: decided by the provider from the request and local root."""

    python: str  # the interpreter a .py script runs with (resolved here for local, named for hosts)
    project_dir: str  # the project dir as the host sees it (placed on the host at connect for SSH)
    python_env: dict[str, Any] | None = None  # how the host builds the project's environment
    python_script: bool = False  # whether the agent may swap `python` for that environment's


class Provider(Protocol):
    """One source of hosts. `runctl.providers.get(name)` returns one; add a provider by registering
    its import string in `runctl.providers.REGISTRY` (its SDK is imported only when it is used)."""

    name: str
    syncs_code: bool  # whether the pipeline ships the project to the host (rsync) before launching
    missing: Mapping[str, Missing]

    def check(self, request: StartRequest) -> None:
        """Provider flags checked before anything is recorded (UsageError)."""
        ...

    def placement(self, request: StartRequest, root: Path, script: Path) -> Placement: ...

    def acquire(self, request: StartRequest) -> tuple[Host, bool]:
        """The host to run on and whether this call created it (then a failed start releases it)."""
        ...

    def transport(self, host: Host, request: StartRequest) -> Transport: ...

    def reconnect(self, record: dict[str, Any]) -> Transport:
        """The transport of a recorded run, from the transport record the store kept."""
        ...

    def place(self, transport: Transport, spec: RunSpec, request: StartRequest) -> None:
        """After connect: fix where the run lives on the host (spec.project_dir, host, data_dir)."""
        ...

    def on_end(self, request: StartRequest) -> dict[str, Any]:
        """The spec's `on_end` block: what the agent does on the host once the run has ended."""
        ...

    def end_action(self, row: dict[str, Any]) -> str:
        """The release action the controller takes when this run has ended (`none` keeps the host)."""
        ...

    def describe(self, transport: Transport) -> dict[str, Any]:
        """The host's facts (CPU, memory, disk, GPUs) for `<provider> status`."""
        ...

    def release(self, host: Host, action: str) -> Host:
        """Release the host and return its state read back from the provider (the confirmation)."""
        ...


def supports(provider: Provider, capability: str) -> bool:
    return capability not in provider.missing


def require(provider: Provider, capability: str, **names: Any) -> None:
    """UsageError (exit 2) with the provider's own sentence when it lacks `capability`."""
    missing = provider.missing.get(capability)
    if missing is not None:
        raise UsageError(missing.message.format(**names), missing.instead.format(**names))


def stated_price(options: Mapping[str, Any]) -> float | None:
    """The `--hourly-price` a user states for a host runctl cannot price (local, SSH), checked (exit 2).

    It is what a budget (`--max-cost`) is counted against on such a host."""
    import math

    price = options.get("hourly_price")
    if price is None:
        return None
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) or price <= 0:
        raise UsageError(
            "--hourly-price must be a finite number of dollars above 0, got %s" % price,
            "for example: --hourly-price 1.20",
        )
    return float(price)


def default_on_end() -> dict[str, Any]:
    """The `on_end` block when nothing is to be done on the host (the agent's default too)."""
    return {"command": None, "after": ["checkpoints_in_place"], "controller_grace": 0}
