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
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PY = sys.executable
RUNCTL = str(Path(sys.executable).parent / "runctl")
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


def median(values: list[float]) -> float:
    return statistics.median(values)


def make_project(root: Path, name: str, script: str) -> Path:
    project = root / name
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'bench'\nversion = '0'\n")
    (project / "s.py").write_text(script)
    return project


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


def check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else proc.stderr
        raise SystemExit("%s failed (exit %d): %s" % (what, proc.returncode, (err or "").strip()[-800:]))


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


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
    row = {
        "name": name,
        "unit": unit,
        "measured": measured,
        "alternative": alt_name,
        "alternative_value": alt,
        "compare": compare,
        "delta": delta,
        "target": target,
        "target_on": target_on,
        "pass": None if target is None or bounded is None else bounded <= target,
        "reps": reps,
    }
    row.update(extra)
    return row


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
    return [
        result(
            "500k lines, train --wait -o json",
            "s",
            median(runctl),
            "python s.py > file",
            median(bare),
            "ratio",
            1.3,
            reps,
            target_on="delta",
            samples=runctl,
            alternative_samples=bare,
            note=cpu_note,
            cpu_seconds={k: v for k, v in seen.items() if k.endswith("cpu")} | {"controller": controller_cpu},
        ),
        result(
            "500k lines, same env both",
            "s",
            median(runctl),
            "PYTHONUNBUFFERED=1 bare",
            median(bare_unbuffered),
            "ratio",
            1.3,
            reps,
            target_on="delta",
            samples=runctl,
            alternative_samples=bare_unbuffered,
            note="runs get PYTHONUNBUFFERED=1 (live logs, as the issue requires): bare with that env is the fair floor",
        ),
        result(
            "500k lines, --env PYTHONUNBUFFERED=",
            "s",
            median(runctl_buffered),
            "python s.py > file",
            median(bare),
            "ratio",
            1.3,
            reps,
            target_on="delta",
            samples=runctl_buffered,
            alternative_samples=bare,
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


# ---- report ------------------------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return ("%.1f MiB" if unit == "MiB" else "%.3f s") % value


def print_table(header: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    keys = ("python", "runctl", "cores", "load_average", "platform")
    print("python %s | runctl %s | %s cores | load average %s at start | %s" % tuple(header[k] for k in keys))
    print()
    line = "%-34s %10s  %-20s %10s  %10s  %-10s %s"
    print(line % ("measurement (median)", "runctl", "alternative", "", "diff/ratio", "target", ""))
    for row in rows:
        if row["delta"] is None:
            delta = "-"
        elif row["compare"] == "diff":
            delta = "%+.3f s" % row["delta"]
        else:
            delta = "x%.2f" % row["delta"]
        if row["target"] is None:
            target = "-"
        elif row["target_on"] == "delta":
            target = ("+ <= %g s" if row["compare"] == "diff" else "x <= %g") % row["target"]
        else:
            target = "<= %g s" % row["target"]
        verdict = "info" if row["pass"] is None else ("PASS" if row["pass"] else "MISS")
        print(
            line
            % (
                row["name"],
                fmt(row["measured"], row["unit"]),
                row["alternative"],
                fmt(row["alternative_value"], row["unit"]),
                delta,
                target,
                verdict,
            )
        )
    print()
    for row in rows:
        if row.get("note"):
            print("  %s: %s" % (row["name"], row["note"]))
    print("  repetitions per row: %s" % ", ".join(str(r["reps"]) for r in rows))


def versions(env: dict[str, str], root: Path) -> dict[str, Any]:
    _, proc = run([RUNCTL, "--version"], root, env, text=True)
    return {
        "python": platform.python_version(),
        "runctl": proc.stdout.strip().replace("runctl ", "") or "?",
        "cores": os.cpu_count(),
        "load_average": "%.2f" % os.getloadavg()[0],
        "platform": platform.platform(terse=True),
        "runctl_path": RUNCTL,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the fast measurements (default 5)")
    args = parser.parse_args()
    if not os.access(RUNCTL, os.X_OK):
        raise SystemExit("no runctl console script at %s (install the package in this venv)" % RUNCTL)
    with tempfile.TemporaryDirectory(prefix="runctl-bench-") as tmp:
        root = Path(tmp)
        env = dict(os.environ)
        env["RUNCTL_HOME"] = str(root / "home")
        env.pop("RUNCTL_DEBUG", None)
        env.pop("PYTHONUNBUFFERED", None)
        header = versions(env, root)
        rows = [bench_help(root, env, max(args.reps, 3))]
        rows.append(bench_sleep(root, env, args.reps))
        rows.extend(bench_detection(root, env, args.reps))
        rows.extend(bench_output(root, env, max(1, (args.reps + 1) // 2)))
    if args.json:
        print(json.dumps({"environment": header, "results": rows}, indent=2))
    else:
        print_table(header, rows)
    return 0 if all(row["pass"] is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
