"""runctl on Lambda Labs, measured against the Lambda API fake and a real sshd test host.

    .venv/bin/python bench/lambda.py [--json] [--reps N]

Run it as root: it starts one OpenSSH test host in a network namespace (tests/support/sshhosts.py)
and the Lambda API fake (tests/support/lambda_fake.py) with rate limits a tenth of Lambda's (0.1 s
between requests, 1.2 s between launches), the client's limiter scaled the same way.

1. Policy fires -> terminate requested: the script writes a 1 MB checkpoint, reports a loss below
   --auto-stop-loss, notes time.time(), and trains on; `runctl lambda train --instance-type ...
   --wait` stops it, pulls and verifies the checkpoint, and asks Lambda to terminate. Measured from
   the report to the terminate request reaching the API (the fake's clock). Target <= 2 s plus the
   pull; beside it seed 004's documented 3 polls of its 10 s default interval (not measured here).
2. API calls per launched-and-terminated run (the same runs): every request the fake received,
   and how many it refused with 429. Target: no 429 at all, i.e. no more calls than the limits allow.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import RUNCTL, arguments, make_row, median, print_rows, report, require_runctl
from _common import check as _check

REPO = Path(__file__).resolve().parent.parent
SEED_POLLS = 3 * 10.0  # seed 004: "requires 3 polls" of its default interval

SCRIPT = """\
import os, time
import runctl.training as rt
ckpt = os.environ["RUNCTL_CHECKPOINT_DIR"]
os.makedirs(ckpt, exist_ok=True)
with open(os.path.join(ckpt, "best.pt.tmp"), "wb") as f:
    f.write(os.urandom(1 << 20))
os.replace(os.path.join(ckpt, "best.pt.tmp"), os.path.join(ckpt, "best.pt"))
rt.report(step=1, epoch=1, total_epochs=10, loss=0.1)
print("t_low_loss=%r" % time.time(), flush=True)
while not rt.should_stop():
    time.sleep(0.05)
"""


def endpoint(path: str) -> str:
    route = path[len("/api/v1") :]
    return "/instances/{id}" if route.startswith("/instances/") else route


class Bench:
    def __init__(self, root: Path, reps: int) -> None:
        from tests.support.lambda_fake import LambdaFake
        from tests.support.sshhosts import start_hosts_with_poweroff_fake

        self.root, self.reps = root, reps
        self.hosts = start_hosts_with_poweroff_fake(1, root / "hosts")
        config = root / "ssh_config"
        config.write_text(
            "Host *\n  UserKnownHostsFile %s\n  IdentityFile %s\n  IdentitiesOnly yes\n  User root\n"
            % (self.hosts.known_hosts, self.hosts.client_key)
        )
        self.fake = LambdaFake([h.address for h in self.hosts], boot_seconds=2.0, request_interval=0.1,
                               launch_interval=1.2).start()  # fmt: skip
        self.fake.reset()
        self.fake.boot_seconds = 2.0
        self.env = {**os.environ, **self.fake.env(), "RUNCTL_SSH_CONFIG": str(config), "RUNCTL_LAMBDA_POLL": "0.5"}
        self.env.pop("PYTHONUNBUFFERED", None)
        self.project = root / "proj"
        self.project.mkdir()
        (self.project / "pyproject.toml").write_text("[project]\nname = 'proj'\nversion = '0'\n")
        (self.project / "s.py").write_text(SCRIPT)

    def close(self) -> None:
        self.fake.stop()
        self.hosts.teardown()

    def one_run(self) -> tuple[float, int, int, dict[str, int]]:
        """(seconds from the low loss to the terminate request, calls, 429s, calls by endpoint)."""
        self.fake.calls.clear()
        argv = [RUNCTL, "lambda", "train", "--instance-type", "gpu_1x_a10", "s.py", "--ssh-user", "root",
                "--wait", "--auto-stop-loss", "0.5", "--auto-stop-patience", "1"]  # fmt: skip
        proc = subprocess.run(argv, cwd=self.project, env=self.env, capture_output=True, text=True, timeout=300)
        _check(proc, "lambda train")
        low = [float(line.split("=", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("t_low_loss=")]
        asked = [c[0] for c in self.fake.calls if c[1] == "POST" and c[2].endswith("/terminate")]
        if not low or not asked:
            raise SystemExit("no low-loss report or no terminate request seen:\n" + proc.stderr[-800:])
        if self.fake.live():
            raise SystemExit("an instance was left running: %s" % [i.id for i in self.fake.live()])
        by = Counter("%s %s" % (c[1], endpoint(c[2])) for c in self.fake.calls)
        return asked[0] - low[0], len(self.fake.calls), sum(1 for c in self.fake.calls if c[3] == 429), dict(by)

    def measure(self) -> tuple[list[float], list[int], list[int], dict[str, int]]:
        seconds, calls, limited = [], [], []
        by: dict[str, int] = {}
        for _ in range(self.reps):
            took, count, refused, by = self.one_run()
            seconds.append(took)
            calls.append(count)
            limited.append(refused)
        return seconds, calls, limited, by


def main() -> int:
    parser = arguments(__doc__, "launched-and-terminated runs (default 3)")
    parser.set_defaults(reps=3)
    args = parser.parse_args()
    require_runctl()
    sys.path.insert(0, str(REPO))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="runctl-bench-lambda-") as tmp:
        root = Path(tmp)
        os.environ["RUNCTL_HOME"] = str(root / "home")
        os.environ.pop("RUNCTL_DEBUG", None)
        bench = Bench(root, args.reps)
        try:
            seconds, calls, limited, by = bench.measure()
        finally:
            bench.close()
    reps = args.reps
    rows = [
        make_row("policy fires -> terminate requested (incl. 1 MB pull)", "s", median(seconds),
                 "seed 004: 3 polls of its default interval", SEED_POLLS, {}, 2.0, "measured, incl. pull",
                 median(seconds), reps, {"values": seconds}),
        make_row("API calls per launched-and-terminated run", "calls", median([float(c) for c in calls]),
                 "429s the fake returned (target 0)", float(max(limited)), {"calls_by_endpoint": by}, 0.0,
                 "429 responses", float(max(limited)), reps, {"values": calls, "refused_429": limited}),
    ]  # fmt: skip
    header = {
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "load_average": "%.2f" % os.getloadavg()[0],
        "platform": platform.platform(terse=True),
        "total_seconds": time.monotonic() - started,
    }
    line = "%-55s %9s %-42s %9s %7s  %s"

    def table() -> None:
        print("python %(python)s | %(cores)s cores | load %(load_average)s | %(platform)s" % header)
        print_rows(
            line,
            ("measurement", "runctl", "beside it", "value", "target"),
            rows,
            lambda r: (r["name"], "%.3f" % r["measured"], r["alternative"], "%.3f" % r["alternative_value"],
                       "<=%g" % r["target"]),
        )  # fmt: skip
        print("  calls by endpoint (last run): %s" % json.dumps(rows[1]["calls_by_endpoint"], sort_keys=True))

    document: dict[str, Any] = {"header": header, "rows": rows}
    return report(rows, args.json, document, table)


if __name__ == "__main__":
    raise SystemExit(main())
