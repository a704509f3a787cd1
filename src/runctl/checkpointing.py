"""A run's checkpoints as the controller sees them: listed on the host, pulled to this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import controller
from .core import layout
from .store import Store
from .transport.manifest import Plan


def checkpoints(row: dict[str, Any]) -> dict[str, Any]:
    return controller.transport_for(row).list_checkpoints(row["run_dir"])


def download_checkpoints(
    store: Store, row: dict[str, Any], dest: Path | None, include_all: bool, progress: bool
) -> tuple[Path, Plan]:
    """Pull this run's checkpoints (or all with include_all) into dest, default ./checkpoints/<run_id>/.

    Local files runctl did not download are never overwritten: they come back in `skipped`. Only
    for providers with the `download_checkpoints` capability (checked by the caller).
    """
    transport = controller.transport_for(row)
    listing = transport.list_checkpoints(row["run_dir"])
    chosen = [f for f in listing.get("files", []) if include_all or f.get("this_run")]
    local_root = Path(controller.owner_of(row).get("local_root") or Path.cwd())
    target = dest or local_root / layout.DEFAULT_CHECKPOINT_DIR / row["run_id"]
    # Files in the checkpoint dir land at the top of target; those found elsewhere keep their project path.
    bases = {"checkpoint_dir": listing["checkpoint_dir"], "project": listing.get("project_dir")}
    done = Plan()
    for base, remote_dir in bases.items():
        paths = [f["path"] for f in chosen if f.get("base", "checkpoint_dir") == base]
        if paths and remote_dir:
            part = transport.download(remote_dir, paths, target, progress)
            done.allowed += part.allowed
            done.skipped += part.skipped
    store.add_event(
        row["run_id"],
        "checkpoints_downloaded",
        {"dest": str(target), "files": len(done.allowed), "skipped": len(done.skipped)},
    )
    return target, done


def skipped_warning(target: Path, skipped: list[str]) -> str:
    shown = ", ".join(skipped[:3]) + (" and %d more" % (len(skipped) - 3) if len(skipped) > 3 else "")
    return (
        "warning: kept %d file(s) in %s that runctl did not download (not overwritten): %s; "
        % (
            len(skipped),
            target,
            shown,
        )
        + "move them away and download again, or pass --dest"
    )
