"""What runctl downloaded into a local directory, so a download never overwrites anyone else's file.

A checkpoint download may update files runctl itself put there (unchanged since), resume ones it
was writing when interrupted, and add new ones. A file that exists and is not runctl's (or that
the user changed since) is skipped, and the caller says so. Nothing local is ever deleted.

The manifest lives in RUNCTL_HOME (one per destination dir), not in the destination, which then
holds exactly the checkpoints. Losing it (another RUNCTL_HOME, a moved dir) errs on the safe side:
the files already there are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import paths
from ..core.fsutil import atomic_write_json


@dataclass
class Plan:
    allowed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def safe_relative(path: str) -> bool:
    """A plain relative path that stays inside its base directory (a host cannot aim elsewhere)."""
    if not path or "\0" in path or path.startswith("/"):
        return False
    parts = path.split("/")
    return posixpath.normpath(path) == path and all(part not in ("", ".", "..") for part in parts)


def manifest_path(dest: Path) -> Path:
    digest = hashlib.sha256(str(dest).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return paths.home() / "downloads" / (digest + ".json")


def read(dest: Path) -> dict[str, Any]:
    try:
        data = json.loads(manifest_path(dest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def _stamp(path: Path) -> dict[str, Any] | None:
    try:
        info = path.lstat()
    except OSError:
        return None
    if not path.is_file() or path.is_symlink():
        return None
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _ours(dest: Path, rel: str, known: dict[str, Any]) -> bool:
    """Whether runctl may write dest/rel: free, or runctl's and untouched since (or half-written by it)."""
    for parent in Path(rel).parents:
        if str(parent) == ".":
            continue
        path = dest / parent
        if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
            return False
    path = dest / rel
    if not os.path.lexists(path):
        return True
    entry = known.get(rel)
    if not isinstance(entry, dict):
        return False
    return bool(entry.get("pending")) or _stamp(path) == {k: entry.get(k) for k in ("size", "mtime_ns")}


def plan(dest: Path, files: list[str]) -> Plan:
    known = read(dest)
    result = Plan()
    for rel in files:
        if safe_relative(rel) and _ours(dest, rel, known):
            result.allowed.append(rel)
        else:
            result.skipped.append(rel)
    return result


def _write(dest: Path, files: dict[str, Any]) -> None:
    path = manifest_path(dest)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    data = {"tool": "runctl", "dest": str(dest), "files": files}
    atomic_write_json(str(path), data, mode=0o600)


def mark_pending(dest: Path, rels: list[str]) -> None:
    """Before the transfer: these may be left half-written (rsync --partial); they stay runctl's."""
    files = read(dest)
    files.update({rel: {"pending": True} for rel in rels})
    _write(dest, files)


def record(dest: Path, rels: list[str]) -> None:
    """After the transfer: remember each file as it now is, to recognise it unchanged next time."""
    files = read(dest)
    for rel in rels:
        stamp = _stamp(dest / rel)
        if stamp is not None:
            files[rel] = stamp
    _write(dest, files)
