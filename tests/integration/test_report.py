"""`runctl runs report --html` on a real run, opened in real Chromium, and the loss sparkline of
`runs status` in a real terminal (a pty): what a user mails, and what they see at a glance."""

from __future__ import annotations

import json
import math
import os
import pty
import re
import select
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RUNCTL
from tests.support.runs import kill_leftover_runs, run_dir, train_wait, write_script

CHROMIUM = "/usr/bin/chromium"
HOSTILE_NAME = '<b>run</b> & "co" <script>alert(1)</script>'
HOSTILE_METRIC = "<img src=x onerror=alert(1)>"

SCRIPT = (
    """
import math, os, sys, time
from runctl import training as rt

print("starting <b>not bold</b> \\x1b[31mred\\x1b[0m", flush=True)
with open(os.path.join(os.environ["RUNCTL_RUN_DIR"], "events.jsonl"), "a") as events:  # the script's to write
    events.write('{"event": "<i>odd</i>", "t": "soon", "data": [1, {"k": "</td>"}]}\\n')
for step in range(1, 400):
    rt.report(step=step, epoch=1, loss=2.0 * math.exp(-step / 10), total_epochs=1,
              accuracy=step / 400, grad_norm=float("inf") if step == 5 else 1.0 / step,
              **{%r: 0.5})
    if rt.should_stop():
        with rt.atomic_path(rt.checkpoint_dir() / ("checkpoint_step_%%d.pt" %% step)) as tmp:
            tmp.write_text("weights")
        print("saved checkpoint at step %%d" %% step, flush=True)
        sys.exit(0)
    time.sleep(0.02)
"""
    % HOSTILE_METRIC
)


@pytest.fixture(autouse=True)
def no_leftover_runs(project: Path) -> Iterator[None]:
    yield
    kill_leftover_runs(project)


def path_points(d: str) -> int:
    """How many points an SVG path's `d` draws (one M or L command per point, as charts.svg_path writes)."""
    return len(re.findall(r"[ML]-?\d", d))


