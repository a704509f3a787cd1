"""runctl over SSH, measured beside the bare alternative in the same run, against real sshd test hosts.

    .venv/bin/python bench/ssh.py [--json] [--reps N]

Run it as root: it starts two OpenSSH test hosts (tests/support/sshhosts.py), each in its own
network namespace when that works, else on a loopback port, and tears them down at the end. The
controller's RUNCTL_HOME, the projects and the hosts' disks live in a temp dir. Every number is the
median of several repetitions.

1. Code sync of a 2,000-file project (~21 MB, mixed sizes, nested dirs, a .gitignore), first time
   (a fresh remote dir every repetition) and with nothing changed: runctl's sync_code() called
   in-process with an SshTransport, beside plain `rsync -a` with the same `-e` ssh command
   (transport.rsync_rsh()) over the same ControlMaster connection, into another remote dir.
2. Launch on a ready host (agent shipped, code synced, master up): `runctl ssh train DEST s.py
   --wait` as a real process, from its start to the script's first log line on its stdout. That
   covers CLI start, the no-change sync, the launch and the first log frame.
3. Completion detection over SSH, from the same runs: the script writes time.time() to its run dir
   as its last act and exits; measured to the CLI's final line, to its exit, and to the ended_at
   that `runctl runs status -o json` reports.
4. 20 concurrent runs on 2 hosts (10 each, started without --wait) followed by ONE controller
   process: a driver with one thread per run calling runctl.controller.follow(). Its CPU time
   (user+sys, % of one core over the follow period), its peak RSS, and the ssh processes it spawned.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import PY, RUNCTL, arguments, make_row, median, print_rows, report, require_runctl
from _common import check as _check

REPO = Path(__file__).resolve().parent.parent

PROJECT_FILES = 2000
FANOUT_RUNS_PER_HOST = 10
FANOUT_TICKS = 20

FIRST_LINE = "first log line"

LAUNCH_SCRIPT = (
    """\
import os
import time

print("%s", flush=True)
time.sleep(2.0)
fd = os.open(os.path.join(os.environ["RUNCTL_RUN_DIR"], "exit_time.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
os.write(fd, repr(time.time()).encode())
os.close(fd)
os._exit(0)
"""
    % FIRST_LINE
)

QUICK_SCRIPT = "print('ready')\n"

FANOUT_SCRIPT = """\
import os
import sys
import time

go = os.path.join(os.environ["RUNCTL_PROJECT_DIR"], "GO")
print("waiting for GO", flush=True)
while not os.path.exists(go):
    time.sleep(0.2)
for i in range(int(sys.argv[1])):
    print("tick %d" % i, flush=True)
    time.sleep(1.0)
"""

GITIGNORE = "*.log\nbuild/\n*.tmp\n"


# ---- helpers -----------------------------------------------------------------------------------


def check(proc: subprocess.CompletedProcess, what: str) -> None:
    _check(proc, what, tail=1500)


def row(
    name: str,
    unit: str,
    measured: float,
    alt_name: str = "",
    alt: float | None = None,
    target: float | None = None,
    target_on: str = "measured",
    reps: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    """One table row; `target` bounds `measured`, or with target_on="ratio" measured / alt."""
    ratio = measured / alt if alt else None
    bounded = ratio if target_on == "ratio" else measured
    return make_row(name, unit, measured, alt_name, alt, {"ratio": ratio}, target, target_on, bounded, reps, extra)


class Streamed:
    """A process whose stdout and stderr lines are recorded with the wall time each arrived."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.lines: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()
        self.started = time.time()
        self.proc = subprocess.Popen(
            argv, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, "out"), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, "err"), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, stream: Any, name: str) -> None:
        for raw in iter(stream.readline, b""):
            now = time.time()
            with self.lock:
                self.lines.append((now, name, raw.decode(errors="replace").rstrip("\n")))

    def wait(self, timeout: float) -> float:
        """Wait for exit; returns the wall time at which it was seen."""
        self.proc.wait(timeout)
        exited = time.time()
        for reader in self.readers:
            reader.join(5)
        return exited

    def first(self, stream: str, needle: str) -> tuple[float, str] | None:
        for t, name, text in self.lines:
            if name == stream and needle in text:
                return t, text
        return None

    def last(self, stream: str) -> tuple[float, str] | None:
        found = [(t, text) for t, name, text in self.lines if name == stream and text.strip()]
        return found[-1] if found else None

    def text(self) -> str:
        return "\n".join("%s: %s" % (name, text) for _, name, text in self.lines)


