"""Errors a user can act on, each carrying its documented exit code."""

from __future__ import annotations

from typing import Dict, Optional

# Documented process exit codes (README "Exit codes").
EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_HOST = 4
EXIT_INTERRUPTED = 130


class RunctlError(Exception):
    """An expected failure: printed as one or two lines, never as a traceback."""

    exit_code = EXIT_RUN_FAILED

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(RunctlError):
    """The user asked for something malformed or impossible; nothing was changed."""

    exit_code = EXIT_USAGE


class HostError(RunctlError):
    """A host, transport or cloud API failed."""

    exit_code = EXIT_HOST


class WriteFailed(HostError):
    """A file could not be written (disk full, read-only, permission denied), on a host or locally.

    `kind` is "disk_full" (then `path` is the mount point that ran out of space), "read_only" or
    "permission". The agent sends (kind, path) to the controller, which names the host.
    """

    def __init__(self, kind: str, path: str, host: str = "") -> None:
        where = "%s on %s" % (path, host) if host else path
        if kind == "disk_full":
            message = "disk full at %s" % where
            hint = "free space there (df -h %s), then start the run again" % path
        elif kind == "read_only":
            message = "cannot write %s: read-only" % where
            hint = "remount it read-write, or use a writable directory (--project-dir, --remote-dir, RUNCTL_HOME)"
        else:
            message = "cannot write %s: permission denied" % where
            hint = "fix the permissions of that path, or use a directory you can write"
        super().__init__(message, hint)
        self.kind = kind
        self.path = path

    def to_dict(self) -> Dict[str, str]:
        return {"kind": self.kind, "path": self.path}


class CorruptStore(HostError):
    """The store file is damaged: say which file and how to move it aside (a new one is then made)."""

    def __init__(self, path: str, detail: str) -> None:
        fix = "move it (and any -wal/-shm next to it) aside and runctl starts a new one"
        message = "the runctl store %s is corrupt (%s)" % (path, detail)
        super().__init__(message, "%s: mv %s %s.corrupt" % (fix, path, path))


class WaitTimeout(RunctlError):
    """Waiting ended before the run did; the run keeps going."""

    exit_code = EXIT_TIMEOUT


class Detached(RunctlError):
    """Ctrl-C while starting or following a run: the run keeps going."""

    exit_code = EXIT_INTERRUPTED


class Interrupted(RunctlError):
    """Ctrl-C during a command that is not following a run (what it left behind is said)."""

    exit_code = EXIT_INTERRUPTED


class RunGone(RunctlError):
    """The run directory vanished, so the run's state can no longer be known."""


class CloudError(HostError):
    """A cloud API refused or failed a call; `code` is the provider's error code (for callers that branch on it)."""

    def __init__(self, message: str, hint: Optional[str] = None, code: str = "") -> None:
        super().__init__(message, hint)
        self.code = code
