"""Checkpoints and data through S3 with runctl, beside boto3 and the AWS CLI in the same run (SeaweedFS).

    .venv/bin/python bench/s3.py [--json] [--reps N] [--quick]

It starts SeaweedFS (tests/support/s3server.py, on 127.0.0.1) and works in a temp dir. `--quick`
uses smaller sizes and one repetition (a smoke run, not numbers to quote).

1. Upload of a 500 MB file (quick: 64 MB): runctl's verified upload (storage.s3.upload_file: SHA-256
   per part sent to S3, then HEAD read back and compared) beside `boto3 upload_file` (defaults,
   nothing read back) and `aws s3 cp`, when the AWS CLI is installed (else "aws cli: not installed").
   Wall seconds and CPU seconds per MB (this process for the in-process uploads, the child for the
   CLI; SeaweedFS's own CPU is in neither). Target: runctl's speed >= 0.95x the faster alternative.
2. End of a run with --checkpoint-s3: a local run's script writes its final checkpoint (256 MB,
   quick: 32 MB; atomically) and exits; the agent's end-of-run step waits for the proof
   `checkpoints_in_s3` and then runs its command (here a `date` into a file, where a cloud host
   would call stop or terminate). Measured: from the later of the script's exit and the final
   checkpoint verified in S3, to that command: the seconds added beyond the upload. Target <= 2 s.
3. `--data-s3` of 2,000 small objects (quick: 300), 4-12 KB each: runctl's host-side download
   (`agent s3-fetch` as the agent runs it, a new process) first into an empty dir, then with
   nothing changed, beside `aws s3 sync` the same two ways (or, without the CLI, a sequential boto3
   download and, unchanged, a listing plus size comparison). Target: no slower than the alternative.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import PY, arguments, make_row, median, print_rows, report

REPO = Path(__file__).resolve().parent.parent
MB = 1_000_000

FINAL_SCRIPT = """\
import os, time
from runctl import training as rt
size = int(os.environ["CKPT_BYTES"])
with rt.atomic_path(rt.checkpoint_dir() / "final.pt") as tmp:
    with open(tmp, "wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(os.urandom(1 << 20))
rt.report(step=1, loss=0.5)
with open(os.environ["EXIT_FILE"], "w") as f:
    f.write(repr(time.time()))
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def aws_cli() -> str | None:
    """The `aws` command, when one is installed and runs."""
    path = shutil.which("aws")
    if not path:
        return None
    try:
        ok = subprocess.run([path, "--version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return path if ok else None


def random_file(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        for _ in range(size // (1 << 20)):
            handle.write(os.urandom(1 << 20))
        handle.write(os.urandom(size % (1 << 20)))


class Bench:
    def __init__(self, root: Path, reps: int, quick: bool) -> None:
        from tests.support.s3server import S3Server

        self.root, self.reps, self.quick = root, reps, quick
        self.server = S3Server(prefer_netns=False)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.env.update(self.server.env(), RUNCTL_HOME=str(root / "home"))
        self.env.pop("RUNCTL_DEBUG", None)
        self.env.pop("PYTHONUNBUFFERED", None)
        self.aws = aws_cli()
        for key, value in self.server.env().items():  # in-process clients (runctl's) see the server too
            os.environ[key] = value

    def close(self) -> None:
        self.server.stop()

    def timed(self, call: Callable[[], Any], in_process: bool) -> tuple[float, float]:
        """(wall seconds, CPU seconds) of `call`: this process's CPU, or its children's."""
        cpu = time.process_time() if in_process else children_cpu()
        started = time.monotonic()
        call()
        wall = time.monotonic() - started
        return wall, (time.process_time() if in_process else children_cpu()) - cpu

    # ---- 1: one big upload -------------------------------------------------------------------------

    def upload(self) -> dict[str, Any]:
        from runctl.storage import s3

        size = (64 if self.quick else 500) * MB
        path = self.root / "big.bin"
        random_file(path, size)
        bucket = self.server.make_bucket()
        ours = s3.client()
        theirs = self.server.client()
        results: dict[str, list[tuple[float, float]]] = {"runctl": [], "boto3": [], "aws": []}

        def runctl_upload() -> None:
            done = s3.upload_file(ours, bucket, "runctl.bin", str(path))
            assert done["size"] == size

        def boto3_upload() -> None:
            theirs.upload_file(str(path), bucket, "boto3.bin")

        def aws_upload() -> None:
            assert self.aws is not None
            proc = subprocess.run(
                [self.aws, "s3", "cp", "--only-show-errors", str(path), "s3://%s/aws.bin" % bucket],
                env=self.env,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise SystemExit("aws s3 cp failed: %s" % proc.stderr.strip()[-500:])

        for _ in range(self.reps):
            results["runctl"].append(self.timed(runctl_upload, True))
            results["boto3"].append(self.timed(boto3_upload, True))
            if self.aws:
                results["aws"].append(self.timed(aws_upload, False))
            for key in ("runctl.bin", "boto3.bin", "aws.bin"):
                theirs.delete_object(Bucket=bucket, Key=key)
        path.unlink()
        return {"size": size, **results}

    # ---- 2: the end of a run -----------------------------------------------------------------------

    def end_of_run(self) -> list[dict[str, float]]:
        from tests.integration.test_s3_checkpoints import START

        project = self.root / "endrun"
        project.mkdir()
        (project / "pyproject.toml").write_text("[project]\nname = 'endrun'\nversion = '0'\n")
        (project / "s.py").write_text(FINAL_SCRIPT)
        bucket = self.server.make_bucket()
        size = (32 if self.quick else 256) * (1 << 20)
        values = []
        for i in range(self.reps):
            exit_file, stop_file = self.root / ("exit-%d" % i), self.root / ("stop-%d" % i)
            on_end = {
                "command": ["/bin/sh", "-c", 'date +%s.%N > "$0"', str(stop_file)],
                "after": ["checkpoints_in_s3"],
                "controller_grace": 0,
            }
            extra = {"checkpoint_s3": {"uri": "s3://%s/end" % bucket, "stable_seconds": 0.3}, "on_end": on_end}
            env = {**self.env, "CKPT_BYTES": str(size), "EXIT_FILE": str(exit_file)}
            proc = subprocess.run(
                [PY, "-c", START, "s.py", json.dumps(extra)], cwd=project, env=env, capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise SystemExit("starting the run failed: %s" % proc.stderr[-800:])
            run_id = proc.stdout.strip().splitlines()[-1]
            deadline = time.monotonic() + 300
            while not (stop_file.exists() and stop_file.read_text().strip()):
                if time.monotonic() > deadline:
                    raise SystemExit("the end-of-run command did not run within 300 s (run %s)" % run_id)
                time.sleep(0.05)
            events = [
                json.loads(line)
                for line in (project / ".runctl" / "runs" / run_id / "events.jsonl").read_text().splitlines()
            ]
            uploaded = [e for e in events if e["event"] == "checkpoint_uploaded" and e["name"] == "final.pt"]
            if not uploaded:
                raise SystemExit("run %s: the final checkpoint was never verified in S3" % run_id)
            exited, verified = float(exit_file.read_text()), float(uploaded[-1]["t"])
            stopped = float(stop_file.read_text())
            values.append(
                {
                    "beyond_upload": stopped - max(exited, verified),
                    "exit_to_stop": stopped - exited,
                    "upload_seconds": float(uploaded[-1]["seconds"]),
                }
            )
        return values

    # ---- 3: many small objects ---------------------------------------------------------------------

    def data(self) -> dict[str, Any]:
        count = 300 if self.quick else 2000
        bucket = self.server.make_bucket()
        client = self.server.client()
        total = 0
        for i in range(count):
            body = os.urandom(4096 + (i * 37) % 8192)
            total += len(body)
            client.put_object(Bucket=bucket, Key="ds/shard-%02d/item-%05d.bin" % (i % 20, i), Body=body)
        uri = "s3://%s/ds/" % bucket
        results: dict[str, list[tuple[float, float]]] = {
            k: [] for k in ("runctl_first", "runctl_same", "alt_first", "alt_same")
        }
        for rep in range(self.reps):
            project = self.root / ("data-%d" % rep)
            run_dir = project / ".runctl" / "runs" / "bench"
            run_dir.mkdir(parents=True)
            (run_dir / "spec.json").write_text(json.dumps({"project_dir": str(project), "data_s3": {"uri": uri}}))
            fetch = [PY, "-m", "runctl.agent", "s3-fetch", str(run_dir)]

            def runctl_fetch(fetch: list[str] = fetch) -> None:
                proc = subprocess.run(fetch, env=self.env, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit("s3-fetch failed: %s" % (proc.stdout + proc.stderr)[-800:])

            results["runctl_first"].append(self.timed(runctl_fetch, False))
            results["runctl_same"].append(self.timed(runctl_fetch, False))
            got = sorted(p for p in (project / "data").rglob("*.bin"))
            if len(got) != count:
                raise SystemExit("s3-fetch placed %d of %d objects" % (len(got), count))
            target = self.root / ("alt-%d" % rep)
            if self.aws:

                def alternative(target: Path = target) -> None:
                    assert self.aws is not None
                    proc = subprocess.run(
                        [self.aws, "s3", "sync", "--only-show-errors", uri, str(target)],
                        env=self.env,
                        capture_output=True,
                        text=True,
                    )
                    if proc.returncode != 0:
                        raise SystemExit("aws s3 sync failed: %s" % proc.stderr.strip()[-500:])

                results["alt_first"].append(self.timed(alternative, False))
                results["alt_same"].append(self.timed(alternative, False))
            else:
                download = functools.partial(self.sequential, client, bucket, target)
                results["alt_first"].append(self.timed(download, True))
                results["alt_same"].append(self.timed(download, True))
        return {"count": count, "bytes": total, **results}

    @staticmethod
    def sequential(client: Any, bucket: str, target: Path) -> None:
        """The boto3 way without the CLI: list, then get each object not already there at its size."""
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="ds/"):
            for obj in page.get("Contents") or []:
                path = target / obj["Key"][len("ds/") :]
                if path.exists() and path.stat().st_size == obj["Size"]:
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())


def main() -> int:
    parser = arguments(__doc__, "repetitions of each measurement (default 3)")
    parser.add_argument("--quick", action="store_true", help="small sizes and one repetition (a smoke run)")
    parser.set_defaults(reps=None)
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    sys.path.insert(0, str(REPO))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="runctl-bench-s3-") as tmp:
        bench = Bench(Path(tmp), reps, args.quick)
        try:
            up = bench.upload()
            ends = bench.end_of_run()
            data = bench.data()
        finally:
            bench.close()
    rows = [*upload_rows(up, reps, bench.aws is not None), end_row(ends, reps), *data_rows(data, reps, bench.aws)]
    header = {
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "load_average": "%.2f" % os.getloadavg()[0],
        "platform": platform.platform(terse=True),
        "aws_cli": bench.aws or "not installed",
        "quick": args.quick,
        "total_seconds": time.monotonic() - started,
    }
    line = "%-50s %10s %-36s %10s %8s %-16s %s"

    def table() -> None:
        print("python %(python)s | %(cores)s cores | load %(load_average)s | %(platform)s" % header)
        if not bench.aws:
            print("aws cli: not installed")
        print_rows(
            line,
            ("measurement", "runctl", "beside it", "value", "ratio", "target"),
            rows,
            lambda r: (
                r["name"], "%.3f" % r["measured"], r["alternative"],
                "-" if r["alternative_value"] is None else "%.3f" % r["alternative_value"],
                "%.2fx" % r["ratio"] if r.get("ratio") is not None else "-", r["target_label"],
            ),
        )  # fmt: skip
        print()
        for r in rows:
            if r.get("note"):
                print("  %s: %s" % (r["name"], r["note"]))

    return report(rows, args.json, {"header": header, "rows": rows}, table)


def upload_rows(up: dict[str, Any], reps: int, have_aws: bool) -> list[dict[str, Any]]:
    mb = up["size"] / MB
    wall = {k: median([w for w, _ in up[k]]) if up[k] else None for k in ("runctl", "boto3", "aws")}
    cpu = {k: median([c for _, c in up[k]]) / mb if up[k] else None for k in ("runctl", "boto3", "aws")}
    alternatives = {"boto3 upload_file": wall["boto3"]}
    if have_aws:
        alternatives["aws s3 cp"] = wall["aws"]
    faster_name = min(alternatives, key=lambda k: alternatives[k] or float("inf"))
    faster = alternatives[faster_name]
    assert wall["runctl"] is not None and faster is not None
    alt_key = "aws" if faster_name == "aws s3 cp" else "boto3"
    speed_ratio = faster / wall["runctl"]  # runctl's speed over the faster alternative's
    note = "MB/s: runctl %.0f, boto3 %.0f%s; CPU s/MB: runctl %.4f, boto3 %.4f%s%s" % (
        mb / wall["runctl"], mb / (wall["boto3"] or 1),
        ", aws %.0f" % (mb / wall["aws"]) if wall["aws"] else "",
        cpu["runctl"] or 0, cpu["boto3"] or 0,
        ", aws %.4f" % cpu["aws"] if cpu["aws"] is not None else "",
        "" if have_aws else "; aws cli: not installed",
    )  # fmt: skip
    return [
        make_row(
            "upload %d MB, verified (s)" % mb, "s", wall["runctl"], faster_name + " (s)", faster,
            {"ratio": speed_ratio, "cpu_s_per_mb": cpu["runctl"], "alt_cpu_s_per_mb": cpu[alt_key]},
            round(1 / 0.95, 4), "runctl s / faster s", wall["runctl"] / faster, reps,
            {"wall": wall, "cpu_s_per_mb": cpu, "note": note}, target_label="speed >= 0.95x",
        ),
        make_row(
            "upload CPU s per MB", "s/MB", cpu["runctl"] or 0.0, "boto3 upload_file", cpu["boto3"],
            {"ratio": (cpu["runctl"] or 0) / (cpu["boto3"] or 1)}, None, "info", None, reps,
            {"aws_cpu_s_per_mb": cpu["aws"]}, target_label="(info)",
        ),
    ]  # fmt: skip


def end_row(ends: list[dict[str, float]], reps: int) -> dict[str, Any]:
    beyond = median([e["beyond_upload"] for e in ends])
    upload = median([e["upload_seconds"] for e in ends])
    raw = median([e["exit_to_stop"] for e in ends])
    return make_row(
        "final ckpt verified -> stop command (s beyond upload)", "s", beyond, "exit -> stop, upload included", raw,
        {"ratio": None, "upload_seconds": upload}, 2.0, "seconds beyond the upload", beyond, reps,
        {"values": ends, "note": "final upload %.2fs; exit -> stop %.2fs" % (upload, raw)}, target_label="<= 2 s",
    )  # fmt: skip


def data_rows(data: dict[str, Any], reps: int, aws: str | None) -> list[dict[str, Any]]:
    alt = "aws s3 sync" if aws else "boto3 sequential"
    rows = []
    for kind, label in (("first", "first"), ("same", "unchanged")):
        ours = median([w for w, _ in data["runctl_" + kind]])
        theirs = median([w for w, _ in data["alt_" + kind]])
        cpu_ours = median([c for _, c in data["runctl_" + kind]])
        cpu_theirs = median([c for _, c in data["alt_" + kind]])
        rows.append(
            make_row(
                "--data-s3 %d objects, %s (s)" % (data["count"], label), "s", ours, "%s (s)" % alt, theirs,
                {"ratio": ours / theirs}, 1.0, "runctl s / %s s" % alt, ours / theirs, reps,
                {"cpu_s": cpu_ours, "alt_cpu_s": cpu_theirs,
                 "note": "%.1f MB; CPU s: runctl %.2f, %s %.2f" % (data["bytes"] / MB, cpu_ours, alt, cpu_theirs)},
                target_label="<= 1.0x",
            )
        )  # fmt: skip
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
