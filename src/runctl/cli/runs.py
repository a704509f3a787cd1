"""`runctl runs`: list, inspect, follow, wait for and stop runs on any host."""

from __future__ import annotations

import sys
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..core import status as st
from ..core.errors import RunGone, UsageError
from . import options as o
from .common import Detached, Output, duration_option, emit_json, exit_with, say, store

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)

if TYPE_CHECKING:
    from ..store import Store

RunId = Annotated[str, typer.Argument(help="Run id or a unique prefix of it")]


@app.command("list")
def list_runs(
    all_runs: Annotated[bool, typer.Option("--all", "-a", help="Include runs that ended more than a day ago")] = False,
    output: o.OutputOpt = Output.text,
) -> None:
    """Active runs and those that ended in the last day."""
    from .. import controller
    from .render import run_table

    db = store()
    runs = [controller.refreshed_or_last_known(db, row) for row in db.list(include_all=all_runs)]
    if output == Output.json:
        emit_json(runs)
    elif runs:
        run_table(runs)
    else:
        say(
            "no runs%s; start one with: runctl local train SCRIPT"
            % ("" if all_runs else " in the last day (--all shows older)")
        )


def _detailed(db: Store, row: dict[str, Any]) -> dict[str, Any]:
    """The run as `runs status` shows it: refreshed from its run dir (wherever the host is), with its
    cost and budget."""
    from .. import controller
    from ..budget import current
    from ..usage import run_cost

    run = controller.refresh(db, row)
    cost = run_cost(db, db.get(row["run_id"]) or row)
    if cost is not None:
        run["cost"] = cost
    budget = current(run)
    if budget is not None:
        run["budget"] = budget
    from ..spotresume import chain_view

    chain = chain_view(db, row)
    if chain is not None:
        run["auto_resume"] = chain
    return run


@app.command()
def status(run_id: RunId, output: o.OutputOpt = Output.text) -> None:
    """Status, progress, and how the run ended (in a terminal, with a loss sparkline)."""
    from .render import loss_sparkline, run_detail

    db = store()
    row = db.resolve(run_id)
    run = _detailed(db, row)
    if output == Output.json:
        emit_json(run)
        return
    if sys.stdout.isatty() and not run.get("warning"):  # a warning: the host did not answer just now
        from ..run_report import TAIL_BYTES, metrics

        line = loss_sparkline(metrics(db.get(row["run_id"]) or row, TAIL_BYTES))
        if line:
            run["loss_sparkline"] = line
    run_detail(run)


@app.command()
def report(
    run_id: RunId,
    html: Annotated[
        str, typer.Option("--html", metavar="FILE", help="Write a self-contained HTML report (charts as inline SVG)")
    ],
) -> None:
    """One HTML file to mail or attach to a PR: summary, how it ended, cost, charts, checkpoints, timeline."""
    from .. import run_report
    from ..report_html import render

    db = store()
    row = db.resolve(run_id)
    target = run_report.check_target(html)
    run = _detailed(db, row)
    run_report.write(target, render(run_report.collect(db, row, run)))
    print(target)


@app.command()
def logs(
    run_id: RunId,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the run ends")] = False,
    tail: Annotated[int | None, typer.Option("--tail", "-n", help="Only the last N lines")] = None,
) -> None:
    """The run's training log (stdout and stderr of the script)."""
    from .. import controller

    db = store()
    row = db.resolve(run_id)
    if tail is not None and tail < 0:
        raise UsageError("--tail must be 0 or more, got %d" % tail)
    if controller.being_launched(row):
        if not follow:
            say("run %s is still being set up (%s); no log yet" % (row["run_id"], row["status"]))
            return
        row = controller.await_launch(db, row, None)
    transport = controller.transport_for(row)
    data = transport.read_file(controller.log_path(row)) or b""
    offset = len(data)  # follow from exactly what was read, so no line falls between the two
    if tail is not None:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-tail:]) if tail else b""
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    if not follow:
        return
    try:
        for kind, payload in transport.follow(row["run_dir"], offset, 0):
            if kind == "log":
                sys.stdout.buffer.write(payload)
                sys.stdout.flush()
            elif kind == "reconnecting":
                say("connection to %s lost; reconnecting..." % row["host"])
            elif kind == "gone":
                controller.record_gone(db, row, payload)
                raise RunGone("the run directory %s is gone; run %s is lost" % (row["run_dir"], row["run_id"]))
            elif kind in ("status", "end"):
                controller.record_state(db, db.get(row["run_id"]) or row, payload)
                if kind == "end":
                    break
    except KeyboardInterrupt:
        raise Detached("stopped following run %s; it keeps going" % row["run_id"]) from None


