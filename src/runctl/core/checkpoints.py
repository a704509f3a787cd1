"""Where a run's checkpoints are: its checkpoint dir, and the places libraries write them by default.

The run's checkpoint dir (`checkpoints/` unless --checkpoint-dir says otherwise) always counts, with
everything in it. Beside it, glob patterns relative to the project find what scripts and libraries
save elsewhere: Lightning's `lightning_logs/version_N/checkpoints/`, a script's `out/ckpt.pt`.
`--checkpoint-glob` (repeatable) replaces these defaults. The newest file with a checkpoint suffix
(the original system's `.pt .ckpt .pth .pkl .json .safetensors`, and `.bin`) is the run's
`last_checkpoint`. Hidden and temporary files (fsutil.is_partial) never count: they may be half written.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .fsutil import is_partial

SUFFIXES = (".pt", ".ckpt", ".pth", ".pkl", ".json", ".safetensors", ".bin")
_WEIGHTS = "{" + ",".join(s for s in SUFFIXES if s != ".json") + "}"
DEFAULT_GLOBS = (
    "lightning_logs/*/checkpoints/*",
    "out*/*" + _WEIGHTS,
)
BASE_CHECKPOINT_DIR = "checkpoint_dir"
BASE_PROJECT = "project"


def check_glob(pattern: str) -> Optional[str]:
    """Why `pattern` cannot be a checkpoint glob, or None."""
    if not pattern.strip():
        return "is empty"
    if os.path.isabs(pattern) or pattern.startswith("~"):
        return "must be relative to the project dir"
    if ".." in pattern.replace("\\", "/").split("/"):
        return "must stay inside the project dir (no '..')"
    return None


def _expand_braces(pattern: str) -> List[str]:
    """`out*/*{.pt,.ckpt}` as `out*/*.pt`, `out*/*.ckpt` (glob has no braces)."""
    start = pattern.find("{")
    end = pattern.find("}", start)
    if start < 0 or end < 0:
        return [pattern]
    head, tail = pattern[:start], pattern[end + 1 :]
    out: List[str] = []
    for choice in pattern[start + 1 : end].split(","):
        out.extend(_expand_braces(head + choice + tail))
    return out


def _skipped(path: str) -> bool:
    return any(is_partial(part) for part in path.replace("\\", "/").split("/") if part)


def _entry(path: str, rel: str, base: str) -> Optional[Dict[str, Any]]:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return {"path": rel, "base": base, "size": info.st_size, "mtime": info.st_mtime}


def find(project_dir: str, checkpoint_dir: str, globs: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Checkpoint files, newest first: `path` relative to the checkpoint dir (base `checkpoint_dir`)
    or, for files found by a glob outside it, relative to the project dir (base `project`)."""
    found: Dict[str, Dict[str, Any]] = {}
    for base, dirs, names in os.walk(checkpoint_dir):
        dirs[:] = [d for d in dirs if not is_partial(d)]
        for name in names:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, checkpoint_dir)
            if _skipped(rel):
                continue
            entry = _entry(path, rel, BASE_CHECKPOINT_DIR)
            if entry:
                found[os.path.realpath(path)] = entry
    root = glob.escape(project_dir)
    for pattern in _patterns(globs):
        for path in glob.glob(os.path.join(root, pattern), recursive=True):
            real = os.path.realpath(path)
            rel = os.path.relpath(path, project_dir)
            if real in found or not os.path.isfile(path) or _skipped(rel) or rel.startswith(".."):
                continue
            entry = _entry(path, rel, BASE_PROJECT)
            if entry:
                found[real] = entry
    return sorted(found.values(), key=lambda f: f["mtime"], reverse=True)


def _patterns(globs: Optional[Sequence[str]]) -> Iterable[str]:
    for pattern in globs if globs else DEFAULT_GLOBS:
        for expanded in _expand_braces(pattern):
            yield expanded


def absolute(entry: Dict[str, Any], project_dir: str, checkpoint_dir: str) -> str:
    base = checkpoint_dir if entry.get("base", BASE_CHECKPOINT_DIR) == BASE_CHECKPOINT_DIR else project_dir
    return os.path.join(base, entry["path"])


def newest(files: List[Dict[str, Any]], since: float) -> Optional[Dict[str, Any]]:
    """The newest file written at or after `since`, preferring files with a checkpoint suffix."""
    recent = [f for f in files if f["mtime"] >= since]
    typed = [f for f in recent if f["path"].lower().endswith(SUFFIXES)]
    pool = typed or recent
    return max(pool, key=lambda f: f["mtime"]) if pool else None


def units(files: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The checkpoints among `find`'s files, each saved as a whole: a file, or a directory of the
    checkpoint dir (`checkpoint-500/` as written by save_pretrained) with every file in it.

    name -> {"name", "base", "files": [entries], "size": total, "mtime": newest}. A file found by a
    glob outside the checkpoint dir is a checkpoint of its own, named by its project-relative path.
    """
    found: Dict[str, Dict[str, Any]] = {}
    for entry in files:
        path = entry["path"].replace("\\", "/")
        top = path.split("/", 1)[0] if entry.get("base", BASE_CHECKPOINT_DIR) == BASE_CHECKPOINT_DIR else path
        unit = found.setdefault(top, {"name": top, "base": entry.get("base", BASE_CHECKPOINT_DIR), "files": []})
        unit["files"].append(entry)
    for unit in found.values():
        unit["files"].sort(key=lambda f: f["path"])
        unit["size"] = sum(int(f["size"]) for f in unit["files"])
        unit["mtime"] = max(float(f["mtime"]) for f in unit["files"])
        unit["is_dir"] = any("/" in f["path"].replace("\\", "/")[len(unit["name"]) :] for f in unit["files"])
    return found


def unit_signature(unit: Dict[str, Any]) -> Dict[str, List[float]]:
    """What a checkpoint unit looks like on disk: file -> [size, mtime]. The same signature later
    means the same files, unchanged (the uploader and the end-of-run proof compare them)."""
    return {f["path"]: [int(f["size"]), float(f["mtime"])] for f in unit["files"]}
