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
    target = dest or default_target(row)
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


def default_target(row: dict[str, Any]) -> Path:
    """Where a run's checkpoints are pulled to: ./checkpoints/<run_id>/ of the project it started from
    (training_output/checkpoints/ in a project laid out as seed 004's)."""
    from .training_log import output_dir

    local_root = Path(controller.owner_of(row).get("local_root") or Path.cwd())
    seed_layout = output_dir(local_root)
    if seed_layout is not None:  # training_output/ at the root: seed 004's training_output/checkpoints/
        return seed_layout / "checkpoints"
    return local_root / layout.DEFAULT_CHECKPOINT_DIR / row["run_id"]


def file_digest(path: Path) -> tuple[int, str] | None:
    """(size, sha256) of a local file; None when it cannot be read."""
    import hashlib

    digest, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                size += len(chunk)
                digest.update(chunk)
    except OSError:
        return None
    return size, digest.hexdigest()


def verify_pulled(row: dict[str, Any], target: Path | None = None) -> dict[str, Any]:
    """Whether every checkpoint the run wrote (listed on the host now) is in `target`, byte for byte.

    Size and SHA-256 of each file are read on the host (agent `digests`) and of each copy here;
    a file missing here, unreadable there, or different is named in `problems`. Proof that the
    checkpoints are safe off the host, so the host may be destroyed.
    """
    transport = controller.transport_for(row)
    target = target or default_target(row)
    listing = transport.list_checkpoints(row["run_dir"])
    chosen = [f for f in listing.get("files", []) if f.get("this_run")]
    problems: list[str] = []
    verified: list[dict[str, Any]] = []
    for base in ("checkpoint_dir", "project"):
        paths = [str(f["path"]) for f in chosen if f.get("base", "checkpoint_dir") == base]
        if not paths:
            continue
        remote = transport.digests(row["run_dir"], base, paths).get("files") or {}
        for path in paths:
            theirs = remote.get(path) or {"error": "not read"}
            if theirs.get("error"):
                problems.append("%s cannot be read on the host (%s)" % (path, theirs["error"]))
                continue
            mine = file_digest(target / path)
            if mine is None:
                problems.append("%s was not pulled" % path)
            elif mine != (theirs.get("size"), theirs.get("sha256")):
                problems.append("%s differs from the host's copy (size or sha256)" % path)
            else:
                verified.append({"path": path, "size": mine[0], "sha256": mine[1]})
    return {"held": not problems, "dest": str(target), "files": verified, "problems": problems}


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
