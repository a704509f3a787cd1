"""runctl.params: the one policy model that flags and config files both pass through."""

from __future__ import annotations

from pathlib import Path

import pytest

from runctl.core.durations import MAX_SECONDS
from runctl.core.errors import EXIT_USAGE, UsageError
from runctl.core.policies import DEFAULTS
from runctl.params import PolicyParams, from_config, from_flags

CONFIG = Path("/p/runctl.toml")


def test_defaults_are_the_agents_own() -> None:
    defaults = PolicyParams().model_dump()
    defaults.pop("notify")
    assert defaults == {key: DEFAULTS[key] for key in defaults}


def test_only_given_values_come_back() -> None:
    assert from_flags({"hang_timeout": "15m", "stall_polls": None, "auto_stop_loss": 0.0}) == {
        "hang_timeout": 900.0,
        "auto_stop_loss": 0.0,  # 0 is given: it turns a config threshold off
    }
    assert from_config({"max_duration": "2h", "stop_grace": 0}, CONFIG) == {"max_duration": 7200.0, "stop_grace": 0.0}


def test_the_maximum_duration_itself_is_accepted() -> None:
    assert from_flags({"max_duration": "30d"}) == {"max_duration": MAX_SECONDS}


@pytest.mark.parametrize(
    ("key", "flag_value", "toml_value", "problem"),
    [
        ("auto_stop_loss", float("nan"), float("nan"), "must be a finite number, got nan"),
        ("auto_stop_loss", float("inf"), float("inf"), "must be a finite number, got inf"),
        ("auto_stop_patience", 0, 0, "must be between 1 and 1000000, got 0"),
        ("stall_polls", -1, -1, "must be between 1 and 1000000, got -1"),
        ("hang_timeout", "0", 0, "must be more than 0, got"),
        ("hang_timeout", "-5", -5, "must be more than 0, got"),
        ("exit_grace", "-1", -1, "must be 0 or more, got"),
        ("max_duration", "1" * 400, float("inf"), "must be at most 30d, got"),
        ("max_duration", "31d", 31 * 86400, "must be at most 30d, got"),
        ("poll_interval", "soon", "soon", "must be a duration like 90s, 15m or 2h, got 'soon'"),
        ("on_hang", "maybe", "maybe", "must be stop or notify, got 'maybe'"),
        ("on_nan", "", "", "must be stop or ignore, got ''"),
        ("max_cost", 0, 0, "must be more than 0 dollars, got 0"),
        ("max_cost", -5.0, -5.0, "must be more than 0 dollars, got -5.0"),
        ("max_cost", float("nan"), float("nan"), "must be a finite number, got nan"),
        ("max_cost", float("inf"), float("inf"), "must be a finite number, got inf"),
        ("max_cost", "10", "10", "must be a number, got '10'"),
    ],
)
def test_flags_and_config_refuse_alike(key: str, flag_value: object, toml_value: object, problem: str) -> None:
    with pytest.raises(UsageError) as flag_error:
        from_flags({key: flag_value})
    with pytest.raises(UsageError) as config_error:
        from_config({key: toml_value}, CONFIG)
    flag = "--" + key.replace("_", "-")
    assert flag_error.value.exit_code == config_error.value.exit_code == EXIT_USAGE
    assert flag_error.value.message.startswith(flag + " " + problem)
    assert config_error.value.message.startswith("[policies] %s in %s %s" % (key, CONFIG, problem))
    assert flag_error.value.hint and flag in flag_error.value.hint
    assert config_error.value.hint and key in config_error.value.hint


def test_long_input_is_cut_short_in_the_message() -> None:
    with pytest.raises(UsageError) as info:
        from_flags({"max_duration": "9" * 400})
    assert len(info.value.message) < 80


@pytest.mark.parametrize("section", [5, [1], "x", True])
def test_policies_must_be_a_table(section: object) -> None:
    with pytest.raises(UsageError) as info:
        from_config(section, CONFIG)
    assert "must be a table" in info.value.message and str(CONFIG) in info.value.message


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"stop_grace": True}, "duration"),
        ({"auto_stop_patience": True}, "whole number"),
        ({"auto_stop_loss": "0.05"}, "a number"),
        ({"notify": "https://example.com"}, "list of URLs"),
        ({"notify": ["https://example.com", "file:///etc/passwd"]}, "http:// or https://"),
        ({"colour": 1}, "not a known policy"),
    ],
)
def test_config_types_are_not_coerced(section: dict[str, object], problem: str) -> None:
    with pytest.raises(UsageError) as info:
        from_config(section, CONFIG)
    assert problem in info.value.message
