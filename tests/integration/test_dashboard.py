"""`runctl dashboard` in real Chromium against real local runs: the runs page lists them, a run's page
goes live (chart points, log lines) without a reload, Stop really stops, and the token guards it all.

One dashboard server (a real `runctl dashboard` process) and one browser serve the whole module.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import subprocess
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RUNCTL, Result
from tests.integration.test_ssh import SshEnv
from tests.support.runs import kill_leftover_runs, poll, run_dir, status_file, write_script

pytestmark = pytest.mark.timeout(180)

CHROMIUM = "/usr/bin/chromium"

SCRIPT = """
import math, sys, time
from runctl import training as rt

for step in range(1, 3000):
    loss = 2.0 * math.exp(-step / 40) + 0.05
    rt.report(step=step, epoch=1, total_epochs=1, total_steps=3000, loss=loss, accuracy=step / 3000)
    print("step %d loss %.4f" % (step, loss), flush=True)
    if rt.should_stop():
        with rt.atomic_path(rt.checkpoint_dir() / ("checkpoint_step_%d.pt" % step)) as tmp:
            tmp.write_text("weights at step %d" % step)
        print("saved checkpoint at step %d" % step, flush=True)
        sys.exit(0)
    time.sleep(0.1)
"""


@dataclass
class World:
    home: Path
    project: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "RUNCTL_DEBUG"}
        return {**env, "RUNCTL_HOME": str(self.home), **extra}

    def cli(self, *args: str, timeout: float = 60) -> Result:
        proc = subprocess.run(
            [*RUNCTL, *args], cwd=self.project, env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def start(self, *flags: str) -> str:
        result = self.cli("local", "train", "train.py", *flags)
        assert result.code == 0, result.err
        return result.out.strip()


@dataclass
class Dashboard:
    proc: subprocess.Popen[str]
    url: str
    base: str
    token: str
    port: int


def make_world(base: Path) -> World:
    home, project = base / "home", base / "proj"
    home.mkdir(mode=0o700)
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'proj'\nversion = '0'\n")
    write_script(project, "train.py", SCRIPT)
    return World(home, project)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    made = make_world(tmp_path_factory.mktemp("dash"))
    yield made
    kill_leftover_runs(made.project)


def start_dashboard(world: World, *args: str, env: dict[str, str] | None = None) -> Dashboard:
    proc = subprocess.Popen(
        [*RUNCTL, "dashboard", "--port", "0", *args],
        cwd=world.project,
        env=env or world.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("http://"), (url, proc.stderr.read() if proc.poll() is not None else "")
    base, _, token = url.partition("/?token=")
    return Dashboard(proc, url, base, token, int(base.rsplit(":", 1)[1]))


def stop_dashboard(dash: Dashboard) -> None:
    if dash.proc.poll() is None:
        dash.proc.send_signal(signal.SIGINT)
        try:
            dash.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            dash.proc.kill()
            dash.proc.wait()


@pytest.fixture(scope="module")
def dash(world: World) -> Iterator[Dashboard]:
    started = start_dashboard(world)
    yield started
    stop_dashboard(started)
    assert not (world.home / "dashboard.json").exists()  # a dashboard that ended is not offered again


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


def request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, Any]:
    """(HTTP status, the JSON body or the text) of one request, as any HTTP client would send it."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            status, data = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, data = exc.code, exc.read()
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data.decode("utf-8", "replace")


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG (what Chromium writes), unfiltered."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def not_blank(png: bytes) -> tuple[int, float]:
    """(distinct colours, luminance variance) over a grid of the screenshot's pixels."""
    width, height, rows = png_pixels(png)
    channels = len(rows[0]) // width
    colours, values = set(), []
    for y in range(0, height, 4):
        for x in range(0, width, 4):
            px = rows[y][x * channels : x * channels + 3]
            colours.add(px)
            values.append(0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2])
    mean = sum(values) / len(values)
    return len(colours), sum((v - mean) ** 2 for v in values) / len(values)


def chart_points(page: Any) -> int:
    return int(page.get_attribute("#chart", "data-points") or 0)


# ---- the browser ---------------------------------------------------------------------------------


