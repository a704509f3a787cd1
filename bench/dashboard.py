"""`runctl dashboard` in real Chromium: how fast a metric shows, how fast the runs page renders, how fast Stop stops.

    .venv/bin/python bench/dashboard.py [--json] [--reps N] [--runs N]

A real `runctl dashboard` process and real local runs, driven through Playwright (system Chromium).

1. A metric written by the script (`runctl.training.report`, its record's `t`) -> the run page's
   chart holding that point (a MutationObserver on the chart's point count, same clock): median and
   worst over the reports of --reps seconds of a run reporting every 0.2 s. Beside it: the same
   metric seen by the obvious alternative, `runctl runs status -o json` run in a loop. Target <= 1 s.
2. The runs page with --runs runs (default 200) in the store: navigation -> every row rendered, and
   the dashboard server's RSS after it. Beside it: `runctl runs list --all -o json` (the CLI listing
   the same store) and its peak RSS. Target: first render <= 1 s (RSS: no target, shown).
3. Stop clicked (and confirmed) on the run page -> the script's process group gone, for a script that
   calls should_stop() every 0.05 s. Beside it: `runctl runs stop ID --no-wait`. Target <= 1.5 s.

The store's other runs are copies of one real run's record under new ids (a finished run's row is
all the runs page reads of it), so 200 runs need not be started one by one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
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
    read_json,
    report,
    require_runctl,
)

CHROMIUM = "/usr/bin/chromium"
SCRIPT = """
import sys, time
from runctl import training as rt
step = 0
while True:
    step += 1
    rt.report(step=step, epoch=1, loss=1.0 / step)
    for _ in range(4):
        if rt.should_stop():
            (rt.checkpoint_dir() / "last.txt").write_text(str(step))
            sys.exit(0)
        time.sleep(0.05)
"""

WATCH_POINTS = """
() => {
  window.__seen = [];
  const chart = document.getElementById("chart");
  const note = () => window.__seen.push([Date.now() / 1000, Number(chart.dataset.points || 0)]);
  new MutationObserver(note).observe(chart, {attributes: true, attributeFilter: ["data-points"]});
  note();
}
"""


def start_run(env: dict[str, str], project: Path) -> tuple[str, int]:
    """A new run of SCRIPT: (run id, its process group), once it has reported."""
    proc = subprocess.run(
        [RUNCTL, "local", "train", "s.py", "--python", PY, "-o", "json"],
        env=env, cwd=project, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    check(proc, "local train")
    run_id = json.loads(proc.stdout)["run_id"]
    status = project / ".runctl" / "runs" / run_id / "status.json"
    deadline = time.monotonic() + 30
    while not read_json(status).get("step") and time.monotonic() < deadline:
        time.sleep(0.05)
    return run_id, int(read_json(status)["pid"])


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def wait_gone(pgid: int, since: float, timeout: float = 60) -> float:
    while not group_gone(pgid):
        if time.monotonic() - since > timeout:
            raise SystemExit("process group %d still there after %ds" % (pgid, timeout))
        time.sleep(0.005)
    return time.monotonic() - since


def rss_mb(pid: int) -> float:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb(argv: list[str], env: dict[str, str]) -> float:
    """The peak RSS of `argv` alone (measured by a fresh interpreter that has no other child)."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], capture_output=True, check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    proc = subprocess.run([PY, "-c", probe, *argv], env=env, capture_output=True, text=True)
    check(proc, "runs list (RSS)")
    return int(proc.stdout.strip()) / 1024


def clone_runs(home: Path, run_id: str, count: int) -> None:
    """`count` more finished runs in the store: the record of `run_id` under new ids."""
    import sqlite3

    db = sqlite3.connect(str(home / "runctl.db"))
    columns = [r[1] for r in db.execute("PRAGMA table_info(runs)")]
    row = dict(zip(columns, db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone(), strict=True))
    with db:
        for n in range(count):
            clone = {
                **row,
                "run_id": uuid.uuid4().hex[:8],
                "name": "clone-%03d" % n,
                "created_at": row["created_at"] - n,
            }
            db.execute(
                "INSERT INTO runs (%s) VALUES (%s)" % (",".join(columns), ",".join("?" * len(columns))),
                [clone[c] for c in columns],
            )
    db.close()


def status_poll_latency(env: dict[str, str], project: Path, run_id: str, seconds: float) -> list[float]:
    """For each step `runs status` first showed: seen time minus the time its report was written."""
    metrics = project / ".runctl" / "runs" / run_id / "metrics.jsonl"
    seen: dict[int, float] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        proc = subprocess.run([RUNCTL, "runs", "status", run_id, "-o", "json"], env=env, capture_output=True, text=True)
        check(proc, "runs status")
        seen.setdefault(int(json.loads(proc.stdout)["step"]), time.time())
    written = {int(r["step"]): float(r["t"]) for r in map(json.loads, metrics.read_text().splitlines())}
    return [at - written[step] for step, at in seen.items() if step in written]


