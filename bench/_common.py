"""What the benchmarks in this folder share: the runctl under test, small file helpers, result rows,
the printed table, and the frame of main().

The benchmarks run as scripts (`.venv/bin/python bench/NAME.py`), so this folder is on sys.path and
they import this module as `_common`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PY = sys.executable
RUNCTL = str(Path(sys.executable).parent / "runctl")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def make_project(root: Path, name: str, script: str) -> Path:
    """root/name: a project (pyproject.toml) holding `script` as s.py."""
    project = root / name
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'bench'\nversion = '0'\n")
    (project / "s.py").write_text(script)
    return project


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def check(proc: subprocess.CompletedProcess, what: str, tail: int = 800) -> None:
    """SystemExit naming `what` and the end of its stderr when `proc` failed."""
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else proc.stderr
        raise SystemExit("%s failed (exit %d): %s" % (what, proc.returncode, (err or "").strip()[-tail:]))


# ---- rows and the table ---------------------------------------------------------------------------


def make_row(
    name: str,
    unit: str,
    measured: float,
    alt_name: str,
    alt: float | None,
    compared: dict[str, Any],
    target: float | None,
    target_on: str,
    bounded: float | None,
    reps: int,
    extra: dict[str, Any],
    target_label: str | None = None,
) -> dict[str, Any]:
    """One result row, keys in the order the JSON output shows them: the measurement, the alternative
    beside it, `compared` (how the two compare), the target and whether `bounded` is within it, `extra`."""
    out = {
        "name": name,
        "unit": unit,
        "measured": measured,
        "alternative": alt_name,
        "alternative_value": alt,
        **compared,
        "target": target,
    }
    if target_label is not None:
        out["target_label"] = target_label
    out["target_on"] = target_on
    out["pass"] = None if target is None or bounded is None else bounded <= target
    out["reps"] = reps
    out.update(extra)
    return out


def verdict(row: dict[str, Any]) -> str:
    return "info" if row["pass"] is None else ("PASS" if row["pass"] else "MISS")


def print_rows(
    line: str, titles: tuple[str, ...], rows: list[dict[str, Any]], cells: Callable[[dict[str, Any]], tuple]
) -> None:
    """The titles, then a line per row: `cells(row)` and the verdict."""
    print(line % (*titles, ""))
    for r in rows:
        print(line % (*cells(r), verdict(r)))


def print_table(
    header: dict[str, Any],
    line: str,
    titles: tuple[str, ...],
    rows: list[dict[str, Any]],
    cells: Callable[[dict[str, Any]], tuple],
) -> None:
    """The environment, the rows, then each row's note and the repetitions."""
    keys = ("python", "runctl", "cores", "load_average", "platform")
    print("python %s | runctl %s | %s cores | load average %s at start | %s" % tuple(header[k] for k in keys))
    print()
    print_rows(line, titles, rows, cells)
    print()
    for r in rows:
        if r.get("note"):
            print("  %s: %s" % (r["name"], r["note"]))
    print("  repetitions per row: %s" % ", ".join(str(r["reps"]) for r in rows))


def environment(env: dict[str, str]) -> dict[str, Any]:
    """The header: versions of Python and runctl, the machine, its load now."""
    proc = subprocess.run([RUNCTL, "--version"], env=env, capture_output=True, text=True)
    return {
        "python": platform.python_version(),
        "runctl": proc.stdout.strip().replace("runctl ", "") or "?",
        "cores": os.cpu_count(),
        "load_average": "%.2f" % os.getloadavg()[0],
        "platform": platform.platform(terse=True),
        "runctl_path": RUNCTL,
    }


# ---- main ---------------------------------------------------------------------------------------


def arguments(doc: str, reps_help: str) -> argparse.ArgumentParser:
    """--json and --reps, described by the first line of the benchmark's docstring."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--reps", type=int, default=5, help=reps_help)
    return parser


def require_runctl() -> None:
    if not os.access(RUNCTL, os.X_OK):
        raise SystemExit("no runctl console script at %s (install the package in this venv)" % RUNCTL)


def ratio_cells(r: dict[str, Any]) -> tuple[Any, ...]:
    """A row's cells: measured, the alternative, their ratio and the target."""
    target = r.get("target_label") or "<= %g %s" % (r["target"], r["unit"])
    return (r["name"], "%.3f %s" % (r["measured"], r["unit"]), r["alternative"],
            "%.3f %s" % (r["alternative_value"], r["unit"]), "%.2fx" % r["ratio"], target)  # fmt: skip


def report(rows: list[dict[str, Any]], as_json: bool, document: dict[str, Any], table: Callable[[], None]) -> int:
    """Print `document` as JSON or the table; the exit status: 1 when a row missed its target."""
    if as_json:
        print(json.dumps(document, indent=2))
    else:
        table()
    return 0 if all(r["pass"] is not False for r in rows) else 1
