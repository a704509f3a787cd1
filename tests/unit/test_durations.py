"""runctl.core.durations: the one parser for --timeout, --max-duration, --hang-timeout."""

from __future__ import annotations

import pytest

from runctl.core.durations import format_duration, parse_duration
from runctl.core.errors import EXIT_USAGE, UsageError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("1d", 86400.0),
        ("2m30s", 150.0),
        ("0.5", 0.5),
        ("15M", 900.0),
        (" 15m ", 900.0),
        ("\t2h\n", 7200.0),
    ],
)
def test_parse_accepts_documented_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_accepts_a_number() -> None:
    assert parse_duration(90) == 90.0  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", "   ", "abc", "5x", "-1", "1h2", "h", "1.h", "1h-30m", "nan", "inf", "1,5h"])
def test_parse_rejects_malformed_values_with_a_hint(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_duration(text)
    error = info.value
    assert error.exit_code == EXIT_USAGE == 2
    assert repr(text) in error.message
    assert error.hint and "90s" in error.hint and "15m" in error.hint


def test_parse_error_names_the_option() -> None:
    with pytest.raises(UsageError) as info:
        parse_duration("soon", what="--max-duration")
    assert "--max-duration" in info.value.message
    assert "'soon'" in info.value.message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0.0s"),
        (5, "5.0s"),
        (45, "45s"),
        (60, "1m00s"),
        (725, "12m05s"),
        (3600, "1h00m"),
        (10920, "3h02m"),
        (90061, "25h01m"),
        (-3, "0.0s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["45s", "12m05s", "3h02m"])
def test_format_is_readable_back_where_it_has_no_fraction(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize("text", ["31d", "1" * 400, "721h", "2592001"])
def test_parse_refuses_more_than_the_maximum(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_duration(text, what="--timeout")
    assert "--timeout" in info.value.message and "maximum of 30d" in info.value.message
    assert len(info.value.message) < 80, "a 400-digit input is cut short in the message"


def test_parse_accepts_the_maximum() -> None:
    assert parse_duration("30d") == parse_duration("720h") == 30 * 86400.0