def main() -> int:
    parser = arguments(__doc__ or "", "seconds of reports watched (1), page loads (2) and stops (3)")
    parser.add_argument("--runs", type=int, default=200, help="runs in the store for the runs page")
    args = parser.parse_args()
    require_runctl()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="runctl-bench-dash-") as tmp:
        root = Path(tmp)
        home = root / "home"
        home.mkdir(mode=0o700)
        env = {**os.environ, "RUNCTL_HOME": str(home)}
        project = make_project(root, "proj", SCRIPT)
        header = environment(env)
        dash = subprocess.Popen(
            [RUNCTL, "dashboard", "--port", "0"],
            env=env,
            cwd=project,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert dash.stdout is not None
        url = dash.stdout.readline().strip()
        base = url.split("/?")[0]
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page()
                page.goto(url)

                # 1. metric -> visible
                run_id, pgid = start_run(env, project)
                page.goto("%s/runs/%s" % (base, run_id))
                page.wait_for_selector("#chart svg path.raw")
                page.evaluate(WATCH_POINTS)
                watch_from = time.time()
                time.sleep(max(3, args.reps))
                seen = page.evaluate("window.__seen")
                metrics = project / ".runctl" / "runs" / run_id / "metrics.jsonl"
                written = [float(json.loads(line)["t"]) for line in metrics.read_text().splitlines()]
                lags = []
                for index, t in enumerate(written, 1):
                    if t < watch_from:
                        continue
                    shown = next((at for at, count in seen if count >= index), None)
                    if shown is not None:
                        lags.append(shown - t)
                polled = status_poll_latency(env, project, run_id, max(3, args.reps))

                # 3. Stop -> process group gone (this run), beside `runs stop --no-wait` (a second one)
                stops = []
                for rep in range(args.reps):
                    if rep:
                        run_id, pgid = start_run(env, project)
                        page.goto("%s/runs/%s" % (base, run_id))
                    page.wait_for_selector("#stop:not([hidden])")
                    page.once("dialog", lambda dialog: dialog.accept())
                    clicked = time.monotonic()
                    page.click("#stop")
                    stops.append(wait_gone(pgid, clicked))
                cli_stops = []
                for _ in range(args.reps):
                    other, other_pgid = start_run(env, project)
                    asked = time.monotonic()
                    check(
                        subprocess.run([RUNCTL, "runs", "stop", other, "--no-wait"], env=env, capture_output=True),
                        "stop",
                    )
                    cli_stops.append(wait_gone(other_pgid, asked))

                # 2. runs page with N runs
                have = len(list((project / ".runctl" / "runs").iterdir()))
                clone_runs(home, run_id, max(0, args.runs - have))
                renders = []
                for _ in range(args.reps):
                    started = time.monotonic()
                    page.goto(base + "/")
                    page.locator("#runs tbody tr").nth(args.runs - 1).wait_for()
                    renders.append(time.monotonic() - started)
                server_rss = rss_mb(dash.pid)
                browser.close()
            lists = []
            for _ in range(args.reps):
                started = time.monotonic()
                proc = subprocess.run([RUNCTL, "runs", "list", "--all", "-o", "json"], env=env, capture_output=True)
                lists.append(time.monotonic() - started)
                check(proc, "runs list")
                assert len(json.loads(proc.stdout)) == args.runs
            cli_rss = peak_rss_mb([RUNCTL, "runs", "list", "--all", "-o", "json"], env)
        finally:
            dash.send_signal(signal.SIGINT)
            dash.wait(timeout=10)

    lag_med, lag_max, poll_med = median(lags), max(lags), median(polled)
    render_s, list_s = median(renders), median(lists)
    stop_s, cli_stop_s = median(stops), median(cli_stops)
    rows = [
        make_row(
            "metric written -> in the page's chart", "s", lag_med, "runs status -o json in a loop", poll_med,
            {"ratio": lag_med / poll_med, "worst": lag_max}, 1.0, "worst", lag_max, len(lags),
            {"note": "median of %d reports; worst %.3f s" % (len(lags), lag_max)},
            target_label="<= 1 s (worst)",
        ),
        make_row(
            "runs page, %d runs: first render" % args.runs, "s", render_s, "runs list --all -o json", list_s,
            {"ratio": render_s / list_s}, 1.0, "measured", render_s, args.reps,
            {"server_rss_mb": server_rss, "cli_rss_mb": cli_rss,
             "note": "dashboard server RSS %.0f MB after it; the CLI's peak RSS %.0f MB" % (server_rss, cli_rss)},
        ),
        make_row(
            "Stop clicked -> process group gone", "s", stop_s, "runs stop --no-wait", cli_stop_s,
            {"ratio": stop_s / cli_stop_s}, 1.5, "measured", stop_s, args.reps, {},
        ),
    ]  # fmt: skip
    document: dict[str, Any] = {"environment": header, "rows": rows}

    line = "%-40s %-10s %-30s %-10s %-7s %-16s %s"
    titles = ("measurement", "dashboard", "alternative", "value", "ratio", "target")
    return report(rows, args.json, document, lambda: print_table(header, line, titles, rows, ratio_cells))


if __name__ == "__main__":
    sys.exit(main())
