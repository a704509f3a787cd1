"""Seed 004's local record of a run: `training_output/training_log.json` and its checkpoints folder.

Projects laid out that way (a `training_output/` directory at the project root) keep the run's end
in `training_log.json` (`termination_status`, `termination_message`, beside whatever else the file
holds, which is kept) and get their checkpoints pulled into `training_output/checkpoints/`. Other
projects are untouched: their checkpoints go to `./checkpoints/<run_id>/`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

OUTPUT_DIR = "training_output"
LOG_FILE = "training_log.json"


def output_dir(local_root: Path) -> Path | None:
    """The project's `training_output/`, when it uses that layout."""
    path = local_root / OUTPUT_DIR
    return path if path.is_dir() else None


def record_end(row: dict[str, Any]) -> Path | None:
    """Write the ended run's termination into training_log.json (when the layout is used); never raises."""
    from . import controller
    from .core.fsutil import atomic_write_json

    root = controller.owner_of(row).get("local_root")
    folder = output_dir(Path(root)) if root else None
    if folder is None:
        return None
    path = folder / LOG_FILE
    try:
        current = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        current = {}
    if not isinstance(current, dict):
        current = {}
    state = row.get("state") or {}
    current.update(
        run_id=row["run_id"],
        status=row.get("status"),
        termination_status=row.get("termination_status") or state.get("termination_status") or "",
        termination_message=state.get("termination_message") or "",
        ended_at=row.get("ended_at") or state.get("ended_at") or time.time(),
    )
    try:
        atomic_write_json(str(path), current, mode=0o644)
    except OSError:
        return None
    return path
