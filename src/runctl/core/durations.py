"""The one duration parser: `90`, `90s`, `15m`, `2h`, `1h30m`, `1.5h`."""

from __future__ import annotations

import re

from .errors import UsageError

_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds for a human duration; a bare number means seconds."""
    raw = str(text).strip().lower()
    pos, total, parts = 0, 0.0, 0
    while pos < len(raw):
        match = _PART.match(raw, pos)
        if not match or (parts and match.group(2) == ""):
            break
        total += float(match.group(1)) * _UNIT[match.group(2)]
        pos, parts = match.end(), parts + 1
    if not raw or pos != len(raw):
        raise UsageError(
            "invalid %s %r" % (what, text),
            "use a number of seconds or a value like 90s, 15m, 2h, 1h30m",
        )
    return total


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
