"""runctl.charts: downsampling, smoothing, ticks, SVG paths and sparklines, on the edge cases a
real metrics file has (one point, NaN and inf, a constant series, millions of points)."""

from __future__ import annotations

import itertools
import math
import random
import re
import time

import pytest

from runctl import charts
from runctl.charts import Frame, downsample, finite_points, metric_series, nice_ticks, smooth, sparkline, svg_path


def test_finite_points_drop_nan_inf_none_strings_and_bools() -> None:
    pairs = [
        (1, 0.5),
        (2, float("nan")),
        (3, float("inf")),
        (4, None),
        (5, "0.3"),
        (6, True),
        (float("nan"), 1.0),
        (7, 2),
    ]
    assert finite_points(pairs) == [(1.0, 0.5), (7.0, 2.0)]


def test_downsample_leaves_a_series_that_fits() -> None:
    points = [(float(n), float(n % 7)) for n in range(20)]
    assert downsample(points, 10) == points
    assert downsample([(1.0, 2.0)], 1) == [(1.0, 2.0)]
    assert downsample([], 5) == []


def test_downsample_keeps_every_bucket_extreme_first_and_last() -> None:
    rng = random.Random(4)
    points = [(float(n), rng.gauss(0, 1)) for n in range(10_000)]
    points[1234] = (1234.0, 50.0)  # one spike and one dip must survive
    points[8765] = (8765.0, -50.0)
    drawn = downsample(points, 100)
    assert len(drawn) <= 2 * 100 + 2
    assert drawn[0] == points[0] and drawn[-1] == points[-1]
    assert (1234.0, 50.0) in drawn and (8765.0, -50.0) in drawn
    xs = [x for x, _ in drawn]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)  # in order, none twice
    for n in range(100):  # each bucket's own min and max are there
        bucket = points[n * 100 : (n + 1) * 100]
        assert min(bucket, key=lambda p: p[1]) in drawn
        assert max(bucket, key=lambda p: p[1]) in drawn


def test_downsample_of_a_huge_series_is_quick_and_small() -> None:
    points = [(float(n), math.sin(n / 1000)) for n in range(1_000_000)]
    started = time.monotonic()
    drawn = downsample(points, 600)
    assert time.monotonic() - started < 5
    assert 600 <= len(drawn) <= 1202
    assert max(y for _, y in drawn) == pytest.approx(1.0, abs=1e-6)
    assert min(y for _, y in drawn) == pytest.approx(-1.0, abs=1e-6)


def test_downsample_refuses_a_width_below_one() -> None:
    with pytest.raises(ValueError):
        downsample([(0.0, 0.0)] * 5, 0)


def test_smooth_matches_tensorboard_debiased_ema() -> None:
    values = [10.0, 0.0, 0.0, 0.0]
    out = smooth(values, 0.5)
    # by hand: last = 5, 2.5, 1.25, 0.625; debias 0.5, 0.75, 0.875, 0.9375
    assert out == pytest.approx([10.0, 2.5 / 0.75, 1.25 / 0.875, 0.625 / 0.9375])
    assert out[0] == values[0]  # debiased: no ramp up from zero


def test_smooth_weight_zero_is_identity_and_bad_weights_are_refused() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0]
    assert smooth(values, 0.0) == values
    for weight in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError):
            smooth(values, weight)


def test_smooth_passes_non_finite_through_without_moving_the_average() -> None:
    out = smooth([1.0, float("nan"), 3.0, float("inf")], 0.6)
    with_gap = smooth([1.0, 3.0], 0.6)
    assert math.isnan(out[1]) and out[3] == float("inf")
    assert [out[0], out[2]] == pytest.approx(with_gap)


def test_smooth_constant_series_stays_exact() -> None:
    assert smooth([0.1] * 1000, 0.99) == [0.1] * 1000
    assert smooth([], 0.6) == []
    assert smooth([2.5], 0.9) == [2.5]


@pytest.mark.parametrize(
    ("low", "high"),
    [(0.0, 1.0), (0.0366, 1.81), (-3.2, 7.9), (1e-7, 3e-6), (0.0, 123456.0), (99.5, 100.25), (-1e9, 1e9)],
)
def test_nice_ticks_cover_the_range_with_round_even_steps(low: float, high: float) -> None:
    ticks = nice_ticks(low, high, 5)
    assert ticks[0] <= low and ticks[-1] >= high
    assert 3 <= len(ticks) <= 12
    steps = [b - a for a, b in itertools.pairwise(ticks)]
    assert all(s == pytest.approx(steps[0], rel=1e-9) for s in steps)
    mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]))
    assert round(mantissa, 6) in (1.0, 2.0, 5.0)
    assert all(len(repr(t)) < 14 for t in ticks)  # no 0.30000000000000004