def test_a_run_live_in_the_browser_then_stopped_from_it(world: World, dash: Dashboard, browser: Any) -> None:
    from playwright.sync_api import expect

    run_id = world.start()
    poll(lambda: status_file(world.project, run_id).get("step"), 30, "the run's first report")
    page = browser.new_page(viewport={"width": 1280, "height": 1200})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(dash.url)

    # The runs page lists the run the test started, running, and the token left the address bar.
    row = page.locator("#runs tbody tr[data-run-id='%s']" % run_id)
    expect(row).to_be_visible(timeout=10000)
    expect(row.locator(".badge .label")).to_have_text("Running")
    expect(row.locator("td.progress")).to_contain_text("step")
    assert "token" not in page.url
    page.select_option("#filter-status", "completed")
    expect(row).to_be_hidden()
    page.select_option("#filter-status", "active")
    expect(row).to_be_visible()
    page.select_option("#filter-provider", "local")
    expect(row).to_be_visible()

    # Its page: the chart gains points and the log gains lines while the run reports, with no reload.
    row.locator("a").click()
    page.wait_for_url("**/runs/%s" % run_id)
    page.wait_for_selector("#chart svg path.raw")
    first = chart_points(page)
    assert first >= 1
    poll(lambda: chart_points(page) >= first + 5, 15, "5 more points in the chart")
    shown = page.locator("#log").inner_text()
    last_step = max(int(line.split()[1]) for line in shown.splitlines() if line.startswith("step "))
    poll(lambda: "step %d loss" % (last_step + 3) in page.locator("#log").inner_text(), 15, "new log lines on the page")
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # never reloaded
    assert page.locator("#metric option").all_inner_texts() == ["loss", "accuracy"]
    page.select_option("#metric", "accuracy")
    expect(page.locator("#chart svg")).to_have_attribute("data-metric", "accuracy")
    page.select_option("#metric", "loss")
    smoothed_before = page.get_attribute("#chart path.smoothed", "d")
    page.locator("#smoothing").fill("0.95")
    expect(page.locator("#smoothing-value")).to_have_text("0.95")
    poll(lambda: page.get_attribute("#chart path.smoothed", "d") != smoothed_before, 5, "a smoother curve")

    png = page.screenshot(full_page=True)
    colours, variance = not_blank(png)
    assert colours > 20 and variance > 100, (colours, variance)

    # Refused requests change nothing: no token, a wrong token, another site's page.
    stop_url = "%s/api/runs/%s/stop" % (dash.base, run_id)
    assert request(stop_url, "POST", body=b"{}")[0] == 403
    assert request(stop_url, "POST", {"X-Runctl-Token": "wrong"}, b"{}")[0] == 403
    evil = {"X-Runctl-Token": dash.token, "Origin": "http://evil.example"}
    assert request(stop_url, "POST", evil, b"{}")[0] == 403
    cookie = "runctl_token_%d=%s" % (dash.port, dash.token)
    cookie_only = {"Cookie": cookie, "Origin": dash.base}  # what a form posted from elsewhere could carry at most
    assert request(stop_url, "POST", cookie_only, b"{}")[0] == 403
    step = status_file(world.project, run_id)["step"]
    poll(lambda: status_file(world.project, run_id).get("step", 0) > step + 3, 10, "the run going on")
    assert not (run_dir(world.project, run_id) / "STOP_TRAINING").exists()
    assert status_file(world.project, run_id)["status"] == "running"

    # Stop, confirmed: the same graceful stop as `runctl runs stop`, and the page says how it ended.
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.click("#stop")
    expect(page.locator("#badge .label")).to_have_text("Stopped by User", timeout=15000)
    assert run_id in dialogs[0]
    expect(page.locator("#badge")).to_have_attribute("data-tone", "warn")
    expect(page.locator("#end-reason")).to_contain_text("stopped (user_stop)")
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#checkpoints")).to_contain_text("checkpoint_step_")
    expect(page.locator("#log")).to_contain_text("saved checkpoint at step")
    status = world.cli("runs", "status", run_id, "-o", "json")
    assert status.code == 0, status.err
    run = json.loads(status.out)
    assert (run["status"], run["termination_status"]) == ("stopped", "user_stop")
    saved = list((world.project / "checkpoints").glob("checkpoint_step_*.pt"))
    assert len(saved) == 1 and saved[0].read_text().startswith("weights at step")

    # The runs page, live as well, shows the end in seed 004's words.
    page.goto(dash.base + "/")
    expect(row.locator(".badge .label")).to_have_text("Stopped by User")
    expect(row.locator(".badge")).to_have_attribute("data-tone", "warn")
    assert errors == []
    page.close()


