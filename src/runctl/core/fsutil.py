"""Atomic file writes and tolerant reads, shared by the agent and the controller.

Everything runctl writes is private to its owner (0600 files, 0700 directories): run dirs hold
specs with --env values and webhook URLs, logs may print secrets. Write failures name the file,
so a full or read-only disk is reported as such ("disk full at PATH"), never as a bare errno.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from typing import Any, Dict, List, Optional, Tuple

from .errors import WriteFailed

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
# Larger than any pid the kernel hands out (pid_max is at most 2**22 on Linux).
MAX_PID = 1 << 22
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _named(exc: OSError, path: str) -> OSError:
    """The same error, naming `path` when the failing call did not (os.write, fsync)."""
    if exc.filename is not None:
        return exc
    named = OSError(exc.errno, exc.strerror or os.strerror(exc.errno or 0), path)  # errno picks the subclass
    named.__cause__ = exc
    return named


# The temp-file rule, in one place for every writer and reader (the agent, the controller and
# runctl.training): a file being written is hidden and carries TEMP_MARK, and no reader ever takes a
# hidden or TEMP_MARK file for a finished one (it also covers the usual `ckpt.pt.tmp`).
TEMP_MARK = ".tmp"


def temp_path(path: str) -> str:
    """The name an atomic writer uses beside `path` until it renames it onto `path`.

    Hidden, unique per process and thread, and the suffix kept last: some writers (numpy.save, ...)
    choose the format from it or append one.
    """
    directory, name = os.path.split(path)
    stem, suffix = os.path.splitext(name)
    token = "%d-%d" % (os.getpid(), threading.get_ident() % 100000)
    return os.path.join(directory, ".%s%s-%s%s" % (stem, TEMP_MARK, token, suffix))


# What other writers name a file until it is complete (downloaders, Lightning's `.part` before its rename).
PARTIAL_SUFFIXES = (".part", ".partial")


def is_partial(name: str) -> bool:
    """Whether a file (or directory) name may be half written: hidden, a temp name (see TEMP_MARK),
    or a name other writers use until they rename the finished file (PARTIAL_SUFFIXES)."""
    return name.startswith(".") or TEMP_MARK in name or name.lower().endswith(PARTIAL_SUFFIXES)


def atomic_write(path: str, data: bytes, fsync: bool = True, mode: int = PRIVATE_FILE) -> None:
    """Replace `path` so readers see the old or the new content, never a partial one.

    On any failure (a full disk above all) the temp file is removed: nothing is left behind.
    """
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    except OSError as exc:
        raise _named(exc, path) from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _named(exc, path) from None
        raise


def atomic_write_json(path: str, obj: Any, fsync: bool = True, mode: int = PRIVATE_FILE) -> None:
    atomic_write(path, (json.dumps(obj, sort_keys=True) + "\n").encode(), fsync=fsync, mode=mode)


def private_dir(path: str) -> str:
    """Create `path` (and missing parents) as 0700, or tighten it to 0700 when it is ours and looser."""
    try:
        os.makedirs(path, mode=PRIVATE_DIR, exist_ok=True)
    except OSError as exc:
        raise _named(exc, path) from None
    tighten(path, PRIVATE_DIR)
    return path


def tighten(path: str, mode: int) -> None:
    """chmod `path` to `mode` when it is ours and grants more; never follows a symlink."""
    try:
        info = os.lstat(path)
    except OSError:
        return
    if info.st_uid == os.getuid() and not os.path.islink(path) and info.st_mode & 0o777 & ~mode:
        try:
            os.chmod(path, mode)
        except OSError:
            pass


RESERVE_BYTES = 64 * 1024


def reserve_space(path: str) -> None:
    """Hold RESERVE_BYTES of real blocks at `path`, to be freed with `release_space` when the disk fills.

    A run that fills its disk must still be able to record how it ended (status.json, events).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, PRIVATE_FILE)
    try:
        view = memoryview(b"\0" * RESERVE_BYTES)
        while view:
            view = view[os.write(fd, view) :]  # a nearly full disk takes part of it, then refuses the rest
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        raise _named(exc, path) from None
    os.close(fd)


def release_space(path: str) -> bool:
    """Free the space held by `reserve_space`; False when there was none to free."""
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def mount_point(path: str) -> str:
    """The mount point holding `path` (the place a user frees space on)."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        current = os.path.dirname(current)
    while not os.path.ismount(current):
        current = os.path.dirname(current)
    return current


def write_failed(exc: BaseException) -> Optional[WriteFailed]:
    """The error a user can act on for a failed write (disk full, read-only, permission), else None."""
    if not isinstance(exc, OSError):
        return None
    path = str(exc.filename or "")
    if disk_full(exc):
        return WriteFailed("disk_full", mount_point(path) if path else "?")
    if exc.errno == errno.EROFS:
        return WriteFailed("read_only", path)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return WriteFailed("permission", path)
    return None


def read_json(path: str) -> Optional[Dict[str, Any]]:
    """The JSON object at `path`, or None when it is missing or not (yet) valid."""
    try:
        with open(path, "rb") as handle:
            value = json.loads(handle.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def parse_jsonl(data: bytes) -> List[Dict[str, Any]]:
    """The JSON objects in `data`, one per line; a line that is not (yet) a valid object is skipped."""
    records = []
    for line in data.splitlines():
        try:
            record = json.loads(line.decode("utf-8", "replace"))
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_jsonl(path: str, offset: int = 0) -> Tuple[List[Dict[str, Any]], int]:
    """The objects on the complete lines of a JSONL file from byte `offset`, and the offset after them.

    A last line without its newline is still being written: it is left for the next read.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return [], offset
    cut = data.rfind(b"\n")
    if cut < 0:
        return [], offset
    return parse_jsonl(data[: cut + 1]), offset + cut + 1


def read_text(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return None


def append_line(path: str, line: str) -> None:
    """One os.write on an O_APPEND fd, so concurrent writers never interleave a line."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, PRIVATE_FILE)
        try:
            os.write(fd, (line.rstrip("\n") + "\n").encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise _named(exc, path) from None


def append_json(path: str, obj: Dict[str, Any]) -> None:
    append_line(path, json.dumps(obj, sort_keys=True))


def parse_pid(text: Optional[str]) -> Optional[int]:
    """The pid in a training.pid, or None when absent, garbled or out of any pid's range."""
    pid = parse_exit_code(text)
    return pid if pid is not None and 0 < pid <= MAX_PID else None


def parse_exit_code(text: Optional[str]) -> Optional[int]:
    """The integer in a training_exit_code.txt, or None when absent or garbled."""
    if text is None:
        return None
    try:
        return int(text.strip().split()[0])
    except (ValueError, IndexError):
        return None
