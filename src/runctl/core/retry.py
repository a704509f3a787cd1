"""The one retry helper: call again after a transient failure, with capped exponential backoff.

Cloud calls that end billing (stop, terminate) must not give up on the first throttled or 5xx
answer; the original system tried once and left instances running. The caller says which errors
are transient; everything else is raised at once, and the last transient error is raised when the
attempts run out, so the caller can tell the user exactly what failed.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")

ATTEMPTS = 6
BASE_SECONDS = 0.25
CAP_SECONDS = 5.0


def delays(attempts: int = ATTEMPTS, base: float = BASE_SECONDS, cap: float = CAP_SECONDS) -> list[float]:
    """The waits between attempts: base, 2*base, 4*base ... capped (attempts - 1 of them)."""
    return [min(cap, base * (2**i)) for i in range(max(0, attempts - 1))]


def retry(
    call: Callable[[], T],
    transient: Callable[[BaseException], bool],
    attempts: int = ATTEMPTS,
    base: float = BASE_SECONDS,
    cap: float = CAP_SECONDS,
    on_retry: Optional[Callable[[int, BaseException, float], None]] = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`call()`, again after each transient failure; `on_retry(attempt, error, delay)` hears each one."""
    waits = delays(attempts, base, cap)
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:
            if not transient(exc) or attempt > len(waits):
                raise
            delay = waits[attempt - 1]
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            sleep(delay)
