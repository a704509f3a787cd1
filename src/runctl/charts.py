"""Chart math shared by the static report, the terminal sparkline and the dashboard: pure functions.

A metric series is a list of (x, y) points. Points whose x or y is not a finite number (NaN, inf,
None, a string) are dropped by `finite_points`; everything after that assumes finite floats.
Downsampling keeps each bucket's minimum and maximum, so a spike or a dip never disappears from a
chart of a million points; smoothing is TensorBoard's exponential moving average with its debias,
so a smoothed curve starts at the first value instead of rising from zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

Point = tuple[float, float]

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return number if math.isfinite(number) else None


def finite_points(pairs: Iterable[tuple[object, object]]) -> list[Point]:
    """The pairs whose x and y are both finite numbers (bools are not numbers here), as floats."""
    points = []
    for x, y in pairs:
        fx, fy = _finite(x), _finite(y)
        if fx is not None and fy is not None:
            points.append((fx, fy))
    return points


def _buckets(count: int, width: int) -> list[tuple[int, int]]:
    """`width` contiguous [start, end) index ranges covering range(count), sizes differing by at most one."""
    return [(count * n // width, count * (n + 1) // width) for n in range(width)]


def downsample(points: Sequence[Point], width: int) -> list[Point]:
    """At most about 2 × `width` points drawing the same picture: in each of `width` buckets (by
    index) its lowest and highest point, in their order; the first and last points are always kept.
    A series that already fits is returned as it is."""
    if width < 1:
        raise ValueError("width must be at least 1, got %r" % width)
    if len(points) <= 2 * width:
        return list(points)
    kept: list[int] = [0]
    for start, end in _buckets(len(points), width):
        if start == end:
            continue
        low = min(range(start, end), key=lambda n: points[n][1])
        high = max(range(start, end), key=lambda n: points[n][1])
        for index in sorted({low, high}):
            if index != kept[-1]:
                kept.append(index)
    if kept[-1] != len(points) - 1:
        kept.append(len(points) - 1)
    return [points[n] for n in kept]


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average divided by its debias (1 - weight^n),
    so the first smoothed value is the first value. Non-finite values pass through unchanged and do
    not move the average; a constant series is returned as it is (no rounding drift)."""
    if not 0.0 <= weight < 1.0:  # NaN fails this too
        raise ValueError("smoothing weight must be at least 0 and below 1, got %r" % weight)
    finite = [v for v in values if math.isfinite(v)]
    if not finite or all(v == finite[0] for v in finite):
        return list(values)
    out: list[float] = []
    last, count = 0.0, 0
    for value in values:
        if not math.isfinite(value):
            out.append(value)
            continue
        last = last * weight + (1.0 - weight) * value
        count += 1
        out.append(last / (1.0 - weight**count))
    return out


def _nice(span: float, round_it: bool) -> float:
    """A 1, 2 or 5 times a power of ten near `span` (Heckbert's "nice numbers")."""
    exponent = math.floor(math.log10(span))
    fraction = span / 10**exponent
    if round_it:
        nice = 1.0 if fraction < 1.5 else 2.0 if fraction < 3.0 else 5.0 if fraction < 7.0 else 10.0
    else:
        nice = 1.0 if fraction <= 1.0 else 2.0 if fraction <= 2.0 else 5.0 if fraction <= 5.0 else 10.0
    return nice * 10**exponent


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [low, high] (the first <= low, the last >= high).

    An empty range (a constant series) is widened around its value, so it still gets an axis."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("tick range must be finite, got %r..%r" % (low, high))
    if count < 2:
        raise ValueError("count must be at least 2, got %r" % count)
    if low > high:
        low, high = high, low
    if low == high:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    if not math.isfinite(high - low) or not math.isfinite(low - (high - low)):
        return [low, high]  # near the float limit: no room for round ticks beyond the values
    step = _nice(_nice(high - low, False) / (count - 1), True)
    first = math.floor(low / step) * step
    last = math.ceil(high / step) * step
    ticks = []
    n = 0
    while True:
        value = first + n * step
        # Round off binary noise (0.30000000000000004) at a precision the step itself sets.
        ticks.append(round(value, max(0, -math.floor(math.log10(step)) + 1)))
        if value >= last - step * 1e-9:
            break
        n += 1
    return ticks


