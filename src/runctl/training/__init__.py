"""Helpers for training scripts supervised by runctl.

Standard library only and compatible with Python 3.8, because this package is shipped to hosts that
may have nothing but ``python3``. Importing it has no side effects.

The runctl agent sets these environment variables for the training process:

``RUNCTL_RUN_ID``          id of the run
``RUNCTL_RUN_DIR``         the run directory (``<project>/.runctl/runs/<run_id>``)
``RUNCTL_PROJECT_DIR``     the project directory (the script's working directory)
``RUNCTL_CHECKPOINT_DIR``  where checkpoints go (default ``<project>/checkpoints``)
``RUNCTL_STOP_FILE``       its presence asks the script to stop gracefully
``RUNCTL_METRICS_FILE``    JSON lines written by :func:`report`
``RUNCTL_RESUME_FROM``     optional checkpoint to resume from

Without them (a script run by hand) every helper still works: :func:`report` does nothing,
:func:`should_stop` looks at ``training_output/STOP_TRAINING`` only, and paths are relative to the
current directory.

Typical loop::

    from runctl import training as rt

    for epoch in range(start_epoch, epochs + 1):
        for batch in loader:
            ...
            rt.report(step=step, epoch=epoch, loss=loss, total_epochs=epochs)
            if rt.should_stop():
                save(rt.checkpoint_dir() / f"checkpoint_epoch_{epoch}.pt")
                sys.exit(0)
        with rt.atomic_path(rt.checkpoint_dir() / f"checkpoint_epoch_{epoch}.pt") as tmp:
            torch.save(state, tmp)
    rt.mark_complete(f"accuracy={acc:.4f}", checkpoint=last_checkpoint)
"""

import contextlib
import datetime
import json
import math
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from ..core import layout
from ..core.fsutil import is_partial, temp_path

