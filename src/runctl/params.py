"""The one model of a run's stop policies: CLI flags and `[policies]` in config files both pass through it.

So a value is refused the same way, with the same words, wherever it was written; only the place
named in the message differs (`--hang-timeout` or `[policies] hang_timeout in FILE`). The defaults
are the agent's own (`core.policies.DEFAULTS`, stdlib, shipped to hosts), so each number lives in
one place. This module imports pydantic: commands import it in their body, never at startup.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Optional
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from .core.durations import MAX_SECONDS, MAX_TEXT, duration_seconds, shown
from .core.errors import UsageError
from .core.policies import DEFAULTS, NOTIFY, STOP
from .core.stopping import MAX_GRACE

MAX_COUNT = 1_000_000
IGNORE = "ignore"
CHOICES = {"on_hang": (STOP, NOTIFY), "on_nan": (STOP, IGNORE)}
# A valid value of each key, as a flag value and as TOML, for the hint under an error.
EXAMPLES = {
    "auto_stop_loss": ("0.05", "0.05"),
    "auto_stop_patience": ("3", "3"),
    "exit_grace": ("60s", '"60s"'),
    "stall_polls": ("3", "3"),
    "poll_interval": ("5s", '"5s"'),
    "hang_timeout": ("20m", '"20m"'),
    "on_hang": ("notify", '"notify"'),
    "max_duration": ("6h", '"6h"'),
    "on_nan": ("ignore", '"ignore"'),
    "stop_grace": ("30s", '"30s"'),
    "notify": ("https://hooks.slack.com/services/...", '["https://hooks.slack.com/services/..."]'),
}


def _refuse(problem: str) -> PydanticCustomError:
    return PydanticCustomError("runctl", "{problem}", {"problem": problem})


def _number(value: Any) -> float:
    """A finite int or float; bools and strings are not numbers here, whatever pydantic would coerce."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _refuse("must be a number, got %s" % shown(value))
    if not math.isfinite(value):
        raise _refuse("must be a finite number, got %s" % value)
    return float(value)


def _seconds(value: Any, allow_zero: bool) -> float:
    """A duration (text like `15m`, or a number of seconds), finite and at most MAX_SECONDS."""
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        parsed = duration_seconds(text[1:] if sign < 0 else text)
        if parsed is None:
            raise _refuse("must be a duration like 90s, 15m or 2h, got %s" % shown(value))
        seconds = sign * parsed
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise _refuse("must be a duration like 90s, 15m or 2h, got %s" % shown(value))
    else:
        seconds = float(value)
    if seconds > MAX_SECONDS:
        raise _refuse("must be at most %s, got %s" % (MAX_TEXT, shown(value)))
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise _refuse("must be %s, got %s" % ("0 or more" if allow_zero else "more than 0", shown(value)))
    return seconds


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse("must be a whole number, got %s" % shown(value))
    if not 1 <= value <= MAX_COUNT:
        raise _refuse("must be between 1 and %d, got %s" % (MAX_COUNT, shown(value)))
    return value


def _url(value: Any) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
        raise _refuse("must be an http:// or https:// URL, got %s" % shown(value, 48))
    return str(value)


class PolicyParams(BaseModel):
    """Stop policies and notification hooks of a run, as the agent applies them."""

    model_config = ConfigDict(extra="forbid")

    auto_stop_loss: Optional[float] = DEFAULTS["auto_stop_loss"]
    auto_stop_patience: int = DEFAULTS["auto_stop_patience"]
    exit_grace: float = DEFAULTS["exit_grace"]
    stall_polls: int = DEFAULTS["stall_polls"]
    poll_interval: float = DEFAULTS["poll_interval"]
    hang_timeout: Optional[float] = DEFAULTS["hang_timeout"]
    on_hang: Literal["stop", "notify"] = DEFAULTS["on_hang"]
    max_duration: Optional[float] = DEFAULTS["max_duration"]
    on_nan: Literal["stop", "ignore"] = DEFAULTS["on_nan"]
    stop_grace: float = DEFAULTS["stop_grace"]
    notify: list[str] = Field(default_factory=list)

    @field_validator("auto_stop_loss", mode="before")
    @classmethod
    def _loss(cls, value: Any) -> float:
        return _number(value)  # 0 or negative is valid: it turns the threshold off

    @field_validator("auto_stop_patience", "stall_polls", mode="before")
    @classmethod
    def _counts(cls, value: Any) -> int:
        return _count(value)

    @field_validator("exit_grace", "stop_grace", mode="before")
    @classmethod
    def _graces(cls, value: Any, info: ValidationInfo) -> float:
        seconds = _seconds(value, allow_zero=True)
        if info.field_name == "stop_grace" and seconds > MAX_GRACE:
            raise _refuse("must be at most 1h (the agent's cap on any grace), got %s" % shown(value))
        return seconds

    @field_validator("poll_interval", "hang_timeout", "max_duration", mode="before")
    @classmethod
    def _periods(cls, value: Any) -> float:
        return _seconds(value, allow_zero=False)

    @field_validator("on_hang", "on_nan", mode="before")
    @classmethod
    def _choices(cls, value: Any, info: ValidationInfo) -> str:
        allowed = CHOICES[str(info.field_name)]
        if value not in allowed:
            raise _refuse("must be %s, got %s" % (" or ".join(allowed), shown(value)))
        return str(value)

    @field_validator("notify", mode="before")
    @classmethod
    def _hooks(cls, value: Any) -> list[str]:
        if not isinstance(value, list):
            raise _refuse("must be a list of URLs, got %s" % shown(value))
        return [_url(item) for item in value]


POLICY_KEYS = tuple(PolicyParams.model_fields)


def _validated(values: dict[str, Any]) -> tuple[dict[str, Any], Optional[tuple[str, str]]]:
    """(the given values, validated) or ({}, (key, problem)) for the first bad one."""
    try:
        return PolicyParams(**values).model_dump(exclude_unset=True), None
    except ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        problem = "is not a known policy" if first["type"] == "extra_forbidden" else first["msg"]
        return {}, (key, problem)


def from_flags(values: dict[str, Any]) -> dict[str, Any]:
    """The policy flags that were given (None = not given, so a config file may fill it), validated."""
    checked, error = _validated({k: v for k, v in values.items() if v is not None})
    if error:
        key, problem = error
        flag = "--" + key.replace("_", "-")
        raise UsageError("%s %s" % (flag, problem), "for example: %s %s" % (flag, EXAMPLES[key][0]))
    return checked


def from_config(section: Any, path: Path) -> dict[str, Any]:
    """`[policies]` of one config file, validated; errors name the file and the key."""
    if not isinstance(section, dict):
        raise UsageError(
            "[policies] in %s must be a table, got %s" % (path, shown(section)),
            "write it as a [policies] section of key = value lines",
        )
    checked, error = _validated(section)
    if error:
        key, problem = error
        if key in EXAMPLES:
            hint = "for example: %s = %s, or remove the line" % (key, EXAMPLES[key][1])
        else:
            hint = "known policies: %s" % ", ".join(POLICY_KEYS)
        raise UsageError("[policies] %s in %s %s" % (key, path, problem), hint)
    return checked
