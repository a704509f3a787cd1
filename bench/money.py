"""runctl's money commands, measured against the AWS emulator (moto) and the Lambda API fake.

    .venv/bin/python bench/money.py [--json] [--reps N]

1. `runctl resources list --platform all -o json` with 200 instances (100 EC2 in moto, 100 in the
   Lambda fake, all tagged runctl's, no rate limit): wall time of the whole command (a new Python
   process, both APIs read, every instance recorded in the store). Target <= 1.5 s; beside it
   `aws list --all -o json` over the 100 EC2 ones.
2. The idle warning every command prints first: `runctl.idle.warn()` timed in a fresh process over
   that store (200 hosts, usage intervals, no warning due), after importing `runctl.store` (which
   `runs list` imports anyway). Target <= 10 ms added.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import PY, RUNCTL, arguments, check, make_row, median, print_rows, report, require_runctl

REPO = Path(__file__).resolve().parent.parent
PER_PLATFORM = 100
# `runs list` imports the store anyway: what the warning adds is the rest (its module, the reads).
WARN = (
    "import time, runctl.store; t = time.perf_counter(); from runctl.idle import warn; warn(); "
    "print(time.perf_counter() - t)"
)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    return time.monotonic() - started, proc


def fill(emulator: Any, fake: Any) -> None:
    """100 runctl instances on each platform."""
    from tests.support.lambda_fake import FakeInstance

    ec2 = emulator.client()
    ami = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"]
    image = ami[0]["ImageId"] if ami else "ami-12c6146b"
    tags = [{"Key": "runctl:managed", "Value": "true"}, {"Key": "Name", "Value": "fleet"}]
    for _ in range(PER_PLATFORM // 50):
        ec2.run_instances(
            ImageId=image, InstanceType="g5.xlarge", MinCount=50, MaxCount=50,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )  # fmt: skip
    now = time.time() - 5
    for n in range(PER_PLATFORM):
        instance = FakeInstance(
            secrets.token_hex(16), "gpu_1x_a10", "us-east-1", "fleet-%d" % n, "runctl-test",
            [{"key": "runctl-managed", "value": "true"}], "10.99.%d.%d" % (n // 250, n % 250 + 1), now,
        )  # fmt: skip
        fake.instances[instance.id] = instance


def beside(row: dict[str, Any]) -> str:
    return "-" if row["alternative_value"] is None else "%.3f" % row["alternative_value"]


def main() -> int:
    args = arguments(__doc__, "repetitions of each measurement (default 5)").parse_args()
    require_runctl()
    sys.path.insert(0, str(REPO))
    from tests.support.aws import MotoEmulator
    from tests.support.lambda_fake import LambdaFake

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="runctl-bench-money-") as tmp:
        root = Path(tmp)
        (root / "home").mkdir()
        for name in [name for name in os.environ if name.startswith("AWS_")]:
            del os.environ[name]
        emulator = MotoEmulator()
        fake = LambdaFake(["10.99.0.1"])
        fake.start()
        try:
            fill(emulator, fake)
            env = {**os.environ, **emulator.env(), **fake.env(), "RUNCTL_HOME": str(root / "home"), "HOME": tmp}
            env.pop("RUNCTL_DEBUG", None)
            env["RUNCTL_LAMBDA_RATE"] = "0,0"
            listing, aws_list, warning, count = [], [], [], 0
            for _ in range(args.reps):
                seconds, proc = timed([RUNCTL, "resources", "list", "--platform", "all", "-o", "json"], env)
                check(proc, "resources list")
                count = len(json.loads(proc.stdout))
                listing.append(seconds)
                seconds, proc = timed([RUNCTL, "aws", "list", "--all", "-o", "json"], env)
                check(proc, "aws list")
                aws_list.append(seconds)
                _, proc = timed([PY, "-c", WARN], env)
                check(proc, "idle warning")
                warning.append(float(proc.stdout.strip()) * 1000)
        finally:
            fake.stop()
            emulator.stop()
    reps = args.reps
    rows = [
        make_row("resources list --platform all, %d instances" % count, "s", median(listing),
                 "aws list --all (EC2 half only)", median(aws_list), {}, 1.5, "wall time", median(listing), reps,
                 {"values": listing, "alternative_values": aws_list}),
        make_row("idle warning before every command (200 hosts)", "ms", median(warning), "none", None, {}, 10.0,
                 "milliseconds added to runs list", median(warning), reps, {"values": warning}),
    ]  # fmt: skip
    header = {
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "load_average": "%.2f" % os.getloadavg()[0],
        "platform": platform.platform(terse=True),
        "total_seconds": time.monotonic() - started,
    }
    line = "%-50s %9s %-32s %9s %7s  %s"

    def table() -> None:
        print("python %(python)s | %(cores)s cores | load %(load_average)s | %(platform)s" % header)
        print_rows(
            line,
            ("measurement", "runctl", "beside it", "value", "target"),
            rows,
            lambda r: (r["name"], "%.3f" % r["measured"], r["alternative"], beside(r), "<=%g" % r["target"]),
        )

    return report(rows, args.json, {"header": header, "rows": rows}, table)


if __name__ == "__main__":
    raise SystemExit(main())
