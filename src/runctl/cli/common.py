"""Output, errors and parameter parsing shared by every command group."""

from __future__ import annotations

import json
import math
import sys
from enum import Enum
from typing import Any

import typer

from ..core.durations import parse_duration
from ..core.errors import Detached as Detached


class Output(str, Enum):
    text = "text"
    json = "json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(data), indent=2, default=str) + "\n")
    sys.stdout.flush()


def say(message: str) -> None:
    """Chatter for people goes to stderr; stdout carries data."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def duration_option(value: str | None, flag: str) -> float | None:
    return None if value is None else parse_duration(value, flag)


def exit_with(code: int) -> None:
    if code:
        raise typer.Exit(code)


def store():  # type: ignore[no-untyped-def]
    from ..store import Store

    return Store()
