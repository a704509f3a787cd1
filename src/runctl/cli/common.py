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


class ListOutput(str, Enum):
    """Listings also come as CSV (a header line always, so an empty listing is still a valid file)."""

    text = "text"
    json = "json"
    csv = "csv"


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


def table(heads: list[str], rows: list[list[str]]) -> None:
    """Columns padded to their widest cell, for people (JSON and CSV are for programs)."""
    widths = [max(len(h), *(len(r[n]) for r in rows)) if rows else len(h) for n, h in enumerate(heads)]
    for line in [heads, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _cell(value: Any) -> Any:
    """A CSV cell: lists joined by spaces, booleans as JSON writes them, None empty."""
    if isinstance(value, list):
        return " ".join(map(str, value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def emit_csv(fields: list[str], rows: list[dict[str, Any]]) -> None:
    """`rows` as CSV on stdout: the header line first, even with no rows; lists joined by spaces."""
    import csv

    writer = csv.DictWriter(sys.stdout, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
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