@app.command()
def wait(
    run_id: RunId,
    timeout: Annotated[str | None, typer.Option("--timeout", help="Give up waiting after DURATION (exit 3)")] = None,
    output: o.OutputOpt = Output.text,
) -> None:
    """Block until the run ends; exit 0 only if it completed."""

    from .waiting import wait_for

    seconds = duration_option(timeout, "--timeout")
    db = store()
    row = db.resolve(run_id)
    exit_with(wait_for(db, row, output, seconds, stream_log=False))


@app.command()
def stop(
    run_id: RunId,
    grace: Annotated[
        float | None,
        typer.Option(
            "--grace",
            help="Seconds the script gets after STOP_TRAINING before SIGTERM (at most 3600); "
            "again on a stopping run, a shorter grace hurries it",
        ),
    ] = None,
    now: Annotated[
        bool, typer.Option("--now", help="--grace 0: SIGTERM at once; on a run already sent SIGTERM, SIGKILL")
    ] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once the stop is requested")] = False,
    output: o.OutputOpt = Output.text,
) -> None:
    """Stop a run gracefully: STOP_TRAINING, then SIGTERM, then SIGKILL to its process group."""
    from .. import controller
    from ..core.stopping import MAX_GRACE
    from .waiting import report_end

    if now and grace is not None:
        raise UsageError("--now and --grace both given", "--now is --grace 0: pass one of them")
    if grace is not None and not 0 <= grace <= MAX_GRACE:  # NaN fails this too
        raise UsageError(
            "--grace must be 0 or more and at most %d seconds (1 h), got %g" % (MAX_GRACE, grace),
            "for example: --grace 60, or --now to stop at once",
        )
    if now:
        grace = 0.0
    db = store()
    row = db.resolve(run_id)
    controller.stop(db, row, grace)
    if no_wait:
        if output == Output.json:
            emit_json(controller.refresh(db, row))
        else:
            say("stop requested for run %s" % row["run_id"])
        return
    if output == Output.text:
        say("stopping run %s (graceful: STOP_TRAINING, then SIGTERM, then SIGKILL)..." % row["run_id"])
    try:
        run = controller.follow(db, row, None, None, on_end_notice=say)
    except KeyboardInterrupt:
        raise Detached(
            "stop requested; run %s is still stopping" % row["run_id"],
            "check it with: runctl runs status %s" % row["run_id"],
        ) from None
    report_end(run, output)
    exit_with(0 if st.is_terminal(run["status"]) else 1)


class SeriesFormat(str, Enum):
    text = "text"
    json = "json"
    csv = "csv"


@app.command()
def metrics(
    run_id: RunId,
    output: Annotated[SeriesFormat, typer.Option("--output", "-o", help="text, json or csv")] = SeriesFormat.text,
) -> None:
    """The run's metric series (metrics.jsonl), one record per report."""
    import csv

    from .. import controller
    from ..core.fsutil import parse_jsonl
    from .common import _jsonable

    db = store()
    row = db.resolve(run_id)
    data = controller.transport_for(row).read_file(controller.metrics_path(row)) or b""
    records = parse_jsonl(data)
    if output == SeriesFormat.json:
        emit_json(records)
        return
    keys = ["t", "step", "epoch", "loss"]
    keys += [*sorted({k for r in records for k in r} - set(keys) - {"source"}), "source"]
    if output == SeriesFormat.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow(_jsonable(record))
        return
    if not records:
        say("no metrics yet for run %s" % row["run_id"])
        return
    from rich.table import Table

    from .render import _console

    table = Table(box=None, header_style="bold", pad_edge=False)
    shown = [k for k in keys if k != "t"]
    for key in shown:
        table.add_column(key.upper())
    for record in records:
        table.add_row(*("" if record.get(k) is None else str(record.get(k)) for k in shown))
    _console().print(table)