def test_a_run_on_an_ssh_host_goes_live_and_stops_from_its_page(sshenv: SshEnv, tmp_path: Path, browser: Any) -> None:
    """Remote runs are followed through the agent's stream over SSH, and their metrics read from
    where the last read stopped."""
    from playwright.sync_api import expect

    world = make_world(tmp_path)
    host = sshenv.hosts[0]
    run_id = sshenv.start(host, "train.py", cwd=world.project)
    remote = start_dashboard(world, env=sshenv.environ())
    try:
        page = browser.new_page()
        page.goto("%s/runs/%s?token=%s" % (remote.base, run_id, remote.token))
        page.wait_for_selector("#chart svg path.raw")
        first = chart_points(page)
        poll(lambda: chart_points(page) >= first + 5, 20, "5 more points from the SSH host")
        expect(page.locator("#where")).to_contain_text("ssh")
        count = page.locator("#log").inner_text().count("\n")
        poll(lambda: page.locator("#log").inner_text().count("\n") >= count + 3, 20, "new log lines from the host")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#stop")
        expect(page.locator("#badge .label")).to_have_text("Stopped by User", timeout=30000)
        expect(page.locator("#checkpoints")).to_contain_text("checkpoint_step_")
        page.close()
    finally:
        stop_dashboard(remote)
        if sshenv.status(run_id, world.project)["status"] not in ("stopped", "completed", "failed"):
            sshenv.cli("runs", "stop", run_id, "--now", cwd=world.project)
    assert sshenv.status(run_id, world.project)["termination_status"] == "user_stop"


def test_runs_page_shows_how_runs_ended_in_seed_004s_words(world: World, dash: Dashboard, browser: Any) -> None:
    from playwright.sync_api import expect

    write_script(world.project, "quick.py", "from runctl import training as rt\nrt.report(step=1, loss=0.5)\n")
    write_script(world.project, "crash.py", "raise RuntimeError('CUDA error: out of <b>memory</b>')\n")
    done = world.cli("local", "train", "quick.py", "--wait", "-o", "json")
    crashed = world.cli("local", "train", "crash.py", "--wait", "-o", "json")
    assert (done.code, crashed.code) == (0, 1), (done.err, crashed.err)
    page = browser.new_page()
    page.goto(dash.url)
    good = page.locator("#runs tbody tr[data-run-id='%s']" % done.json["run_id"])
    expect(good.locator(".badge")).to_have_attribute("data-tone", "good")
    expect(good.locator(".badge")).to_have_text("\u2714Training Complete")
    bad = page.locator("#runs tbody tr[data-run-id='%s']" % crashed.json["run_id"])
    expect(bad.locator(".badge")).to_have_attribute("data-tone", "bad")
    expect(bad.locator(".badge .label")).to_have_text("Failed")
    expect(bad.locator(".message.bad")).to_contain_text("RuntimeError: CUDA error: out of <b>memory</b>")  # as text
    assert bad.locator(".message.bad b").count() == 0
    page.select_option("#filter-status", "failed")
    expect(page.locator("#runs tbody tr")).to_have_count(1)
    page.select_option("#filter-status", "")

    # A run started while the page is open appears on it, and its end too, without a reload.
    later = world.cli("local", "train", "quick.py", "--wait", "-o", "json")
    assert later.code == 0, later.err
    row = page.locator("#runs tbody tr[data-run-id='%s']" % later.json["run_id"])
    expect(row.locator(".badge .label")).to_have_text("Training Complete")
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    page.goto("%s/runs/nosuchrun" % dash.base)
    expect(page.locator("#problems")).to_contain_text("no run with id 'nosuchrun'")
    page.close()


# ---- the API and its guard -----------------------------------------------------------------------


