"""`runs report --html` and the sparkline of `runs status`, on a run with a long metric series.

    .venv/bin/python bench/report.py [--json] [--reps N] [--records N]

A real local run (this machine), whose metrics.jsonl then holds `--records` reports (default one
million, each with loss, accuracy and lr: about 100 MB, as a long run reporting every step writes).

1. `runctl runs report ID --html FILE`: wall time of the command (a new process: the run refreshed,
   the series read and parsed, charts drawn, the file written), beside `runctl runs metrics ID -o json`
   over the same file (reading and printing the series, nothing drawn). No target in the issue;
   ours: <= 3 x the metrics command, so drawing costs less than reading.
2. The report's size, beside what it would weigh with every point drawn (the same paths without
   downsampling, computed here): the file stays mailable. Target <= 1 MB.
3. `runctl runs status ID` in a terminal (a pty: the sparkline reads the last 2 MiB of metrics.jsonl)
   beside the same command piped (no sparkline). Target: the sparkline adds <= 0.3 s.
"""

from __future__ import annotations

import json
import math
import os
import pty
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    PY,
    RUNCTL,
    arguments,
    check,
    environment,
    make_project,
    make_row,
    median,
    print_table,
    ratio_cells,
    report,
    require_runctl,
)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = "from runctl import training as rt\nrt.report(step=0, loss=2.0)\n"


def timed(argv: list[str], env: dict[str, str], cwd: Path, tty: bool = False) -> float:
    """Wall seconds of `argv`, its stdout a pipe or (tty) a pseudo-terminal."""
    started = time.monotonic()
    if not tty:
        check(subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=600), " ".join(argv[1:3]))
        return time.monotonic() - started
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    try:
        while os.read(master, 65536):
            pass
    except OSError:  # EIO once the other side closed
        pass
    os.close(master)
    if proc.wait(timeout=600) != 0:
        raise SystemExit("%s failed in a terminal" % " ".join(argv[1:3]))
    return time.monotonic() - started


def fill(metrics: Path, records: int) -> None:
    """`records` reports appended to the run's metrics.jsonl, as a script reporting each step writes them."""
    t0 = time.time()
    with open(metrics, "a") as handle:
        for step in range(1, records + 1):
            loss = 2.0 * math.exp(-step / (records / 5)) + 0.05 * math.sin(step / 50)
            line = {"t": t0 + step * 0.01, "source": "report", "step": step, "loss": loss, "accuracy": step / records}
            line["lr"] = 3e-4 * min(1.0, step / 1000)
            handle.write(json.dumps(line) + "\n")


def every_point_size(metrics: Path, html_size: int) -> int:
    """The report's size had every point been drawn: its size plus each path's full length minus the drawn one."""
    sys.path.insert(0, str(REPO / "src"))
    from runctl import charts, report_html
    from runctl.core.fsutil import parse_jsonl

    series = charts.metric_series(parse_jsonl(metrics.read_bytes()))
    extra = 0
    for name, (_, points) in series.items():
        width = (report_html.LOSS_SIZE if name == "loss" else report_html.SMALL_SIZE)[0]
        frame = charts.Frame((0.0, 1.0), (0.0, 1.0), (0, 0, width, 100))
        drawn = charts.downsample(points, width - report_html.MARGIN[0] - report_html.MARGIN[1])
        extra += 2 * (len(charts.svg_path(points, frame)) - len(charts.svg_path(drawn, frame)))  # raw + smoothed
    return html_size + extra


def main() -> int:
    parser = arguments(__doc__ or "", "repetitions of each command")
    parser.add_argument("--records", type=int, default=1_000_000, help="metric reports in the run")
    args = parser.parse_args()
    require_runctl()
    with tempfile.TemporaryDirectory(prefix="runctl-bench-report-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "RUNCTL_HOME": str(root / "home")}
        project = make_project(root, "proj", SCRIPT)
        start = subprocess.run(
            [RUNCTL, "local", "train", "s.py", "--wait", "-o", "json", "--python", PY],
            env=env, cwd=project, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        check(start, "local train")
        run_id = json.loads(start.stdout)["run_id"]
        metrics = project / ".runctl" / "runs" / run_id / "metrics.jsonl"
        fill(metrics, args.records)
        out = root / "report.html"
        report_argv = [RUNCTL, "runs", "report", run_id, "--html", str(out)]
        metrics_argv = [RUNCTL, "runs", "metrics", run_id, "-o", "json"]
        status_argv = [RUNCTL, "runs", "status", run_id]
        made = [timed(report_argv, env, project) for _ in range(args.reps)]
        read = [timed(metrics_argv, env, project) for _ in range(args.reps)]
        in_tty = [timed(status_argv, env, project, tty=True) for _ in range(args.reps)]
        piped = [timed(status_argv, env, project) for _ in range(args.reps)]
        size = out.stat().st_size
        full = every_point_size(metrics, size)
        header = environment(env)
    made_s, read_s, tty_s, piped_s = median(made), median(read), median(in_tty), median(piped)
    n = "%d records" % args.records
    rows = [
        make_row(
            "runs report --html (%s)" % n, "s", made_s, "runs metrics -o json", read_s,
            {"ratio": made_s / read_s}, 3.0, "ratio", made_s / read_s, args.reps, {},
            target_label="<= 3x metrics",
        ),
        make_row(
            "report size (%s)" % n, "MB", size / 1e6, "every point drawn", full / 1e6,
            {"ratio": size / full}, 1.0, "measured", size / 1e6, 1, {},
        ),
        make_row(
            "runs status in a terminal (sparkline)", "s", tty_s, "runs status piped", piped_s,
            {"ratio": tty_s / piped_s, "added": tty_s - piped_s}, 0.3, "added", tty_s - piped_s, args.reps, {},
            target_label="<= 0.3 s added",
        ),
    ]  # fmt: skip
    document: dict[str, Any] = {"environment": header, "rows": rows}

    line = "%-42s %-12s %-22s %-12s %-8s %-16s %s"
    titles = ("measurement", "runctl", "alternative", "value", "ratio", "target")
    return report(rows, args.json, document, lambda: print_table(header, line, titles, rows, ratio_cells))


if __name__ == "__main__":
    sys.exit(main())