__all__ = [
    "COMPLETION_MARKER",
    "LEGACY_STOP_FILE",
    "atomic_path",
    "atomic_write",
    "checkpoint_dir",
    "latest_checkpoint",
    "mark_complete",
    "project_dir",
    "report",
    "resume_from",
    "run_id",
    "should_stop",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The script's own completion marker, in the project directory.
COMPLETION_MARKER = "training_complete.txt"
#: Stop file of the original system, relative to the project directory.
LEGACY_STOP_FILE = os.path.join("training_output", "STOP_TRAINING")

_ENV_RUN_ID = "RUNCTL_RUN_ID"
_ENV_PROJECT_DIR = "RUNCTL_PROJECT_DIR"
_ENV_CHECKPOINT_DIR = "RUNCTL_CHECKPOINT_DIR"
_ENV_STOP_FILE = "RUNCTL_STOP_FILE"
_ENV_METRICS_FILE = "RUNCTL_METRICS_FILE"
_ENV_RESUME_FROM = "RUNCTL_RESUME_FROM"

_warned = False
_warn_lock = threading.Lock()


# --------------------------------------------------------------------------------------------------
# Locations


def run_id() -> Optional[str]:
    """The id of the run when started by runctl (``RUNCTL_RUN_ID``), else None."""
    return os.environ.get(_ENV_RUN_ID) or None


def project_dir() -> Path:
    """The project directory: ``RUNCTL_PROJECT_DIR``, else the current working directory."""
    value = os.environ.get(_ENV_PROJECT_DIR)
    return Path(value) if value else Path.cwd()


def checkpoint_dir() -> Path:
    """Where checkpoints go: ``RUNCTL_CHECKPOINT_DIR``, else ``<project>/checkpoints``. Created if missing."""
    path = _checkpoint_dir_path()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _checkpoint_dir_path() -> Path:
    value = os.environ.get(_ENV_CHECKPOINT_DIR)
    return Path(value) if value else project_dir() / "checkpoints"


def resume_from() -> Optional[Path]:
    """The checkpoint the agent asks the script to resume from (``RUNCTL_RESUME_FROM``), or None."""
    value = os.environ.get(_ENV_RESUME_FROM, "").strip()
    return Path(value) if value else None


# --------------------------------------------------------------------------------------------------
# Metrics


def report(
    step: Any = None,
    epoch: Any = None,
    loss: Any = None,
    total_epochs: Any = None,
    **metrics: Any,
) -> None:
    """Append one JSON line of metrics to ``RUNCTL_METRICS_FILE``.

    ``epoch`` is the 1-based number of the epoch in progress and ``total_epochs`` the number planned;
    the agent uses them to recognise the final epoch. Values may be Python numbers, numpy or torch
    scalars (anything with ``.item()``) or strings; None values are left out. NaN and infinity are
    written as such (``NaN``, ``Infinity``) so that divergence can be detected.

    The line is written with a single ``write`` on a file opened with ``O_APPEND``, so lines from
    several processes never interleave. Without ``RUNCTL_METRICS_FILE`` this does nothing. It never
    raises because of the metrics file: a problem there is reported once on stderr.
    """
    path = os.environ.get(_ENV_METRICS_FILE)
    if not path:
        return
    try:
        record: Dict[str, Any] = {"t": time.time(), "source": "report"}
        for key, value, kind in (
            ("step", step, "int"),
            ("epoch", epoch, "int"),
            ("loss", loss, "float"),
            ("total_epochs", total_epochs, "int"),
        ):
            if value is not None:
                record[key] = _coerce(value, kind)
        for key, value in metrics.items():
            if value is not None and key not in ("t", "source"):
                record[str(key)] = _coerce(value, "any")
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        _progress.update((key, record[key]) for key in ("step", "epoch") if key in record)
    except Exception as exc:  # a bad value must not stop training
        _warn_once("could not encode metrics ({}: {})".format(type(exc).__name__, exc))
        return
    try:
        _append_line(path, line.encode("utf-8"))
    except OSError as exc:
        _warn_once("could not write metrics to {} ({})".format(path, exc))


# The step and epoch last reported: what a checkpoint committed now holds (see _note_saved).
_progress: Dict[str, Any] = {}


def _note_saved(final: Path) -> None:
    """Tell the checkpoint uploader which step the checkpoint just committed holds. Timing alone
    cannot: a file's mtime comes from the kernel's coarse clock, and a tight loop reports the next
    step within the same millisecond. Never raises: a checkpoint must not fail over this note."""
    run_dir = os.environ.get("RUNCTL_RUN_DIR")
    if not run_dir or not _progress:
        return
    record = {"t": time.time(), "path": os.path.realpath(str(final)), **_progress}
    try:
        _append_line(os.path.join(run_dir, layout.SAVED), (json.dumps(record, default=str) + "\n").encode("utf-8"))
    except (OSError, ValueError):
        pass


def _append_line(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # private, like its run dir
    try:
        written = os.write(fd, data)
        # A regular file takes the whole line at once; finish a short write rather than lose the end.
        while written < len(data):
            written += os.write(fd, data[written:])
    finally:
        os.close(fd)


def _coerce(value: Any, kind: str) -> Any:
    """Plain JSON value for a metric.

    ``kind`` is "int" (whole numbers become int, others stay float), "float" (always a float when it
    can be one) or "any" (numbers become numbers, strings and booleans stay as they are).
    """
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (str, bytes)):
        with contextlib.suppress(Exception):
            value = item()
    if isinstance(value, bool):
        return value
    if kind == "any":
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)):
            return [_coerce(v, "any") for v in value]
        if isinstance(value, dict):
            return {str(k): _coerce(v, "any") for k, v in value.items()}
    if isinstance(value, int) and kind != "float":
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if kind == "int" and math.isfinite(number) and number.is_integer():
        return int(number)
    return number


def _warn_once(message: str) -> None:
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    try:
        sys.stderr.write("runctl.training: warning: {}; further metrics problems are not shown\n".format(message))
        sys.stderr.flush()
    except Exception:
        pass


# --------------------------------------------------------------------------------------------------
# Stopping and completion


def should_stop() -> bool:
    """True when a graceful stop was requested: save a checkpoint and exit 0.

    Looks at ``RUNCTL_STOP_FILE`` and at ``training_output/STOP_TRAINING`` in the project directory
    (the original system's path). Two ``stat`` calls: cheap enough to call every step.
    """
    stop_file = os.environ.get(_ENV_STOP_FILE)
    if stop_file and os.path.exists(stop_file):
        return True
    base = os.environ.get(_ENV_PROJECT_DIR) or os.curdir
    return os.path.exists(os.path.join(base, LEGACY_STOP_FILE))