def test_the_api_needs_the_token_and_answers_with_it(world: World, dash: Dashboard) -> None:
    run_id = world.start()
    poll(lambda: status_file(world.project, run_id).get("step", 0) >= 5, 30, "5 reports")
    stopped = world.cli("runs", "stop", run_id, "--grace", "10")
    assert stopped.code == 0, stopped.err
    auth = {"X-Runctl-Token": dash.token}
    for path in ("/", "/api/runs", "/api/runs/%s/log" % run_id, "/api/hosts", "/static/app.js"):
        assert request(dash.base + path)[0] == 403, path
        assert request(dash.base + path, headers={"X-Runctl-Token": "wrong" + dash.token})[0] == 403, path
        other_port = {"Cookie": "runctl_token_%d=%s" % (dash.port + 1, dash.token)}
        assert request(dash.base + path, headers=other_port)[0] == 403, path
        assert request(dash.base + path, headers={"Cookie": "runctl_token_%d=%s" % (dash.port, dash.token)})[0] == 200
    rebound = {**auth, "Host": "attacker.example:%d" % dash.port}  # DNS rebinding: another name, same address
    assert request(dash.base + "/api/runs", headers=rebound)[0] == 403

    code, runs = request(dash.base + "/api/runs?status=stopped&provider=local", headers=auth)
    assert code == 200 and run_id in [r["run_id"] for r in runs]
    assert {(r["status"], r["provider"]) for r in runs} == {("stopped", "local")}
    mine = next(r for r in runs if r["run_id"] == run_id)
    assert mine["badge"] == {
        "tone": "warn",
        "icon": "\u25a0",
        "label": "Stopped by User",
        "message": mine["termination_message"],
    }
    assert request(dash.base + "/api/runs?status=nosuch", headers=auth) == (200, [])
    code, one = request(dash.base + "/api/runs/%s" % run_id, headers=auth)
    assert code == 200 and one["run"]["status"] == "stopped" and one["end_reason"][0]["text"].startswith("stopped")
    code, metrics = request(dash.base + "/api/runs/%s/metrics?since=3" % run_id, headers=auth)
    assert code == 200 and metrics["since"] == 3 and len(metrics["records"]) == metrics["count"] - 3
    assert metrics["records"][0]["step"] == 4
    code, log = request(dash.base + "/api/runs/%s/log?offset=0" % run_id, headers=auth)
    assert code == 200 and log["text"].startswith("step 1 loss") and log["next_offset"] == len(log["text"].encode())
    code, tail = request(dash.base + "/api/runs/%s/log?offset=%d" % (run_id, log["next_offset"] - 10), headers=auth)
    assert tail["text"] == log["text"][-10:]
    assert request(dash.base + "/api/runs/%s/metrics?since=x" % run_id, headers=auth)[0] == 400
    assert request(dash.base + "/api/runs/nosuchrun/metrics", headers=auth)[0] == 404
    code, hosts = request(dash.base + "/api/hosts", headers=auth)
    assert code == 200 and [(h["host_key"], h["active_runs"], h["warning"]) for h in hosts] == [("local:vm", [], None)]

    # Stopping a run that already ended, or one that does not exist, says so and changes nothing.
    code, said = request(dash.base + "/api/runs/%s/stop" % run_id, "POST", auth, b"{}")
    assert code == 409 and "already ended" in said["error"]
    assert request(dash.base + "/api/runs/nosuchrun/stop", "POST", auth, b"{}")[0] == 404
    assert request(dash.base + "/api/runs/%s/stop" % run_id, "POST", auth, b'{"grace": -1}')[0] == 400


def test_events_stream_a_metric_within_a_second(world: World, dash: Dashboard) -> None:
    run_id = world.start()
    try:
        poll(lambda: status_file(world.project, run_id).get("step"), 30, "the run's first report")
        code, log = request("%s/api/runs/%s/log" % (dash.base, run_id), headers={"X-Runctl-Token": dash.token})
        assert code == 200 and log["text"].startswith("step 1 loss"), log  # a live run's log, from its follower
        req = urllib.request.Request(
            "%s/api/runs/%s/events?metrics=0" % (dash.base, run_id), headers={"X-Runctl-Token": dash.token}
        )
        with urllib.request.urlopen(req, timeout=10) as stream:
            kinds: dict[str, Any] = {}
            deadline = time.monotonic() + 10
            event = None
            while time.monotonic() < deadline and not ({"run", "metrics", "log"} <= set(kinds)):
                line = stream.readline().decode().strip()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event:
                    kinds.setdefault(event, json.loads(line[6:]))
        assert kinds["run"]["run"]["run_id"] == run_id and kinds["run"]["run"]["badge"]["label"] == "Running"
        assert kinds["metrics"]["since"] == 0 and kinds["metrics"]["records"][0]["step"] == 1
        assert kinds["log"]["text"]
    finally:
        world.cli("runs", "stop", run_id, "--grace", "5")


def test_port_in_use_is_one_line_and_exit_4(world: World, dash: Dashboard) -> None:
    again = world.cli("dashboard", "--port", str(dash.port))
    assert again.code == 4, again
    lines = again.err.strip().splitlines()
    assert len(lines) == 2 and "already serves it" in lines[0] and dash.base in lines[1], again.err
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        taken = world.cli("dashboard", "--port", str(port))
    assert taken.code == 4 and "port %d on 127.0.0.1 is in use" % port in taken.err and "--port" in taken.err
    assert len(taken.err.strip().splitlines()) == 2 and "Traceback" not in taken.err