def test_nice_ticks_of_a_constant_or_reversed_range() -> None:
    ticks = nice_ticks(0.5, 0.5)
    assert ticks[0] < 0.5 < ticks[-1]
    zero = nice_ticks(0.0, 0.0)
    assert zero[0] < 0 < zero[-1]
    assert nice_ticks(5.0, 1.0) == nice_ticks(1.0, 5.0)
    with pytest.raises(ValueError):
        nice_ticks(0.0, float("inf"))
    assert nice_ticks(-1e308, 1e308) == [-1e308, 1e308]  # no overflow at the float limit


def test_values_at_the_float_limit_still_draw() -> None:
    frame = Frame((0.0, 1.0), (-1.7e308, 1.7e308), (0, 0, 100, 100))
    assert svg_path([(0.0, -1.7e308), (1.0, 1.7e308)], frame) == "M0.00,100.00 L100.00,0.00"


def test_format_tick() -> None:
    assert charts.format_tick(0) == "0"
    assert charts.format_tick(0.30000000000000004) == "0.3"
    assert charts.format_tick(25000.0) == "25k"
    assert charts.format_tick(3_000_000.0) == "3M"
    assert charts.format_tick(1e-5) == "1e-05"


def test_svg_path_one_command_per_point_inside_the_box() -> None:
    frame = Frame((0.0, 10.0), (0.0, 1.0), (50, 10, 100, 200))
    d = svg_path([(0.0, 0.0), (5.0, 0.5), (10.0, 1.0)], frame)
    assert d == "M50.00,210.00 L100.00,110.00 L150.00,10.00"  # y grows downwards
    assert svg_path([], frame) == ""


def test_svg_path_of_one_point_or_a_flat_range_is_centred() -> None:
    frame = Frame((3.0, 3.0), (2.0, 2.0), (0, 0, 100, 50))
    assert svg_path([(3.0, 2.0)], frame) == "M50.00,25.00"


def test_sparkline_scales_and_downsamples() -> None:
    assert sparkline([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], 8) == "▁▂▃▄▅▆▇█"
    long = sparkline([float(n) for n in range(10_000)], 30)
    assert len(long) == 30 and long[0] == "▁" and long[-1] == "█"
    assert list(long) == sorted(long)


def test_sparkline_edge_cases() -> None:
    assert sparkline([], 10) == ""
    assert sparkline([float("nan"), float("inf")], 10) == ""
    assert sparkline([0.7] * 5, 10) == "▄▄▄▄▄"  # constant: a flat line in the middle
    assert sparkline([0.7], 10) == "▄"
    assert sparkline([1.0, float("nan"), 3.0], 10) == "▁█"
    with pytest.raises(ValueError):
        sparkline([1.0], 0)


def test_metric_series_loss_first_by_step_else_by_report() -> None:
    records = [
        {"t": 1.0, "step": 1, "epoch": 1, "loss": 2.0, "accuracy": 0.1, "source": "report", "note": "x"},
        {"t": 2.0, "step": 2, "epoch": 1, "loss": float("nan"), "accuracy": 0.2, "flag": True},
        {"t": 3.0, "loss": 1.0, "val_loss": 1.5},
    ]
    series = metric_series(records)
    assert list(series) == ["loss", "accuracy", "val_loss"]  # no t/step/epoch/source, strings or bools
    assert series["loss"] == ("report", [(1.0, 2.0), (3.0, 1.0)])  # one loss record has no step
    assert series["accuracy"] == ("step", [(1.0, 0.1), (2.0, 0.2)])
    assert series["val_loss"] == ("report", [(1.0, 1.5)])
    assert metric_series([]) == {}
    # An integer too large for a float is not drawn; an all-NaN metric is listed with no points.
    odd = metric_series([{"step": 1, "loss": 10**400, "gn": float("nan")}, {"step": 2, "loss": 3}])
    assert odd == {"loss": ("step", [(2.0, 3.0)]), "gn": ("step", [])}


def test_metric_series_is_a_cheap_pass_over_many_records() -> None:
    records = [{"step": n, "loss": 1 / (n + 1)} for n in range(200_000)]
    started = time.monotonic()
    series = metric_series(records)
    assert time.monotonic() - started < 5
    assert len(series["loss"][1]) == 200_000
    assert re.fullmatch(r"[▁-█]+", sparkline([y for _, y in series["loss"][1]], 30))