# ---- the project ------------------------------------------------------------------------------


def make_project(root: Path) -> dict[str, Any]:
    """2,000 files, ~21 MB: small text files in nested packages, medium text/binary, a few 1 MB blobs.

    About 50 of them are ignored by the .gitignore (build/, *.log, *.tmp), as in a real checkout.
    """
    rng = random.Random(20240601)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 10))) for _ in range(3000)]
    corpus = []
    size = 0
    while size < 1 << 20:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) + "\n"
        corpus.append(line)
        size += len(line)
    text = "".join(corpus).encode()

    def text_bytes(n: int) -> bytes:
        start = rng.randrange(0, len(text) - n) if n < len(text) else 0
        return text[start : start + n]

    root.mkdir(parents=True)
    files: list[tuple[str, bytes]] = [
        ("pyproject.toml", b"[project]\nname = 'bench'\nversion = '0'\n"),
        (".gitignore", GITIGNORE.encode()),
        ("s.py", LAUNCH_SCRIPT.encode()),
        ("quick.py", QUICK_SCRIPT.encode()),
        ("fanout.py", FANOUT_SCRIPT.encode()),
    ]
    for i in range(2):
        files.append(("assets/blob%d.bin" % i, rng.randbytes(1 << 20)))
    for i in range(130):
        n = rng.randint(20_000, 100_000)
        if i % 2:
            files.append(("assets/medium/m%03d.dat" % i, rng.randbytes(n)))
        else:
            files.append(("docs/section%d/page%03d.md" % (i % 7, i), text_bytes(n)))
    for i in range(20):
        files.append(("build/lib/gen%02d.py" % i, text_bytes(rng.randint(500, 8000))))
    for i in range(20):
        files.append(("logs/run%02d.log" % i, text_bytes(rng.randint(500, 8000))))
    for i in range(10):
        files.append(("src/cache%02d.tmp" % i, text_bytes(rng.randint(500, 8000))))
    i = 0
    while len(files) < PROJECT_FILES:
        pkg, mod = i % 12, (i // 12) % 6
        path = "src/pkg%02d/mod%d/sub%d/file%04d.py" % (pkg, mod, i % 3, i)
        files.append((path, text_bytes(rng.randint(500, 12_000))))
        i += 1
    total = 0
    for rel, data in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += len(data)
    ignored = sum(1 for rel, _ in files if rel.startswith("build/") or rel.endswith((".log", ".tmp")))
    dirs = sum(1 for p in root.rglob("*") if p.is_dir())
    return {"files": len(files), "bytes": total, "ignored_files": ignored, "dirs": dirs}


def count_files(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file())


# ---- 1. code sync ---------------------------------------------------------------------------------


def bench_sync(transport: Any, host: Any, project: Path, reps: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from runctl.transport import ignore
    from runctl.transport.sync import code_filters, sync_code

    remote_root = host.home / "bench-sync"
    remote_root.mkdir()
    target = transport.dest.target
    transport.ensure_master()
    rsh = transport.rsync_rsh()

    def runctl_sync(remote: Path) -> float:
        started = time.perf_counter()
        sync_code(transport, project, str(remote), [])
        return time.perf_counter() - started

    def rsync(flags: list[str], remote: Path) -> float:
        started = time.perf_counter()
        proc = subprocess.run(
            ["rsync", *flags, "-e", rsh, str(project) + "/", "%s:%s/" % (target, remote)],
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - started
        check(proc, "rsync %s" % " ".join(flags))
        return seconds

    def plain_rsync(remote: Path) -> float:
        return rsync(["-a"], remote)

    rules_file = remote_root.parent / "bench-ignore.rules"
    rules_file.write_text("".join(rule + "\n" for rule in ignore.collect(project)))

    def runctl_flags_only(remote: Path) -> float:
        """sync_code's rsync command by itself: its flags and filters, without the ignore-file walk."""
        return rsync(["-az", "--delete", "--stats", *code_filters([], str(rules_file))], remote)

    # Warm the local page cache and the remote side once, outside the measurements.
    runctl_sync(remote_root / "warmup-runctl")
    plain_rsync(remote_root / "warmup-rsync")

    first_runctl, first_rsync, first_flags, same_runctl, same_rsync, same_flags = [], [], [], [], [], []
    for i in range(reps):
        contenders = [
            (first_runctl, runctl_sync, remote_root / ("runctl-%d" % i)),
            (first_rsync, plain_rsync, remote_root / ("rsync-%d" % i)),
            (first_flags, runctl_flags_only, remote_root / ("flags-%d" % i)),
        ]
        for samples, fn, remote in contenders if i % 2 == 0 else reversed(contenders):
            if remote.exists():
                raise SystemExit("remote dir %s exists before a first-time sync" % remote)
            samples.append(fn(remote))
    for i in range(2 * reps + 1):
        contenders = [
            (same_runctl, runctl_sync, remote_root / "runctl-0"),
            (same_rsync, plain_rsync, remote_root / "rsync-0"),
            (same_flags, runctl_flags_only, remote_root / "flags-0"),
        ]
        for samples, fn, remote in contenders if i % 2 == 0 else reversed(contenders):
            samples.append(fn(remote))

    sent = {
        "runctl_remote_files": count_files(remote_root / "runctl-0"),
        "rsync_remote_files": count_files(remote_root / "rsync-0"),
        "flags_only_first": median(first_flags),
        "flags_only_same": median(same_flags),
        "flags_only_first_samples": first_flags,
        "flags_only_same_samples": same_flags,
    }
    shutil.rmtree(remote_root, ignore_errors=True)
    rows = [
        row(
            "sync 2,000 files, first time",
            "s",
            median(first_runctl),
            "rsync -a, same ssh",
            median(first_rsync),
            1.3,
            "ratio",
            reps,
            samples=first_runctl,
            alternative_samples=first_rsync,
        ),
        row(
            "sync 2,000 files, nothing changed",
            "s",
            median(same_runctl),
            "rsync -a, same ssh",
            median(same_rsync),
            1.3,
            "ratio",
            2 * reps + 1,
            samples=same_runctl,
            alternative_samples=same_rsync,
        ),
    ]
    return rows, sent


# ---- 2 + 3. launch and completion detection -----------------------------------------------------------


def dest_of(host: Any) -> str:
    return host.address if host.port == 22 else "%s:%d" % (host.address, host.port)


def runctl_json(args: list[str], cwd: Path, env: dict[str, str]) -> Any:
    proc = subprocess.run([RUNCTL, *args], cwd=str(cwd), env=env, capture_output=True, stdin=subprocess.DEVNULL)
    check(proc, "runctl " + " ".join(args))
    return json.loads(proc.stdout)


def warm_up(host: Any, project: Path, env: dict[str, str]) -> None:
    """Ship the agent, sync the code, bring the master up: the host is ready afterwards."""
    argv = [RUNCTL, "ssh", "train", dest_of(host), "quick.py", "--project-name", "bench", "--wait"]
    proc = subprocess.run(argv, cwd=str(project), env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    check(proc, "warm-up launch on %s" % host.name)


def bench_launch(host: Any, project: Path, env: dict[str, str], reps: int) -> tuple[list[dict[str, Any]], list]:
    first_line, synced, started_msg = [], [], []
    final_line, exited, ended = [], [], []
    details = []
    for _ in range(reps):
        argv = [RUNCTL, "ssh", "train", dest_of(host), "s.py", "--project-name", "bench", "--wait"]
        run = Streamed(argv, project, env)
        t_exit = run.wait(60)
        if run.proc.returncode != 0:
            raise SystemExit("runctl ssh train s.py --wait exited %d:\n%s" % (run.proc.returncode, run.text()))
        got = run.first("out", FIRST_LINE)
        if got is None:
            raise SystemExit("the first log line never reached the CLI's stdout:\n" + run.text())
        t_first = got[0]
        match = re.search(r"run ([0-9a-f]{8}) ", run.text())
        if not match:
            raise SystemExit("no run id in the CLI's output:\n" + run.text())
        status = runctl_json(["runs", "status", match.group(1), "-o", "json"], project, env)
        if status["status"] != "completed":
            raise SystemExit("run %s ended %s, expected completed" % (match.group(1), status["status"]))
        stamp = float((Path(status["run_dir"]) / "exit_time.txt").read_text())
        last = run.last("err")
        assert last is not None
        sync_line = run.first("err", "synced ")
        start_line = run.first("err", " started on ")
        first_line.append(t_first - run.started)
        synced.append((sync_line[0] - run.started) if sync_line else float("nan"))
        started_msg.append((start_line[0] - run.started) if start_line else float("nan"))
        final_line.append(last[0] - stamp)
        exited.append(t_exit - stamp)
        ended.append(float(status["ended_at"]) - stamp)
        details.append(
            {
                "run_id": match.group(1),
                "cli_start_to": {
                    "synced_line": round(synced[-1], 3),
                    "started_line": round(started_msg[-1], 3),
                    "first_log_line": round(first_line[-1], 3),
                },
                "script_exit_to": {
                    "ended_at": round(ended[-1], 3),
                    "final_line": round(final_line[-1], 3),
                    "cli_exit": round(exited[-1], 3),
                },
                "final_line": last[1],
            }
        )
    rows = [
        row(
            "launch: CLI start -> first log line",
            "s",
            median(first_line),
            "of which: to 'synced'",
            median(synced),
            2.0,
            reps=reps,
            samples=first_line,
            synced_samples=synced,
            started_samples=started_msg,
        ),
        row(
            "completion: exit -> CLI final line",
            "s",
            median(final_line),
            "exit -> CLI exit",
            median(exited),
            1.0,
            reps=reps,
            samples=final_line,
            alternative_samples=exited,
        ),
        row(
            "completion: exit -> ended_at",
            "s",
            median(ended),
            "",
            None,
            1.0,
            reps=reps,
            samples=ended,
        ),
    ]
    return rows, details


# ---- 4. many runs, one controller --------------------------------------------------------------------


def launch_fanout(hosts: list[Any], project: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """Start 10 runs per host without --wait (4 CLI processes at a time, as a shell loop with `&` would)."""

    def start(host: Any) -> dict[str, Any]:
        started = time.perf_counter()
        out = runctl_json(
            [
                "ssh",
                "train",
                dest_of(host),
                "fanout.py",
                "--project-name",
                "bench",
                "-o",
                "json",
                "--",
                str(FANOUT_TICKS),
            ],
            project,
            env,
        )
        out["launch_seconds"] = time.perf_counter() - started
        return out

    order = [host for _ in range(FANOUT_RUNS_PER_HOST) for host in hosts]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(start, order))


class ChildSampler(threading.Thread):
    """Samples, from outside, the ssh processes whose parent is `pid`: how many at once, their RSS summed."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.done = threading.Event()
        self.peak_alive = 0
        self.peak_rss_kib = 0

    def run(self) -> None:
        while not self.done.is_set():
            alive, rss = 0, 0
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    status = Path("/proc/%s/status" % entry).read_text()
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                if fields.get("Name", "").strip() != "ssh" or int(fields.get("PPid", "0")) != self.pid:
                    continue
                alive += 1
                rss += int(fields.get("VmRSS", "0 kB").split()[0])
            self.peak_alive = max(self.peak_alive, alive)
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            self.done.wait(0.25)


def bench_fanout(hosts: list[Any], project: Path, env: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    runs = launch_fanout(hosts, project, env)
    run_ids = [r["run_id"] for r in runs]
    driver = subprocess.Popen(
        [PY, str(Path(__file__).resolve()), "--follow-driver", *run_ids],
        cwd=str(project),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert driver.stdout is not None
    sampler = ChildSampler(driver.pid)
    sampler.start()
    ready = driver.stdout.readline()
    if ready.strip() != "following":
        driver.kill()
        raise SystemExit(
            "follow driver failed to start: %s %s" % (ready, driver.stderr.read() if driver.stderr else "")
        )
    for host in hosts:
        (host.home / "runctl" / "bench" / "GO").write_text("go\n")
    out, err = driver.communicate(timeout=FANOUT_TICKS + 90)
    sampler.done.set()
    sampler.join(5)
    for host in hosts:
        (host.home / "runctl" / "bench" / "GO").unlink(missing_ok=True)
    if driver.returncode != 0:
        raise SystemExit("follow driver failed (exit %d): %s" % (driver.returncode, err[-1500:]))
    result = json.loads(out)
    result["ssh_peak_alive"] = sampler.peak_alive
    result["ssh_peak_rss_kib"] = sampler.peak_rss_kib
    bad = [r for r in result["runs"] if r["status"] != "completed" or r["ticks"] != FANOUT_TICKS or r["dupes"]]
    if bad:
        raise SystemExit("runs followed wrongly: %s" % json.dumps(bad))
    cpu = result["cpu_user"] + result["cpu_sys"]
    launches = [r["launch_seconds"] for r in runs]
    result["launch_seconds_median"] = median(launches)
    result["launch_seconds_max"] = max(launches)
    n = len(run_ids)
    rows = [
        row(
            "%d runs/%d hosts, 1 controller: CPU" % (n, len(hosts)),
            "%",
            100.0 * cpu / result["wall"],
            "ssh children CPU",
            100.0 * result["children_cpu"] / result["wall"],
            reps=1,
            window_seconds=result["wall"],
            cpu_seconds=cpu,
        ),
        row(
            "%d runs/%d hosts, 1 controller: RSS" % (n, len(hosts)),
            "MiB",
            result["maxrss_kib"] / 1024,
            "its ssh children, summed",
            result["ssh_peak_rss_kib"] / 1024,
            reps=1,
        ),
        row(
            "%d runs/%d hosts, 1 controller: ssh" % (n, len(hosts)),
            "procs",
            float(result["ssh_spawned"]),
            "peak alive at once",
            float(result["ssh_peak_alive"]),
            reps=1,
        ),
    ]
    return rows, result


def follow_driver(run_ids: list[str]) -> int:
    """One controller process: one thread per run, each calling runctl.controller.follow()."""
    import subprocess as sp

    from runctl import controller
    from runctl.store import Store

    spawned: list[str] = []
    spawned_lock = threading.Lock()
    base_popen = sp.Popen

    class CountingPopen(base_popen):  # type: ignore[misc, valid-type]
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            name = os.path.basename(str(args[0] if isinstance(args, (list, tuple)) else str(args).split()[0]))
            with spawned_lock:
                spawned.append(name)
            super().__init__(args, *rest, **kwargs)

    sp.Popen = CountingPopen  # type: ignore[misc]

    results: dict[str, dict[str, Any]] = {}

    def follow_one(run_id: str) -> None:
        store = Store()
        lines: list[bytes] = []
        buffer = [b""]

        def on_log(data: bytes) -> None:
            buffer[0] += data
            *complete, buffer[0] = buffer[0].split(b"\n")
            lines.extend(complete)

        row = store.get(run_id)
        assert row is not None
        try:
            view = controller.follow(store, row, on_log, timeout=FANOUT_TICKS + 60)
            status = view["status"]
        except Exception as exc:
            status = "error: %s" % exc
        ticks = [line for line in lines if line.startswith(b"tick ")]
        results[run_id] = {
            "run_id": run_id,
            "status": status,
            "ticks": len(set(ticks)),
            "dupes": len(ticks) - len(set(ticks)),
            "lines": len(lines),
        }
        store.close()

    before = resource.getrusage(resource.RUSAGE_SELF)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    threads = [threading.Thread(target=follow_one, args=(run_id,)) for run_id in run_ids]
    for thread in threads:
        thread.start()
    print("following", flush=True)
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "wall": wall,
                "cpu_user": after.ru_utime - before.ru_utime,
                "cpu_sys": after.ru_stime - before.ru_stime,
                "children_cpu": (children_after.ru_utime - children_before.ru_utime)
                + (children_after.ru_stime - children_before.ru_stime),
                "maxrss_kib": after.ru_maxrss,
                "ssh_spawned": sum(1 for name in spawned if name == "ssh"),
                "other_spawned": sorted({name for name in spawned if name != "ssh"}),
                "threads": len(threads),
                "runs": [results.get(run_id, {"run_id": run_id, "status": "missing"}) for run_id in run_ids],
            }
        )
    )
    return 0


# ---- report ----------------------------------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    if value is None or value != value:
        return "-"
    if unit == "s":
        return "%.3f s" % value
    if unit == "%":
        return "%.1f %%" % value
    if unit == "MiB":
        return "%.1f MiB" % value
    return "%g" % value


TABLE_LINE = "%-38s %11s  %-22s %11s  %7s  %-10s %s"
TABLE_TITLES = ("measurement (median)", "runctl", "beside it", "", "ratio", "target")


def cells(r: dict[str, Any]) -> tuple[str, ...]:
    """A row's columns in the table, before its verdict."""
    ratio = "-" if r["ratio"] is None or r["target_on"] != "ratio" else "x%.2f" % r["ratio"]
    if r["target"] is None:
        target = "-"
    elif r["target_on"] == "ratio":
        target = "x <= %g" % r["target"]
    else:
        target = "<= %g %s" % (r["target"], r["unit"])
    alternative = fmt(r["alternative_value"], r["unit"]) if r["alternative"] else ""
    return (r["name"], fmt(r["measured"], r["unit"]), r["alternative"], alternative, ratio, target)


def print_table(header: dict[str, Any], rows: list[dict[str, Any]], notes: list[str]) -> None:
    print(
        "python %s | %s cores | %s | hosts: %s | project: %d files, %.1f MB (%d gitignored)"
        % (
            header["python"],
            header["cores"],
            header["platform"],
            header["hosts"],
            header["project"]["files"],
            header["project"]["bytes"] / 1e6,
            header["project"]["ignored_files"],
        )
    )
    print()
    print_rows(TABLE_LINE, TABLE_TITLES, rows, cells)
    print()
    for note in notes:
        print(note)


def main() -> int:
    parser = arguments(__doc__, "repetitions of each measurement (default 5)")
    parser.add_argument("--follow-driver", nargs="+", metavar="RUN_ID", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.follow_driver:
        return follow_driver(args.follow_driver)
    require_runctl()
    sys.path.insert(0, str(REPO))
    from tests.support.sshhosts import start_hosts

    bench_started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="runctl-bench-ssh-") as tmp:
        root = Path(tmp)
        os.environ["RUNCTL_HOME"] = str(root / "home")
        os.environ.pop("RUNCTL_DEBUG", None)
        hosts = start_hosts(2, root / "hosts")
        transports: list[Any] = []
        try:
            config = root / "ssh_config"
            config.write_text(
                "Host *\n  UserKnownHostsFile %s\n  IdentityFile %s\n  IdentitiesOnly yes\n  User root\n"
                % (hosts.known_hosts, hosts.client_key)
            )
            os.environ["RUNCTL_SSH_CONFIG"] = str(config)
            env = dict(os.environ)
            env.pop("PYTHONUNBUFFERED", None)

            from runctl.transport.ssh import Dest, SshTransport

            for host in hosts:
                transports.append(SshTransport(Dest.parse(dest_of(host))))
            project = root / "project"
            shape = make_project(project)

            rows, sync_files = bench_sync(transports[0], hosts[0], project, args.reps)
            for host in hosts:
                warm_up(host, project, env)
            launch_rows, launch_details = bench_launch(hosts[0], project, env, args.reps)
            rows += launch_rows
            fanout_rows, fanout = bench_fanout(list(hosts), project, env)
            rows += fanout_rows
        finally:
            for transport in transports:
                transport.drop_master()
            hosts.teardown()
    header = {
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "hosts": "2, network namespaces" if hosts.use_netns else "2, sshd on loopback ports",
        "project": shape,
        "total_seconds": time.monotonic() - bench_started,
    }
    notes = [
        "sync: files on the host after one sync: runctl %(runctl_remote_files)d (.gitignore honoured), "
        "rsync -a %(rsync_remote_files)d" % sync_files,
        "sync: sync_code's rsync command alone (-az --delete --stats + filters, without the ignore-file walk and "
        "`ssh -O check` round trips before it): first %(flags_only_first).3f s, nothing changed %(flags_only_same).3f s"
        % sync_files,
        "launch breakdown (median from CLI start): 'synced' line %.3f s, 'started' line %.3f s, first log line %.3f s"
        % (
            median(launch_rows[0]["synced_samples"]),
            median(launch_rows[0]["started_samples"]),
            launch_rows[0]["measured"],
        ),
        "fan-out: %d runs started in %.1f s each (median, 4 CLIs at a time; max %.1f s); "
        "followed for %.1f s by %d threads, each run %d ticks, no duplicate line; other processes spawned: %s"
        % (
            len(fanout["runs"]),
            fanout["launch_seconds_median"],
            fanout["launch_seconds_max"],
            fanout["wall"],
            fanout["threads"],
            FANOUT_TICKS,
            ", ".join(fanout["other_spawned"]) or "none",
        ),
        "repetitions per row: %s; total %.0f s" % (", ".join(str(r["reps"]) for r in rows), header["total_seconds"]),
    ]
    document = {"environment": header, "results": rows, "launch_runs": launch_details, "fanout": fanout}
    return report(rows, args.json, document, functools.partial(print_table, header, rows, notes))


if __name__ == "__main__":
    sys.exit(main())