def test_a_non_loopback_host_is_warned_of_and_still_needs_the_token(world: World, dash: Dashboard) -> None:
    other = start_dashboard(world, "--host", "0.0.0.0")
    try:
        assert other.base.startswith("http://127.0.0.1:")
        assert request(other.base + "/api/runs")[0] == 403
        assert request(other.base + "/api/runs", headers={"X-Runctl-Token": other.token})[0] == 200
        assert other.token != dash.token
    finally:
        stop_dashboard(other)
    assert other.proc.stderr is not None
    assert "warning: --host 0.0.0.0" in other.proc.stderr.read()


def test_hosts_page_warns_of_a_host_billing_with_no_active_run(world: World, dash: Dashboard, browser: Any) -> None:
    from playwright.sync_api import expect

    from runctl.store import Store

    db = Store(world.home / "runctl.db")  # as `runctl aws create` records an instance it launched
    db.upsert_host(
        "aws", "i-0idle", instance_type="g5.xlarge", hourly_price=1.006, price_source="table",
        state="running", info={"managed": True}, t=time.time() - 1800,
    )  # fmt: skip
    db.close()
    page = browser.new_page()
    page.goto(dash.url)
    page.click("nav a[href='/hosts']")
    row = page.locator("#hosts tbody tr[data-host-key='aws:i-0idle']")
    expect(row).to_contain_text("g5.xlarge")
    expect(row).to_contain_text("$1.006")
    expect(row.locator("td.warning")).to_contain_text("no active run for 30m")
    expect(row.locator("td.warning")).to_contain_text("runctl aws stop i-0idle")
    expect(page.locator("#hosts tbody tr[data-host-key='local:vm'] td.warning")).to_have_count(0)
    page.close()


# ---- --dashboard on a train command --------------------------------------------------------------


def test_dashboard_flag_starts_one_detached_and_the_next_run_reuses_it(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    pid = None
    try:
        first = world.cli("local", "train", "train.py", "--dashboard")
        assert first.code == 0, first.err
        run_id = first.out.strip()
        url = next(line.split("dashboard: ", 1)[1] for line in first.err.splitlines() if "dashboard: " in line)
        assert "/runs/%s?token=" % run_id in url
        state_file = world.home / "dashboard.json"
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
        state = json.loads(state_file.read_text())
        pid = state["pid"]
        code, html = request(url)
        assert code == 200 and 'data-run-id="%s"' % run_id in html.replace("'", '"')

        second = world.cli("local", "train", "train.py", "--dashboard", "-o", "json")
        assert second.code == 0, second.err
        shown = json.loads(second.out)
        assert shown["dashboard_url"].startswith(url.split("/runs/")[0] + "/runs/%s?token=" % shown["run_id"])
        assert json.loads(state_file.read_text())["pid"] == pid  # the same dashboard, not a second one
        code, listed = request(url.split("/runs/")[0] + "/api/runs", headers={"X-Runctl-Token": state["token"]})
        assert code == 200 and {r["run_id"] for r in listed} == {run_id, shown["run_id"]}

        # --open hands the run's page to the user's browser ($BROWSER, as Python's webbrowser reads it).
        opened = tmp_path / "opened.txt"
        browser_cmd = write_script(tmp_path, "browser.sh", '#!/bin/sh\necho "$1" >> %s\n' % opened, mode=0o755)
        third = subprocess.run(
            [*RUNCTL, "local", "train", "train.py", "--dashboard", "--open"],
            cwd=world.project, env=world.env(BROWSER="%s %%s" % (tmp_path / browser_cmd)),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert third.returncode == 0, third.stderr
        poll(opened.exists, 10, "the browser to be asked")
        assert opened.read_text().split() == [url.split("/runs/")[0] + "/runs/%s?token=%s" % (
            third.stdout.strip(), state["token"])]  # fmt: skip
        for rid in (run_id, shown["run_id"], third.stdout.strip()):
            world.cli("runs", "stop", rid, "--grace", "5")
    finally:
        kill_leftover_runs(world.project)
        if pid:
            os.kill(pid, signal.SIGTERM)
            poll(lambda: not Path("/proc/%d" % pid).exists() or _zombie(pid), 10, "the dashboard to end")


def _zombie(pid: int) -> bool:
    try:
        return Path("/proc/%d/stat" % pid).read_text().split()[2] == "Z"
    except OSError:
        return True
