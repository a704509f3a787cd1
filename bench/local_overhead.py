"""What runctl adds to a local training run, measured beside the bare alternative in the same run.

    .venv/bin/python bench/local_overhead.py [--json] [--reps N]     (exit 1 when a target is missed)

Every number is the median of several repetitions; every runctl call is a real `runctl` process
(the console script next to this Python), with RUNCTL_HOME and the projects in a temp dir.

1. `runctl --help` wall time, beside `python -c pass`.
2. `runctl local train s.py --wait` of a script sleeping 1 s, beside `python s.py`: added seconds.
3. Completion-detection latency: the script writes time.time() as its very last act and exits
   (os._exit); measured to the return of a `runctl runs wait ID` that was already waiting, and to
   the `ended_at` that `runs status -o json` reports. Beside it, a parent blocked in waitpid().
4. A script printing 500,000 lines: `runctl local train s.py --wait --output json` over
   `python s.py > file` (wall ratio), the agent's peak RSS (VmHWM) and the script's for scale.
5. A tqdm bar redrawn 10,000 times a second for 10 s, its postfix loss changed every 0.5 s: the
   delay from each printed loss to status.json (what `runs status` shows) and the agent's CPU.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
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
    read_json,
    report,
    require_runctl,
)

LINES = 500_000

SLEEP_SCRIPT = "import time\ntime.sleep(1.0)\n"

EXIT_STAMP_SCRIPT = """\
import os
import time