def mark_complete(message: str = "", checkpoint: Optional[PathLike] = None) -> Path:
    """Write the completion marker ``training_complete.txt`` in the project directory, atomically.

    Call it once, after the last checkpoint is safely written, just before exiting 0.
    """
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    lines = ["Training completed successfully at {}\n".format(now)]
    if message:
        lines.append(message.rstrip("\n") + "\n")
    if checkpoint is not None:
        lines.append("Final checkpoint: {}\n".format(os.fspath(checkpoint)))
    path = project_dir() / COMPLETION_MARKER
    atomic_write(path, "".join(lines))
    return path


# --------------------------------------------------------------------------------------------------
# Atomic files


def _temp_path(path: Path) -> Path:
    # The agent's own rule (core.fsutil): hidden, a temp mark, the suffix kept last.
    return Path(temp_path(str(path)))


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    ::

        with atomic_path(ckpt_dir / "checkpoint_epoch_3.pt") as tmp:
            torch.save(state, tmp)

    After the block the temporary file is flushed to disk, renamed onto ``path`` and the directory is
    synced, so a reader sees either the old complete file or the new complete file, never a partial
    one. If the block raises, the temporary file is removed, ``path`` is left as it was and the
    exception propagates. The block may also create a directory at the temporary path (for example
    ``model.save_pretrained(tmp)``); it then replaces ``path`` as a whole.
    """
    final = Path(os.fspath(path))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(final)
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise FileNotFoundError("nothing was written to the temporary path {}".format(tmp))
        if tmp.is_dir():
            _commit_directory(tmp, final)
        else:
            _fsync_file(tmp)
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        _remove(tmp)
        raise
    _note_saved(final)


def atomic_write(path: PathLike, data: Union[bytes, str]) -> Path:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` atomically; returns ``path`` as a Path."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    final = Path(os.fspath(path))
    with atomic_path(final) as tmp, open(tmp, "wb") as handle:
        handle.write(payload)
    return final


def _commit_directory(tmp: Path, final: Path) -> None:
    for root, _dirs, files in os.walk(str(tmp)):
        for name in files:
            _fsync_file(Path(root) / name)
        _fsync_dir(Path(root))
    if final.is_dir() and not final.is_symlink():
        # A non-empty directory cannot be replaced in one step: move the old one aside first.
        old = Path(temp_path(str(final) + ".old"))
        _remove(old)
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)


def _fsync_file(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some platforms and file systems refuse fsync on a read-only descriptor
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return  # not possible on Windows
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(str(path), ignore_errors=True)
        else:
            path.unlink()
    except OSError:
        pass


# --------------------------------------------------------------------------------------------------
# Checkpoints

_NUMBER = re.compile(r"\d+")


def latest_checkpoint(directory: Optional[PathLike] = None, pattern: str = "checkpoint_epoch_*") -> Optional[Path]:
    """The checkpoint in ``directory`` (default :func:`checkpoint_dir`) with the highest epoch number.

    The number is read from the part of the name that the first ``*`` of ``pattern`` matches, so
    ``checkpoint_epoch_10.pt`` wins over ``checkpoint_epoch_9.pt`` whatever their times; further
    numbers break ties (``checkpoint_epoch_3_step_500``). Temporary files from :func:`atomic_path`,
    hidden files, empty files and names without a number are ignored. None if there is none.
    """
    base = Path(os.fspath(directory)) if directory is not None else _checkpoint_dir_path()
    if not base.is_dir():
        return None
    prefix = pattern.split("*", 1)[0] if "*" in pattern else ""
    best: Optional[Tuple[List[int], str]] = None
    best_path: Optional[Path] = None
    for candidate in base.glob(pattern):
        name = candidate.name
        if is_partial(name):
            continue
        numbers = [int(n) for n in _NUMBER.findall(name[len(prefix) :] if name.startswith(prefix) else name)]
        if not numbers:
            continue
        try:
            if candidate.is_file() and candidate.stat().st_size == 0:
                continue
        except OSError:
            continue
        key = (numbers, name)
        if best is None or key > best:
            best, best_path = key, candidate
    return best_path


def __getattr__(name: str) -> Any:
    # ``from runctl.training import HuggingFaceCallback`` without importing any framework up front.
    if name in ("HuggingFaceCallback", "LightningCallback"):
        from . import integrations

        return getattr(integrations, name)
    raise AttributeError("module {!r} has no attribute {!r}".format(__name__, name))
