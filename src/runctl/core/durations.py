"""The one duration parser: `90`, `90s`, `15m`, `2h`, `1h30m`, `1.5h`, at most `MAX_SECONDS`."""

from __future__ import annotations

import math
import re
from typing import Optional

from .errors import UsageError

_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

# No wait, grace or policy needs longer; a bound also keeps 400-digit input from becoming infinity.
MAX_SECONDS = 30 * 86400.0
MAX_TEXT = "30d"


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds for a human duration; a bare number means seconds."""
    total = duration_seconds(text)
    if total is None:
        raise UsageError(
            "invalid %s %s" % (what, shown(text)),
            "use a number of seconds or a value like 90s, 15m, 2h, 1h30m",
        )
    if not within_bounds(total):
        problem = "%s %s is more than the maximum of %s" % (what, shown(text), MAX_TEXT)
        raise UsageError(problem, "use at most %s" % MAX_TEXT)
    return total


def duration_seconds(text: object) -> Optional[float]:
    """Seconds for a human duration, unbounded; None when it is not one."""
    raw = str(text).strip().lower()
    pos, total, parts = 0, 0.0, 0
    while pos < len(raw):
        match = _PART.match(raw, pos)
        if not match or (parts and match.group(2) == ""):
            break
        total += float(match.group(1)) * _UNIT[match.group(2)]
        pos, parts = match.end(), parts + 1
    if not raw or pos != len(raw):
        return None
    return total


def within_bounds(seconds: float) -> bool:
    """A finite duration no longer than `MAX_SECONDS` (the sign is the caller's rule)."""
    return math.isfinite(seconds) and abs(seconds) <= MAX_SECONDS


def shown(value: object, limit: int = 24) -> str:
    """`repr(value)` cut short, so a 400-digit input does not become a 400-character error line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_duration(seconds: float) -> str:
    """Short human form used in tables and messages: 45s, 12m05s, 3h02m."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return "%.1fs" % seconds if seconds < 10 else "%ds" % int(seconds)
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return "%dm%02ds" % (minutes, secs)
    hours, minutes = divmod(minutes, 60)
    return "%dh%02dm" % (hours, minutes)
