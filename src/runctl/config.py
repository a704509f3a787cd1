"""The config file's `[policies]` (user config, then the project's runctl.toml), merged under CLI flags.

Validated with pydantic, imported only when a config file exists so plain runs start fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from . import paths
from .core.errors import UsageError

PROJECT_CONFIG = "runctl.toml"


def toml():  # type: ignore[no-untyped-def]
    """tomllib, or its backport on Python 3.10."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib


def _load_toml(path: Path) -> dict[str, Any]:
    tomllib = toml()
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError("invalid TOML in %s: %s" % (path, exc), "fix the file or remove it") from None


def _validate(section: dict[str, Any], path: Path) -> dict[str, Any]:
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

    from .core.durations import parse_duration

    class Policies(BaseModel):
        model_config = ConfigDict(extra="forbid")
        auto_stop_loss: float | None = None
        auto_stop_patience: int | None = None
        exit_grace: float | None = None
        stall_polls: int | None = None
        poll_interval: float | None = None
        hang_timeout: float | None = None
        on_hang: Literal["stop", "notify"] | None = None
        max_duration: float | None = None
        on_nan: Literal["stop", "ignore"] | None = None
        stop_grace: float | None = None
        notify: list[str] | None = None

        @field_validator("exit_grace", "poll_interval", "hang_timeout", "max_duration", "stop_grace", mode="before")
        @classmethod
        def _duration(cls, value: Any) -> Any:
            if not isinstance(value, str):
                return value
            try:
                return parse_duration(value)
            except UsageError as exc:
                raise ValueError("%s (%s)" % (exc.message, exc.hint)) from None

    try:
        return Policies(**section).model_dump(exclude_none=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageError(
            "invalid [policies] %s in %s: %s" % (where, path, first["msg"]), "fix the value or remove it"
        ) from None


def load_policies(project_dir: Path) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in (paths.user_config(), project_dir / PROJECT_CONFIG):
        if path.is_file():
            section = _load_toml(path).get("policies") or {}
            merged.update(_validate(section, path))
    return merged


def merge_policies(config: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Flags given on the command line win over the config file."""
    merged = dict(config)
    merged.update({k: v for k, v in flags.items() if v is not None})
    return merged
