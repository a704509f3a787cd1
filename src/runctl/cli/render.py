"""Human rendering of runs (text mode). JSON mode never comes through here."""

from __future__ import annotations

import shlex
import sys
import time
from typing import Any

from ..core import status as st
from ..core.durations import format_duration
from ..verdict import end_reason

STYLE = {
    st.COMPLETED: "green",
    st.FAILED: "red",
    st.LOST: "red",
    st.STOPPED: "yellow",
    st.INTERRUPTED: "yellow",
    st.RUNNING: "cyan",
    st.STOPPING: "yellow",
}


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _num(value: Any, fmt: str = "%.4g") -> str:
    if value is None:
        return "-"
    try:
        return fmt % float(value)
    except (TypeError, ValueError):
        return str(value)


def progress(run: dict[str, Any]) -> str:
    parts = []
    if run.get("epoch") is not None:
        epoch = float(run["epoch"])
        shown = "%d" % epoch if epoch == int(epoch) else "%.2f" % epoch
        total = run.get("total_epochs")
        parts.append("epoch %s%s" % (shown, "/%d" % int(float(total)) if total else ""))
    if run.get("step") is not None:
        parts.append("step %s" % _num(run["step"], "%d"))
    if run.get("loss") is not None:
        parts.append("loss %s (min %s)" % (_num(run["loss"]), _num(run.get("min_loss"))))
    for key in ("val_loss", "eval_loss"):
        if run.get(key) is not None:
            parts.append("%s %s" % (key.replace("_", " "), _num(run[key])))
    if run.get("steps_per_sec"):
        parts.append("%s steps/s" % _num(run["steps_per_sec"], "%.3g"))
    if run.get("eta_seconds") is not None and run.get("status") == st.RUNNING:
        parts.append("ETA %s" % format_duration(float(run["eta_seconds"])))
    return " · ".join(parts) or "-"


def elapsed(run: dict[str, Any]) -> str:
    start = run.get("started_at")
    if not start:
        return "-"
    end = run.get("ended_at") or time.time()
    return format_duration(float(end) - float(start))


def status_label(run: dict[str, Any]) -> str:
    return st.label(run["status"], run.get("termination_status"))


def _console():  # type: ignore[no-untyped-def]
    """Pipes get a wide console: run ids and paths are data and must never be truncated."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 250)


def run_detail(run: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    style = STYLE.get(run["status"], "white")
    console.print(
        "[bold]run %s[/bold]  %s  [%s]%s[/%s]" % (run["run_id"], run["name"], style, status_label(run), style)
    )
    for kind, text in end_reason(run):
        if kind == "message":
            console.print("  " + text, markup=False)
        elif kind in ("warning", "notice"):
            console.print("  [yellow]%s:[/yellow] %s" % (kind, text))
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    table.add_row("host", "%s (%s)" % (run["host"], run["provider"]))
    table.add_row("project", run["project_dir"])
    table.add_row("command", shlex.join(run["command"]))
    if run.get("ended_at"):
        table.add_row("started", _when(run["started_at"]))
        table.add_row("ended", "%s  (took %s)" % (_when(run["ended_at"]), elapsed(run)))
    else:
        table.add_row("started", "%s  (running for %s)" % (_when(run["started_at"]), elapsed(run)))
    table.add_row("progress", progress(run))
    if run.get("loss_sparkline"):
        table.add_row("loss curve", run["loss_sparkline"])
    table.add_row("checkpoint", run.get("last_checkpoint") or "-")
    if run.get("checkpoint_s3"):
        from ..checkpoint_s3 import describe as uploads

        table.add_row("s3", uploads(run["checkpoint_s3"]) or "-")
    source = run.get("resumed_from")
    if source:
        origin = "%s/%s" % (source["run_id"], source["name"]) if source.get("run_id") else str(source.get("uri"))
        step = " (step %s)" % source["step"] if source.get("step") is not None else ""
        table.add_row("resumed", "resumed from %s%s" % (origin, step))
    if run.get("auto_resume"):
        from ..spotresume import describe_chain

        table.add_row("auto-resume", describe_chain(run["auto_resume"]))
    table.add_row("pid", str(run.get("pid") or "-"))
    table.add_row("exit code", "-" if run.get("exit_code") is None else str(run["exit_code"]))
    table.add_row("run dir", run["run_dir"])
    if run.get("cost"):
        from ..usage import describe

        table.add_row("cost", describe(run["cost"]))
    if run.get("budget"):
        from .. import budget

        table.add_row("budget", budget.describe(run["budget"], not st.is_terminal(run["status"])))
    console.print(table)


SPARK_POINTS = 400  # the sparkline covers the last this many loss reports
SPARK_WIDTH = 30


def loss_sparkline(records: list[dict[str, Any]]) -> str:
    """`▇▅▃▂▂▁▁  1.81 → 0.0366  (40 reports)` for the latest loss reports, or "" without any."""
    from ..charts import metric_series, sparkline

    found = metric_series(records).get("loss")
    if not found or not found[1]:
        return ""
    values = [y for _, y in found[1]]
    shown = values[-SPARK_POINTS:]
    count = "%s%d report%s" % ("last " if len(values) > len(shown) else "", len(shown), "" if len(shown) == 1 else "s")
    return "%s  %s \u2192 %s  (%s)" % (sparkline(shown, SPARK_WIDTH), _num(shown[0]), _num(shown[-1]), count)


def run_table(runs: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "NAME", "STATUS", "HOST", "PROGRESS", "STARTED", "ELAPSED"):
        table.add_column(column, no_wrap=True, overflow="fold" if column == "PROGRESS" else "ellipsis")
    for run in runs:
        style = STYLE.get(run["status"], "white")
        table.add_row(
            run["run_id"],
            run["name"],
            "[%s]%s[/%s]" % (style, status_label(run), style),
            run["host"],
            progress(run),
            _when(run.get("started_at") or run.get("created_at")),
            elapsed(run),
        )
    _console().print(table)