def format_tick(value: float) -> str:
    """A tick label: short, without trailing zeros or binary noise (0.3, 1e-05, 2.5k)."""
    if value == 0:
        return "0"
    if abs(value) >= 1e4 and float(value).is_integer():
        for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= size:
                return ("%.3g" % (value / size)) + suffix
    return "%.4g" % value


class Frame:
    """Maps data coordinates onto an SVG box (y grows downwards in SVG)."""

    def __init__(
        self,
        x_range: tuple[float, float],
        y_range: tuple[float, float],
        box: tuple[float, float, float, float],
    ) -> None:
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        self.left, self.top, self.width, self.height = box

    @staticmethod
    def _share(value: float, low: float, high: float) -> float:
        """Where `value` lies between low (0) and high (1), 0.5 for an empty range; halved first, so
        values near the float limit do not overflow."""
        span = high / 2 - low / 2
        return 0.5 if span == 0 else (value / 2 - low / 2) / span

    def x(self, value: float) -> float:
        return self.left + self._share(value, self.x0, self.x1) * self.width

    def y(self, value: float) -> float:
        return self.top + self.height - self._share(value, self.y0, self.y1) * self.height


def svg_path(points: Sequence[Point], frame: Frame) -> str:
    """The `d` attribute of a polyline through `points`: "M x,y L x,y ..." (one command per point)."""
    parts = []
    for n, (x, y) in enumerate(points):
        parts.append("%s%.2f,%.2f" % ("M" if n == 0 else "L", frame.x(x), frame.y(y)))
    return " ".join(parts)


def sparkline(values: Sequence[float], width: int) -> str:
    """One block character (▁..█) per bucket of the finite `values`, at most `width` of them: each
    bucket's mean, scaled between the lowest and highest mean. A constant series is a flat middle line."""
    if width < 1:
        raise ValueError("width must be at least 1, got %r" % width)
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    if len(finite) > width:
        finite = [sum(finite[s:e]) / (e - s) for s, e in _buckets(len(finite), width)]
    low, high = min(finite), max(finite)
    if high == low:
        return SPARK_BLOCKS[len(SPARK_BLOCKS) // 2 - 1] * len(finite)
    top = len(SPARK_BLOCKS) - 1
    return "".join(SPARK_BLOCKS[round((v - low) / (high - low) * top)] for v in finite)


# Keys of a metrics record that are positions or bookkeeping, not metrics to chart.
NOT_METRICS = frozenset({"t", "step", "epoch", "epoch_progress", "total_epochs", "total_steps", "source"})


Carried = dict[str, list[tuple[object, float | None]]]


def carry(records: Iterable[dict[str, object]], into: Carried | None = None) -> Carried:
    """Each numeric metric of the records as (step, finite value or None) pairs, appended to `into`:
    a live series (the dashboard) carries each new batch of records once, never the whole run again."""
    carried: Carried = {} if into is None else into
    for record in records:
        step = record.get("step")
        for key, value in record.items():
            if type(value) in (int, float) and key not in NOT_METRICS:  # JSON numbers; bools are not metrics
                carried.setdefault(key, []).append((step, _finite(value)))
    return carried


def series_of(pairs: Sequence[tuple[object, float | None]]) -> tuple[str, list[Point]]:
    """One carried metric as (x label, finite points): x is the reported step when every report of
    the metric has one, else the report's number (1, 2, ...)."""
    steps = [_finite(step) for step, _ in pairs]
    if all(x is not None for x in steps):
        return "step", [(x, y) for x, (_, y) in zip(steps, pairs, strict=True) if x is not None and y is not None]
    return "report", [(float(n), y) for n, (_, y) in enumerate(pairs, 1) if y is not None]


def metric_series(records: Sequence[dict[str, object]]) -> dict[str, tuple[str, list[Point]]]:
    """Each numeric metric of the records (metrics.jsonl) as (x label, finite points), `loss` first
    (see `series_of`). One pass over the records (about 3 s of CPU for a million of them, each with
    three metrics); an integer too large for a float is left out."""
    carried = carry(records)
    names = sorted(carried, key=lambda name: (name != "loss", name))
    return {name: series_of(carried[name]) for name in names}