time.sleep(2.0)
fd = os.open("exit_time.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, repr(time.time()).encode())
os.close(fd)
os._exit(0)
"""

LINES_SCRIPT = (
    """\
import sys

for i in range(%d):
    print("line %%d of the benchmark output, nothing to parse here" %% i)
"""
    % LINES
)


BAR_SECONDS = 10.0
BAR_RATE = 10_000

BAR_SCRIPT = """\
import json
import time

from tqdm import tqdm

seconds, rate = %r, %r
bar = tqdm(total=int(seconds * rate), mininterval=0, miniters=1, smoothing=0)
printed, n, k = [], 0, 0
start = time.perf_counter()
next_loss = 0.5
while True:
    now = time.perf_counter() - start
    if now >= seconds:
        break
    while n < int(now * rate):
        bar.update(1)  # mininterval=0: every update redraws the bar
        n += 1
    if now >= next_loss:
        k += 1
        loss = round(1.0 / (k + 1), 4)
        bar.set_postfix(loss="%%.4f" %% loss)  # as given: tqdm would round a float to 3 digits
        printed.append([loss, time.time()])
        next_loss += 0.5
    time.sleep(0.0002)
bar.close()
with open("printed.json", "w") as handle:
    json.dump({"printed": printed, "redraws": n, "seconds": time.perf_counter() - start}, handle)
""" % (BAR_SECONDS, BAR_RATE)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


LAST_CPU = [0.0]


def run(cmd: list[str], cwd: Path, env: dict[str, str], **kwargs: Any) -> tuple[float, subprocess.CompletedProcess]:
    """(wall seconds, result); the CPU seconds of the process (and what it waited for) go to LAST_CPU."""
    cpu = children_cpu()
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, **kwargs)
    wall = time.perf_counter() - started
    LAST_CPU[0] = children_cpu() - cpu
    return wall, proc


def vm_hwm_kib(pid: int) -> int | None:
    try:
        with open("/proc/%d/status" % pid) as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def result(
    name: str,
    unit: str,
    measured: float,
    alt_name: str,
    alt: float | None,
    compare: str,
    target: float | None,
    reps: int,
    target_on: str = "measured",
    **extra: Any,
) -> dict[str, Any]:
    """One row. `compare` is "diff" (measured - alt) or "ratio" (measured / alt); `target` bounds
    `measured` or, with target_on="delta", the diff or ratio."""
    if alt is None:
        delta = None
    else:
        delta = measured - alt if compare == "diff" else (measured / alt if alt else float("inf"))
    bounded = delta if target_on == "delta" else measured
    compared = {"compare": compare, "delta": delta}
    return make_row(name, unit, measured, alt_name, alt, compared, target, target_on, bounded, reps, extra)


# ---- 1. CLI start --------------------------------------------------------------------------


def bench_help(root: Path, env: dict[str, str], reps: int) -> dict[str, Any]:
    runctl, bare, cpu = [], [], []
    for _ in range(reps):
        seconds, proc = run([RUNCTL, "--help"], root, env)
        check(proc, "runctl --help")
        runctl.append(seconds)
        cpu.append(LAST_CPU[0])
        seconds, proc = run([PY, "-c", "pass"], root, env)
        bare.append(seconds)
    return result(
        "runctl --help wall",
        "s",
        median(runctl),
        "python -c pass",
        median(bare),
        "diff",
        0.3,
        reps,
        samples=runctl,
        alternative_samples=bare,
        note="CPU %.3f s (less sensitive to other load than wall time)" % median(cpu),
        cpu_seconds=cpu,
    )


# ---- 2. a 1 s script, start to end -----------------------------------------------------------


def latest_status(project: Path) -> dict[str, Any]:
    run_id = (project / ".runctl" / "latest_run").read_text().strip()
    return read_json(project / ".runctl" / "runs" / run_id / "status.json")


def bench_sleep(root: Path, env: dict[str, str], reps: int) -> dict[str, Any]:
    project = make_project(root, "sleep", SLEEP_SCRIPT)
    runctl, bare, before, after, cpu = [], [], [], [], []
    for _ in range(reps):
        invoked = time.time()
        seconds, proc = run([RUNCTL, "local", "train", "s.py", "--python", PY, "--wait"], project, env)
        returned = time.time()
        check(proc, "runctl local train --wait")
        runctl.append(seconds)
        cpu.append(LAST_CPU[0])
        state = latest_status(project)
        before.append(float(state["started_at"]) - invoked)
        after.append(returned - float(state["exited_at"]))
        seconds, proc = run([PY, "s.py"], project, env)
        check(proc, "python s.py")
        bare.append(seconds)
    return result(
        "train --wait, 1 s script",
        "s",
        median(runctl),
        "python s.py",
        median(bare),
        "diff",
        0.4,
        reps,
        target_on="delta",
        samples=runctl,
        alternative_samples=bare,
        note="invocation -> script spawned %.3f s, script exit -> runctl exit %.3f s; "
        "CPU of runctl + agent launcher %.3f s" % (median(before), median(after), median(cpu)),
        cpu_seconds=cpu,
        invoked_to_spawn=before,
        exit_to_return=after,
    )


# ---- 3. completion-detection latency ----------------------------------------------------------


def bench_detection(root: Path, env: dict[str, str], reps: int) -> list[dict[str, Any]]:
    project = make_project(root, "detect", EXIT_STAMP_SCRIPT)
    stamp = project / "exit_time.txt"
    by_wait, by_ended, by_waitpid = [], [], []
    for _ in range(reps):
        stamp.unlink(missing_ok=True)
        _, proc = run([RUNCTL, "local", "train", "s.py", "--python", PY, "--output", "json"], project, env)
        check(proc, "runctl local train")
        run_id = json.loads(proc.stdout)["run_id"]
        waiter = subprocess.Popen(
            [RUNCTL, "runs", "wait", run_id],
            cwd=str(project),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, err = waiter.communicate()
        returned = time.time()
        if waiter.returncode != 0:
            raise SystemExit("runctl runs wait failed (exit %d): %s" % (waiter.returncode, err.decode()[-800:]))
        exited = float(stamp.read_text())
        _, proc = run([RUNCTL, "runs", "status", run_id, "-o", "json"], project, env)
        check(proc, "runctl runs status")
        ended_at = float(json.loads(proc.stdout)["ended_at"])
        by_wait.append(returned - exited)
        by_ended.append(ended_at - exited)

        stamp.unlink()
        child = subprocess.Popen([PY, "s.py"], cwd=str(project), env=env)
        child.wait()
        by_waitpid.append(time.time() - float(stamp.read_text()))
    common = {"alternative_samples": by_waitpid}
    return [
        result(
            "exit -> `runs wait` returns",
            "s",
            median(by_wait),
            "parent waitpid()",
            median(by_waitpid),
            "diff",
            0.3,
            reps,
            samples=by_wait,
            note="includes the waiting runctl's poll of status.json and its own exit",
            **common,
        ),
        result(
            "exit -> ended_at (runs status)",
            "s",
            median(by_ended),
            "parent waitpid()",
            median(by_waitpid),
            "diff",
            0.3,
            reps,
            samples=by_ended,
            **common,
        ),
    ]


# ---- 4. high-volume output ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    try:
        with open("/proc/%d/stat" % pid) as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """Finds the run started in `project`; samples VmHWM and CPU time of its agent and script."""

    def __init__(self, project: Path) -> None:
        super().__init__(daemon=True)
        self.project = project
        self.done = threading.Event()
        self.seen: dict[str, dict[str, float]] = {"agent": {}, "script": {}}

    def run(self) -> None:
        state: dict[str, Any] = {}
        while not self.done.is_set() and not state.get("pid"):
            try:
                state = latest_status(self.project)
            except OSError:
                pass
            time.sleep(0.005)
        alive = {"agent": state.get("agent_pid"), "script": state.get("pid")}
        while any(alive.values()):
            for kind, pid in alive.items():
                if not pid:
                    continue
                rss, cpu = vm_hwm_kib(pid), cpu_seconds(pid)
                if rss is None or cpu is None:
                    alive[kind] = None
                else:
                    self.seen[kind] = {"rss_mib": rss / 1024, "cpu_s": cpu}
            time.sleep(0.02)


def bench_output(root: Path, env: dict[str, str], reps: int) -> list[dict[str, Any]]:
    unbuffered_env = dict(env, PYTHONUNBUFFERED="1")
    bare, bare_unbuffered, runctl, runctl_buffered, controller_cpu = [], [], [], [], []
    seen: dict[str, list[float]] = {"agent_rss": [], "script_rss": [], "agent_cpu": [], "script_cpu": []}
    for rep in range(reps):
        project = make_project(root, "lines%d" % rep, LINES_SCRIPT)
        for target_env, samples in ((env, bare), (unbuffered_env, bare_unbuffered)):
            with open(project / "bare.out", "wb") as handle:
                started = time.perf_counter()
                proc = subprocess.run([PY, "s.py"], cwd=str(project), env=target_env, stdout=handle)
                samples.append(time.perf_counter() - started)
            check(proc, "python s.py > file")

        sampler = Sampler(project)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        child = subprocess.Popen(
            [RUNCTL, "local", "train", "s.py", "--python", PY, "--wait", "--output", "json"],
            cwd=str(project),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        sampler.start()
        stdout, stderr = child.communicate()
        runctl.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        controller_cpu.append(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime)
        sampler.done.set()
        sampler.join(5)
        if child.returncode != 0:
            raise SystemExit("runctl train (500k lines) failed: %s" % stderr.decode()[-800:])
        run_dir = Path(json.loads(stdout)["run_dir"])
        lines = (run_dir / "training.log").read_bytes().count(b"\n")
        if lines != LINES:
            raise SystemExit("training.log has %d lines, expected %d" % (lines, LINES))
        # The same run with the user's opt-out of unbuffered output (block-buffered like bare python).
        started = time.perf_counter()
        opted_out = subprocess.run(
            [RUNCTL, "local", "train", "s.py", "--python", PY, "--wait", "-o", "json", "--env", "PYTHONUNBUFFERED="],
            cwd=str(project),
            env=env,
            capture_output=True,
        )
        runctl_buffered.append(time.perf_counter() - started)
        check(opted_out, "runctl local train --env PYTHONUNBUFFERED=")
        for kind in ("agent", "script"):
            for key, name in (("rss_mib", "rss"), ("cpu_s", "cpu")):
                if key in sampler.seen[kind]:
                    seen["%s_%s" % (kind, name)].append(sampler.seen[kind][key])

    def mid(values: list[float]) -> float | None:
        return median(values) if values else None

    cpu_note = "CPU s: agent %s, script %s, runctl controller (+ agent launcher) %.2f" % (
        "%.2f" % mid(seen["agent_cpu"]) if seen["agent_cpu"] else "?",
        "%.2f" % mid(seen["script_cpu"]) if seen["script_cpu"] else "?",
        median(controller_cpu),
    )

    def wall_ratio(name: str, samples: list[float], alt_name: str, alt: list[float], **extra: Any) -> dict[str, Any]:
        return result(
            name,
            "s",
            median(samples),
            alt_name,
            median(alt),
            "ratio",
            1.3,
            reps,
            target_on="delta",
            samples=samples,
            alternative_samples=alt,
            **extra,
        )

    return [
        wall_ratio(
            "500k lines, train --wait -o json",
            runctl,
            "python s.py > file",
            bare,
            note=cpu_note,
            cpu_seconds={k: v for k, v in seen.items() if k.endswith("cpu")} | {"controller": controller_cpu},
        ),
        wall_ratio(
            "500k lines, same env both",
            runctl,
            "PYTHONUNBUFFERED=1 bare",
            bare_unbuffered,
            note="runs get PYTHONUNBUFFERED=1 (live logs, as the issue requires): bare with that env is the fair floor",
        ),
        wall_ratio(
            "500k lines, --env PYTHONUNBUFFERED=",
            runctl_buffered,
            "python s.py > file",
            bare,
            note="the user's opt-out of unbuffered output: block-buffered, like bare python",
        ),
        result(
            "500k lines: agent peak RSS",
            "MiB",
            mid(seen["agent_rss"]) or float("nan"),
            "script peak RSS",
            mid(seen["script_rss"]),
            "ratio",
            None,
            len(seen["agent_rss"]),
            samples=seen["agent_rss"],
            alternative_samples=seen["script_rss"],
        ),
    ]


# ---- 5. a fast progress bar ---------------------------------------------------------------------


class StatusWatcher(threading.Thread):
    """Polls the run's status.json every 5 ms; records when each loss value first shows there."""

    def __init__(self, project: Path) -> None:
        super().__init__(daemon=True)
        self.project = project
        self.done = threading.Event()
        self.first_seen: dict[float, float] = {}
        self.agent_pid: int | None = None

    def run(self) -> None:
        while not self.done.is_set():
            try:
                state = latest_status(self.project)
            except (OSError, ValueError):
                state = {}
            self.agent_pid = self.agent_pid or state.get("agent_pid")
            loss = state.get("loss")
            if loss is not None and loss not in self.first_seen:
                self.first_seen[loss] = time.time()
            time.sleep(0.005)


def bench_bar(root: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    project = make_project(root, "bar", BAR_SCRIPT)
    watcher = StatusWatcher(project)
    watcher.start()
    child = subprocess.Popen(
        [RUNCTL, "local", "train", "s.py", "--python", PY, "--wait", "-o", "json"],
        cwd=str(project),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    while watcher.agent_pid is None and child.poll() is None:
        time.sleep(0.01)
    cpu_start, wall_start = cpu_seconds(watcher.agent_pid or 0), time.monotonic()
    cpu_end = cpu_start
    while child.poll() is None:
        cpu_end = cpu_seconds(watcher.agent_pid or 0) or cpu_end
        time.sleep(0.05)
    wall = time.monotonic() - wall_start
    _, stderr = child.communicate()
    watcher.done.set()
    watcher.join(2)
    if child.returncode != 0:
        raise SystemExit("runctl train (tqdm bar) failed: %s" % stderr.decode()[-800:])
    facts = read_json(project / "printed.json")
    delays = [watcher.first_seen[loss] - t for loss, t in facts["printed"] if loss in watcher.first_seen]
    missed = len(facts["printed"]) - len(delays)
    agent_cpu = 100.0 * ((cpu_end or 0.0) - (cpu_start or 0.0)) / wall
    rate = facts["redraws"] / facts["seconds"]
    ordered = sorted(delays)
    return [
        result(
            "tqdm bar 10k/s: loss -> status",
            "s",
            median(delays) if delays else float("inf"),
            "-",
            None,
            "diff",
            0.5,
            len(delays),
            samples=delays,
            note="%d losses printed, %d never shown; max %.3f s; bar redrawn %.0f times/s; "
            "measured to status.json, which `runs status` reads"
            % (len(facts["printed"]), missed, ordered[-1] if ordered else float("nan"), rate),
            redraws_per_second=rate,
        ),
        result(
            "tqdm bar 10k/s: agent CPU",
            "%",
            agent_cpu,
            "-",
            None,
            "diff",
            5.0,
            1,
            note="agent CPU time over the run's wall time, in %% of one core (%.1f s run)" % wall,
        ),
    ]


# ---- report ------------------------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "%":
        return "%.1f %%" % value
    return ("%.1f MiB" if unit == "MiB" else "%.3f s") % value


TABLE_LINE = "%-34s %10s  %-20s %10s  %10s  %-10s %s"
TABLE_TITLES = ("measurement (median)", "runctl", "alternative", "", "diff/ratio", "target")


def cells(r: dict[str, Any]) -> tuple[str, ...]:
    """A row's columns in the table, before its verdict."""
    if r["delta"] is None:
        delta = "-"
    elif r["compare"] == "diff":
        delta = "%+.3f s" % r["delta"]
    else:
        delta = "x%.2f" % r["delta"]
    if r["target"] is None:
        target = "-"
    elif r["target_on"] == "delta":
        target = ("+ <= %g s" if r["compare"] == "diff" else "x <= %g") % r["target"]
    else:
        target = "<= %g %s" % (r["target"], r["unit"])
    return (
        r["name"],
        fmt(r["measured"], r["unit"]),
        r["alternative"],
        fmt(r["alternative_value"], r["unit"]),
        delta,
        target,
    )


def main() -> int:
    args = arguments(__doc__, "repetitions of the fast measurements (default 5)").parse_args()
    require_runctl()
    with tempfile.TemporaryDirectory(prefix="runctl-bench-") as tmp:
        root = Path(tmp)
        env = dict(os.environ)
        env["RUNCTL_HOME"] = str(root / "home")
        env.pop("RUNCTL_DEBUG", None)
        env.pop("PYTHONUNBUFFERED", None)
        header = environment(env)
        rows = [bench_help(root, env, max(args.reps, 3))]
        rows.append(bench_sleep(root, env, args.reps))
        rows.extend(bench_detection(root, env, args.reps))
        rows.extend(bench_output(root, env, max(1, (args.reps + 1) // 2)))
        rows.extend(bench_bar(root, env))
    table = functools.partial(print_table, header, TABLE_LINE, TABLE_TITLES, rows, cells)
    return report(rows, args.json, {"environment": header, "results": rows}, table)


if __name__ == "__main__":
    sys.exit(main())
