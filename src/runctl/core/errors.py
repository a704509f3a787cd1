"""Errors a user can act on, each carrying its documented exit code."""

from __future__ import annotations

from typing import Optional

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


class WaitTimeout(RunctlError):
    """Waiting ended before the run did; the run keeps going."""

    exit_code = EXIT_TIMEOUT


class Detached(RunctlError):
    """Ctrl-C while starting or following a run: the run keeps going."""

    exit_code = EXIT_INTERRUPTED


class RunGone(RunctlError):
    """The run directory vanished, so the run's state can no longer be known."""