def in_a_terminal(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 30) -> str:
    """`runctl ARGS` with stdout and stderr on a real pty (80 columns): what a user's terminal shows."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    proc = subprocess.Popen([*RUNCTL, *args], stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, cwd=cwd, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other end is closed
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=5) == 0, b"".join(chunks)
    return re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode("utf-8", "replace"))


def finite_count(records: list[dict[str, Any]], key: str) -> int:
    return sum(1 for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]))


def test_report_of_a_real_run_opens_in_chromium(cli, project: Path, tmp_path: Path, runctl_home: Path) -> None:
    write_script(project, "train.py", SCRIPT)
    code, run = train_wait(cli, "train.py", "--name", HOSTILE_NAME, "--auto-stop-loss", "0.2", "--stop-grace", "20s")
    assert code == 0, run
    assert (run["status"], run["termination_status"]) == ("completed", "auto_low_loss"), run
    run_id = run["run_id"]
    records = [json.loads(line) for line in (run_dir(project, run_id) / "metrics.jsonl").read_text().splitlines()]
    losses = finite_count(records, "loss")
    assert losses >= 20  # loss < 0.2 from step 24 on

    out = tmp_path / "mail" / "report.html"
    out.parent.mkdir()
    result = cli("runs", "report", run_id[:5], "--html", str(out))
    assert result.code == 0, result.err
    assert result.out.strip() == str(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no temp file left beside it
    text = out.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert "<script>alert(1)</script>" not in text and HOSTILE_METRIC not in text

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(java_script_enabled=False)  # it must be readable without scripts
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(out.as_uri())
            assert requests == [out.as_uri()]  # self-contained: nothing else is fetched

            assert page.title() == "runctl report: %s (%s)" % (HOSTILE_NAME, run_id)
            assert page.inner_text("h1").startswith(HOSTILE_NAME)  # shown as text, never as markup
            assert page.locator("script, img, b").count() == 0
            badge = page.locator("#termination")
            assert badge.inner_text().split() == ["\u2714", "Auto-Stopped", "(Low", "Loss)"]
            assert badge.get_attribute("data-tone") == "good"
            assert page.inner_text("#termination-message") == run["termination_message"]
            ended = page.inner_text("#end-reason")
            assert "completed (auto_low_loss)" in ended
            assert run["termination_message"] and run["termination_message"] in ended
            assert "exit code 0" in ended

            raw = page.locator("#loss-chart svg path.raw")
            assert raw.get_attribute("data-points") == str(losses)
            assert path_points(raw.get_attribute("d") or "") == losses
            assert path_points(page.locator("#loss-chart svg path.smoothed").get_attribute("d") or "") == losses
            box = page.locator("#loss-chart svg").bounding_box()
            assert box is not None and box["width"] > 500 and box["height"] > 200

            grad = page.locator("svg[data-metric='grad_norm'] path.raw")
            assert path_points(grad.get_attribute("d") or "") == finite_count(records, "grad_norm") == len(records) - 1
            captions = page.locator("figure.metric figcaption").all_inner_texts()
            assert any(c.startswith(HOSTILE_METRIC + " ") for c in captions), captions
            assert {c.split()[0] for c in captions} >= {"accuracy", "grad_norm"}

            assert "checkpoint_step_" in page.inner_text("#checkpoint-files")
            timeline = page.inner_text("#timeline")
            for kind in ("launched", "started", "exited", "ended"):
                assert kind in timeline
            assert "<i>odd</i>" in timeline and 'data=[1, {"k": "</td>"}]' in timeline
            assert page.locator("#timeline i").count() == 0
            log = page.inner_text("#log")
            assert "starting <b>not bold</b> red" in log and "saved checkpoint at step" in log
            assert "No cost recorded" in page.inner_text("#cost") or "price" in page.inner_text("#cost")
            assert "local" in page.inner_text("#summary")
        finally:
            browser.close()

    # Written again over the old one (atomically), the report is the same run's.
    again = cli("runs", "report", run_id, "--html", str(out))
    assert again.code == 0, again.err
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]

    # A file that cannot be written: two lines, exit 2, nothing left there or beside the old report.
    unwritable = Path("/sys") if os.geteuid() == 0 else tmp_path / "ro"
    if unwritable != Path("/sys"):
        unwritable.mkdir()
        unwritable.chmod(0o500)
    before = sorted(os.listdir(unwritable))
    bad = cli("runs", "report", run_id, "--html", str(unwritable / "report.html"))
    assert bad.code == 2, bad
    assert "cannot write" in bad.err and "Traceback" not in bad.err and len(bad.err.strip().splitlines()) <= 2
    assert sorted(os.listdir(unwritable)) == before and bad.out == ""

    # `runs status` in a terminal: the loss sparkline, first -> last over the reports.
    env = {**os.environ, "RUNCTL_HOME": str(runctl_home), "COLUMNS": "100"}
    shown = in_a_terminal(["runs", "status", run_id], env, project)
    line = next((ln for ln in shown.splitlines() if "loss curve" in ln), None)
    assert line is not None, shown
    spark = re.search(r"([\u2581-\u2588]+)\s+(\S+) \u2192 (\S+)\s+\((\d+) reports?\)", line)
    assert spark, line
    assert spark.group(2) == "%.4g" % records[0]["loss"]
    assert spark.group(3) == "%.4g" % [r for r in records if "loss" in r][-1]["loss"]
    assert int(spark.group(4)) == losses and len(spark.group(1)) == min(losses, 30)
    assert spark.group(1)[0] == "\u2588" and spark.group(1)[-1] == "\u2581"  # a falling loss

    # The sparkline reads only the end of a long metrics file (here: its last line and a cut one).
    from runctl.run_report import metrics
    from runctl.transport.local import LocalTransport

    whole = (run_dir(project, run_id) / "metrics.jsonl").read_bytes()
    assert LocalTransport().read_file(str(run_dir(project, run_id) / "metrics.jsonl"), 10) == whole[-10:]
    row = {"run_id": run_id, "provider": "local", "transport": {}, "run_dir": str(run_dir(project, run_id))}
    last_two = len(whole.splitlines(keepends=True)[-1]) + 5
    assert metrics(row, last_two) == [records[-1]]

    piped = cli("runs", "status", run_id)
    assert piped.code == 0 and "loss curve" not in piped.out and "\u2581" not in piped.out
    as_json = cli("runs", "status", run_id, "-o", "json")
    assert as_json.code == 0 and "loss_sparkline" not in as_json.json


def test_report_bad_input_says_what_and_writes_nothing(cli, project: Path, tmp_path: Path, runctl_home: Path) -> None:
    write_script(project, "quick.py", "print('done')\n")
    code, run = train_wait(cli, "quick.py")
    assert code == 0, run
    target = tmp_path / "out"
    target.mkdir()
    cases = {
        "unknown run": (["runs", "report", "zzzzzzzz", "--html", str(target / "r.html")], "no run with id"),
        "a directory": (["runs", "report", run["run_id"], "--html", str(target)], "is a directory"),
        "no such dir": (
            ["runs", "report", run["run_id"], "--html", str(target / "missing" / "r.html")],
            "not a directory",
        ),
        "no --html": (["runs", "report", run["run_id"]], "--html"),
        "a device": (["runs", "report", run["run_id"], "--html", "/dev/null"], "not a regular file"),
    }
    for what, (args, said) in cases.items():
        result = cli(*args)
        assert result.code == 2, (what, result)
        assert said in result.err, (what, result.err)
        assert "Traceback" not in result.err and len(result.err.strip().splitlines()) <= 2, (what, result.err)
        assert list(target.iterdir()) == [], what
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)

    # A run without metrics still gets its report: no chart, and no sparkline in a terminal.
    result = cli("runs", "report", run["run_id"], "--html", str(target / "r.html"))
    assert result.code == 0, result.err
    text = (target / "r.html").read_text()
    assert "No metrics were reported" in text and "<path" not in text
    assert "Training Complete" in text
    shown = in_a_terminal(["runs", "status", run["run_id"]], {**os.environ, "RUNCTL_HOME": str(runctl_home)}, project)
    assert run["run_id"] in shown and "loss curve" not in shown
