"""The pure rules of a spot interruption (runctl.core.spot): the notice, the stop that fits it, the token."""

from __future__ import annotations

import calendar

import pytest

from runctl.core import spot

NOON = float(calendar.timegm((2026, 12, 1, 12, 0, 0)))


def test_the_notice_time_is_read_as_utc() -> None:
    assert spot.parse_time("2026-12-01T12:00:00Z") == NOON
    assert spot.parse_time("2026-12-01T12:00:00.250Z") == NOON
    assert spot.parse_time("tomorrow") is None
    assert spot.parse_time(None) is None


def test_a_notice_names_its_action_and_time() -> None:
    notice = spot.parse_notice('{"action": "stop", "time": "2026-12-01T12:00:00Z"}', NOON - 120)
    assert notice == spot.Notice("stop", "2026-12-01T12:00:00Z", NOON)
    assert notice is not None and notice.describe() == (
        "spot interruption notice: EC2 will stop this instance at 2026-12-01T12:00:00Z"
    )


def test_a_notice_whose_time_cannot_be_read_still_stops_within_two_minutes() -> None:
    notice = spot.parse_notice('{"action": "terminate", "time": "soon"}', 1000.0)
    assert notice is not None and notice.at == 1120.0
    assert spot.parse_notice("<html>", 0.0) is None
    assert spot.parse_notice("[1, 2]", 0.0) is None


def test_the_usual_graces_are_kept_when_they_fit_the_two_minutes() -> None:
    plan = spot.stop_plan(NOON, NOON - 120, stop_grace=30, term_grace=10)
    assert (plan.grace, plan.term_grace) == (30, 10)
    # stop, SIGTERM's grace, the final upload and the margin all end before the notice's time
    assert NOON - 120 + plan.grace + plan.term_grace + spot.UPLOAD_RESERVE + spot.MARGIN <= NOON


def test_long_graces_are_cut_so_stop_and_upload_end_before_the_notice_time() -> None:
    now = NOON - 120
    plan = spot.stop_plan(NOON, now, stop_grace=600, term_grace=60, upload_reserve=30, margin=10)
    assert plan.grace == pytest.approx(80 * 2 / 3)
    assert plan.grace + plan.term_grace == pytest.approx(80)
    assert now + plan.grace + plan.term_grace + 30 + 10 == pytest.approx(NOON)


def test_a_notice_read_late_leaves_a_shorter_window() -> None:
    plan = spot.stop_plan(NOON, NOON - 50, stop_grace=30, term_grace=10, upload_reserve=30, margin=10)
    assert plan.grace == pytest.approx(10 * 2 / 3) and plan.grace + plan.term_grace == pytest.approx(10)


def test_a_notice_already_past_signals_at_once() -> None:
    assert spot.stop_plan(NOON, NOON + 5, 30, 10)[:2] == (0.0, 0.0)
    assert spot.stop_plan(NOON, NOON - 20, 30, 10)[:2] == (0.0, 0.0), "less than reserve and margin left"


def test_without_uploads_the_script_may_take_more_of_the_window() -> None:
    with_s3 = spot.stop_plan(NOON, NOON - 120, 600, 60, upload_reserve=30)
    without = spot.stop_plan(NOON, NOON - 120, 600, 60, upload_reserve=0)
    assert without.grace > with_s3.grace


def test_the_final_upload_is_waited_for_until_the_notice_time() -> None:
    assert spot.finish_timeout(NOON, NOON - 40, 630) == 40
    assert spot.finish_timeout(NOON, NOON + 3, 630) == 5.0, "a floor, to record the uploader's last word"
    assert spot.finish_timeout(NOON + 10_000, NOON, 630) == 630


def test_the_token_is_renewed_before_it_lapses() -> None:
    assert spot.token_due(None, 21600, 0.0)
    assert not spot.token_due(100.0, 21600, 100.0 + 21600 - 61)
    assert spot.token_due(100.0, 21600, 100.0 + 21600 - 60)
    assert not spot.token_due(0.0, 10, 8.9) and spot.token_due(0.0, 10, 9.0), "a tenth of a short life"


def test_the_endpoint_is_found_as_the_sdks_find_it() -> None:
    assert spot.endpoint({}) == "http://169.254.169.254"
    assert spot.endpoint({"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6"}) == "http://[fd00:ec2::254]"
    assert spot.endpoint({}, "http://10.0.0.1:81/") == "http://10.0.0.1:81"
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9/"}
    assert spot.endpoint(env, "http://10.0.0.1:81") == "http://127.0.0.1:9", "the variable wins over the file"


def test_spec_settings_fall_back_to_the_documented_defaults() -> None:
    assert spot.settings(None) == {"interval": 5.0, "upload_reserve": 30.0, "margin": 10.0}
    assert spot.settings({"interval": 0.2, "upload_reserve": "x", "margin": -1})["interval"] == 0.2
    assert spot.settings({"interval": 0})["interval"] == 5.0
    defaults = {"interval": 5.0, "upload_reserve": 30.0, "margin": 10.0}
    assert spot.settings({"upload_reserve": "x", "margin": -1}) == defaults
