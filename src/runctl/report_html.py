"""The HTML of `runctl runs report`: one self-contained file, readable without scripts or network.

Styles are inline, charts are inline SVG (paths from runctl.charts), and nothing is fetched: the
file can be mailed or attached to a pull request as it is. Every value that comes from the run
(names, commands, metric names, log lines, event details) is hostile and goes through `esc`.
"""

from __future__ import annotations

import html
import json
import math
import re
import shlex
import time
from typing import Any

from . import charts, verdict
from .core import status as st
from .core.durations import format_duration

SMOOTHING = 0.6  # TensorBoard's default weight
LOSS_SIZE = (760, 300)
SMALL_SIZE = (360, 170)
MARGIN = (58, 14, 14, 30)  # left, right, top, bottom
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f]")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:0;background:#f6f8fa}
main{max-width:980px;margin:0 auto;padding:24px}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px 20px;margin:0 0 16px}
h1{font-size:22px;margin:0 0 6px}h2{font-size:16px;margin:0 0 10px}
.sub{color:#57606a}.mono,pre,td.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:3px 10px 3px 0;vertical-align:top}
th{color:#57606a;font-weight:600}table.kv th{width:140px}
.badge{display:inline-flex;align-items:center;gap:8px;font-weight:700;font-size:16px;padding:6px 12px;border-radius:6px}
.badge .icon{font-size:18px}
.good{color:#1a7f37;background:#dafbe1}.warn{color:#bc4c00;background:#fff1e5}
.bad{color:#cf222e;background:#ffebe9}.active{color:#0969da;background:#ddf4ff}
.message{margin:8px 0 0;background:none}
.message.good{color:#1a7f37}.message.warn{color:#bc4c00}.message.bad{color:#cf222e}
.note{color:#9a6700}.problem{color:#cf222e}
.charts{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0}figcaption{font-weight:600;margin:0 0 4px;overflow-wrap:anywhere}
svg text{font:11px ui-monospace,Menlo,Consolas,monospace;fill:#57606a}
svg .grid{stroke:#eaeef2}svg .axis{stroke:#8c959f}
svg .raw{fill:none;stroke:#ff7043;stroke-opacity:.35;stroke-width:1}
svg .smoothed{fill:none;stroke:#f4511e;stroke-width:2}svg .dot{fill:#f4511e}
pre{background:#f6f8fa;padding:10px;border-radius:6px;overflow-x:auto;white-space:pre-wrap;overflow-wrap:anywhere;margin:0}
td.when{white-space:nowrap;color:#57606a}
footer{color:#57606a;font-size:12px;text-align:center;padding:8px}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def seconds(value: Any) -> float:
    """An event's or a file's time as a number; 0 for anything else (the run dir is the script's to write)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return float(value)


def _when(t: Any) -> str:
    t = seconds(t)
    if not t or not 0 < t < 253402300800:  # up to year 9999
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _rows(pairs: list[tuple[str, str]]) -> str:
    """Table rows; values are already HTML."""
    return "".join("<tr><th>%s</th><td>%s</td></tr>" % (esc(k), v) for k, v in pairs)


def _td(value: Any, cls: str = "") -> str:
    """One table cell holding `value` as text."""
    return "<td%s>%s</td>" % (" class='%s'" % cls if cls else "", esc(value))


def _table(table_id: str, heads: list[str], rows: list[list[str]]) -> str:
    """A table of `_td` cells under `heads`."""
    head = "".join("<th>%s</th>" % esc(h) for h in heads)
    body = "".join("<tr>%s</tr>" % "".join(cells) for cells in rows)
    return "<table id='%s'><tr>%s</tr>%s</table>" % (table_id, head, body)


def _size(count: Any) -> str:
    try:
        value = float(count)
    except (TypeError, ValueError):
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return ("%d %s" if unit == "B" else "%.1f %s") % (value, unit)
        value /= 1000
    return "-"


# ---- charts -------------------------------------------------------------------------------------


def chart(
    name: str, x_label: str, points: list[charts.Point], size: tuple[int, int], smoothing: float = SMOOTHING
) -> str:
    """One metric's SVG: y grid and ticks, x ticks, the raw series faint and the smoothed one over it
    (TensorBoard's weight `smoothing`; the dashboard's slider sets it).

    Both paths carry `data-points` (the series' finite points) and draw at most about two points per
    pixel of width (min and max of each column kept)."""
    width, height = size
    left, right, top, bottom = MARGIN
    plot_w, plot_h = width - left - right, height - top - bottom
    label = "%s by %s" % (name, x_label)
    head = '<svg width="%d" height="%d" viewBox="0 0 %d %d" role="img" data-metric="%s"><title>%s</title>' % (
        width,
        height,
        width,
        height,
        esc(name),
        esc(label),
    )
    if not points:
        return head + '<text x="%d" y="%d">no finite values</text></svg>' % (left, top + plot_h // 2)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    y_ticks = charts.nice_ticks(min(ys), max(ys), 5)
    x_lo, x_hi = min(xs), max(xs)
    frame = charts.Frame((x_lo, x_hi), (y_ticks[0], y_ticks[-1]), (left, top, plot_w, plot_h))
    parts = [head]
    for tick in y_ticks:
        y = frame.y(tick)
        parts.append('<line class="grid" x1="%d" x2="%d" y1="%.2f" y2="%.2f"/>' % (left, left + plot_w, y, y))
        parts.append(
            '<text x="%d" y="%.2f" text-anchor="end">%s</text>' % (left - 6, y + 4, esc(charts.format_tick(tick)))
        )
    x_ticks = [x_lo] if x_lo == x_hi else [t for t in charts.nice_ticks(x_lo, x_hi, 6) if x_lo <= t <= x_hi]
    base = top + plot_h
    parts.append('<line class="axis" x1="%d" x2="%d" y1="%d" y2="%d"/>' % (left, left + plot_w, base, base))
    for tick in x_ticks:
        x = frame.x(tick)
        parts.append('<line class="axis" x1="%.2f" x2="%.2f" y1="%d" y2="%d"/>' % (x, x, base, base + 4))
        parts.append(
            '<text x="%.2f" y="%d" text-anchor="middle">%s</text>' % (x, base + 16, esc(charts.format_tick(tick)))
        )
    parts.append('<text x="%d" y="%d" text-anchor="end">%s</text>' % (left + plot_w, height - 2, esc(x_label)))
    smoothed = list(zip(xs, charts.smooth(ys, smoothing), strict=True))
    for cls, series in (("raw", points), ("smoothed", smoothed)):
        drawn = charts.downsample(series, plot_w)
        parts.append('<path class="%s" data-points="%d" d="%s"/>' % (cls, len(series), charts.svg_path(drawn, frame)))
    if len(points) == 1:
        parts.append('<circle class="dot" cx="%.2f" cy="%.2f" r="3"/>' % (frame.x(xs[0]), frame.y(ys[0])))
    parts.append("</svg>")
    return "".join(parts)


def _charts_section(records: list[dict[str, Any]]) -> str:
    series = charts.metric_series(records)
    if not series:
        return "<section id='metrics'><h2>Metrics</h2><p class='sub'>No metrics were reported.</p></section>"
    out = ["<section id='metrics'><h2>Metrics</h2>"]
    loss = series.pop("loss", None)
    if loss is not None:
        x_label, points = loss
        summary = ""
        if points:
            ys = [y for _, y in points]
            shown = [charts.format_tick(v) for v in (ys[0], ys[-1], min(ys))]
            summary = " · %d points · first %s, last %s, min %s" % (len(points), shown[0], shown[1], shown[2])
        out.append(
            "<figure id='loss-chart'><figcaption>loss<span class='sub'>%s · smoothed %.1f (TensorBoard-style)</span>"
            "</figcaption>%s</figure>" % (esc(summary), SMOOTHING, chart("loss", x_label, points, LOSS_SIZE))
        )
    else:
        out.append("<p class='sub'>No loss was reported.</p>")
    if series:
        out.append("<div class='charts'>")
        for name, (x_label, points) in series.items():
            out.append(
                "<figure class='metric'><figcaption>%s <span class='sub'>(%d points)</span></figcaption>%s</figure>"
                % (esc(name), len(points), chart(name, x_label, points, SMALL_SIZE))
            )
        out.append("</div>")
    out.append("</section>")
    return "".join(out)


# ---- the other sections -------------------------------------------------------------------------


def _header(run: dict[str, Any]) -> str:
    mark = verdict.badge(run)
    message = (
        "<p class='message %s' id='termination-message'>%s</p>" % (mark.tone, esc(mark.message)) if mark.message else ""
    )
    return (
        "<section id='summary-head'><h1>%s <span class='sub mono'>run %s</span></h1>"
        "<div class='badge %s' id='termination' data-tone='%s'><span class='icon'>%s</span><span>%s</span></div>"
        "%s</section>"
        % (esc(run["name"]), esc(run["run_id"]), mark.tone, mark.tone, esc(mark.icon), esc(mark.label), message)
    )


def _summary(run: dict[str, Any], spec: dict[str, Any]) -> str:
    from .cli.render import progress

    duration = "-"
    if run.get("started_at"):
        end = run.get("ended_at") or time.time()
        duration = format_duration(float(end) - float(run["started_at"])) + ("" if run.get("ended_at") else " so far")
    script = spec.get("script") or (run["command"][1] if len(run["command"]) > 1 else run["command"][0])
    pairs = [
        ("name", esc(run["name"])),
        ("run id", "<span class='mono'>%s</span>" % esc(run["run_id"])),
        ("provider", esc(run["provider"])),
        ("host", esc(run["host"])),
        ("script", "<span class='mono'>%s</span>" % esc(script)),
        ("args", "<span class='mono'>%s</span>" % esc(shlex.join(spec.get("script_args") or []) or "-")),
        ("command", "<span class='mono'>%s</span>" % esc(shlex.join(run["command"]))),
        ("project", "<span class='mono'>%s</span>" % esc(run["project_dir"])),
        ("started", esc(_when(run.get("started_at") or run.get("created_at")))),
        ("ended", esc(_when(run.get("ended_at")))),
        ("duration", esc(duration)),
        ("status", esc(st.label(run["status"], run.get("termination_status")))),
        ("termination", esc(run.get("termination_status") or "-")),
        ("progress", esc(progress(run))),
    ]
    return "<section id='summary'><h2>Summary</h2><table class='kv'>%s</table></section>" % _rows(pairs)


def _end(run: dict[str, Any]) -> str:
    lines = []
    for kind, text in verdict.end_reason(run):
        cls = "note" if kind in ("warning", "notice") else "end-" + kind
        prefix = "%s: " % kind if kind in ("warning", "notice") else ""
        lines.append("<li class='%s'>%s%s</li>" % (cls, esc(prefix), esc(text)))
    title = "How it ended" if st.is_terminal(run["status"]) else "Where it stands"
    return "<section id='end-reason'><h2>%s</h2><ul>%s</ul></section>" % (title, "".join(lines))


def _cost(run: dict[str, Any]) -> str:
    from . import budget
    from .usage import describe

    pairs = []
    if run.get("cost"):
        pairs.append(("cost", esc(describe(run["cost"]))))
        pairs.append(("billed time", esc(format_duration(float(run["cost"].get("billed_seconds") or 0)))))
    if run.get("budget"):
        pairs.append(("budget", esc(budget.describe(run["budget"], not st.is_terminal(run["status"])))))
    if not pairs:
        body = (
            "<p class='sub'>No cost recorded: runctl prices the cloud hosts it runs (%s hosts are not priced).</p>"
            % esc(run["provider"])
        )
    else:
        body = "<table class='kv'>%s</table>" % _rows(pairs)
    return "<section id='cost'><h2>Cost</h2>%s</section>" % body


def _checkpoints(data: dict[str, Any]) -> str:
    out = ["<section id='checkpoints'><h2>Checkpoints</h2>"]
    listing = data.get("checkpoints")
    if listing is not None:
        files = listing.get("files") or []
        out.append("<p>On the host, in <span class='mono'>%s</span>:</p>" % esc(listing.get("checkpoint_dir")))
        if files:
            rows = [
                [
                    _td(f.get("path"), "mono"),
                    _td(_size(f.get("size"))),
                    _td(_when(f.get("mtime")), "when"),
                    _td("this run" if f.get("this_run") else "earlier"),
                ]
                for f in files
            ]
            out.append(_table("checkpoint-files", ["file", "size", "written", ""], rows))
        else:
            out.append("<p class='sub'>none</p>")
    for event in data.get("downloaded") or []:
        out.append(
            "<p>Downloaded %s file(s) to <span class='mono'>%s</span> (%s).</p>"
            % (esc(event.get("files")), esc(event.get("dest")), esc(_when(event.get("t"))))
        )
    s3 = data.get("s3")
    if s3:
        said = s3.get("error") or s3.get("message")
        out.append(
            "<p class='%s'>S3 <span class='mono'>%s</span>: %s verified, %s pending (%s)%s</p>"
            % (
                "problem" if s3.get("error") else "",
                esc(s3.get("uri")),
                esc(s3.get("uploaded") or 0),
                esc(s3.get("pending") or 0),
                esc(s3.get("phase")),
                " &mdash; " + esc(said) if said else "",
            )
        )
        uploads = data.get("s3_uploads") or []
        if uploads:
            rows = [
                [
                    _td(u.get("key") or u.get("name"), "mono"),
                    _td(_size(u.get("size"))),
                    _td(u.get("checksum") or "-", "mono"),
                    _td("\u2714 verified" if u.get("verified") else "not verified"),
                ]
                for u in uploads
            ]
            out.append(_table("s3-files", ["object", "size", "checksum", ""], rows))
    if listing is None and not s3 and not data.get("downloaded"):
        out.append("<p class='sub'>Not known (see the notes below).</p>")
    out.append("</section>")
    return "".join(out)


def _detail(event: dict[str, Any]) -> str:
    parts = []
    for key, value in event.items():
        if key in ("t", "kind", "source") or value is None:
            continue
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        parts.append("%s=%s" % (key, shown))
    text = " ".join(parts)
    return text if len(text) <= 300 else text[:297] + "..."


def _timeline(events: list[dict[str, Any]]) -> str:
    if not events:
        return "<section id='timeline'><h2>Timeline</h2><p class='sub'>No events.</p></section>"
    first = seconds(events[0].get("t"))
    rows = []
    for event in events:
        t = seconds(event.get("t"))
        rows.append(
            [
                _td(_when(t)[11:19], "when"),
                _td("+" + format_duration(t - first), "when"),
                _td(event.get("source")),
                _td(event.get("kind")),
                _td(_detail(event), "mono"),
            ]
        )
    table = _table("timeline-events", ["time (UTC)", "", "by", "event", "details"], rows)
    return "<section id='timeline'><h2>Timeline</h2>%s</section>" % table


def _log(lines: list[str]) -> str:
    if not lines:
        return ""
    text = "\n".join(_CONTROL.sub("", line) for line in lines)
    return "<section id='log'><h2>Last %d log lines</h2><pre>%s</pre></section>" % (len(lines), esc(text))


def render(data: dict[str, Any]) -> str:
    run = data["run"]
    problems = "".join("<li class='problem'>%s</li>" % esc(p) for p in data.get("problems") or [])
    return "".join(
        [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width,initial-scale=1'>",
            "<title>runctl report: %s (%s)</title><style>%s</style></head><body><main>"
            % (esc(run["name"]), esc(run["run_id"]), CSS),
            _header(run),
            _end(run),
            _summary(run, data.get("spec") or {}),
            _charts_section(data.get("metrics") or []),
            _cost(run),
            _checkpoints(data),
            _timeline(data.get("timeline") or []),
            _log(data.get("log_tail") or []),
            "<section id='notes'><h2>Notes</h2><ul>%s</ul></section>" % problems if problems else "",
            "<footer>runctl report, written %s</footer></main></body></html>" % esc(_when(data.get("generated_at"))),
        ]
    )
