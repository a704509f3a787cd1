"""runctl on EC2, measured against the AWS emulator (moto) and a real sshd test host, beside the
alternatives in the same run.

    .venv/bin/python bench/aws.py [--json] [--reps N]

Run it as root: it starts one OpenSSH test host in a network namespace with the power-off fake
(tests/support/sshhosts.py; the real power-off is never reached), moto in server mode with a
failing-proxy recorder in front (tests/support/aws.py), an instance launched at the host's private
address, and the test hypervisor that turns the host's power-off into the emulator's stop.

1. Idle paid seconds after the work, controller present: the script writes time.time() as its
   last act and exits; `runctl aws train ID s.py --on-end stop --wait` pulls its checkpoint and
   calls StopInstances. Measured from the script's exit to the StopInstances request reaching the
   API (the proxy's clock). Target <= 2 s plus the checkpoint pull (a 1 MB checkpoint here).
2. The same with the controller gone: `aws train ... --on-end stop` without --wait (the CLI exits
   right after the launch). The agent powers the host off after the run; measured from the
   script's exit to that power-off (the host's own request to end the bill, which EC2 turns into
   a stop). Target <= 5 s. Beside both: the original system's documented 5-minute wait and
   SkyPilot's 60 s minimum autostop (documented figures, not measured here).
3. `aws train` on a running instance, 1 s script, --wait: wall time beside `runctl ssh train` to
   the same host and project. Target: at most 1.5 s added.
4. `runctl aws list --all -o json` with 200 instances: wall time, beside a fresh Python process
   doing the one paginated boto3 describe_instances (the obvious alternative). Target <= 1 s.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import PY, RUNCTL, arguments, make_row, median, print_rows, report, require_runctl
from _common import check as _check

REPO = Path(__file__).resolve().parent.parent
REACH = ["--ssh-user", "root", "--address", "private"]
ORIGINAL_WAIT = 300.0  # seed 001: "Wait 5 minutes after completion detection before stopping"
SKYPILOT_AUTOSTOP = 60.0  # `sky autostop -i 1`: idle minutes, checked every 60 s by the skylet

CHECKPOINT_SCRIPT = """\
import os, sys, time
ckpt = os.environ["RUNCTL_CHECKPOINT_DIR"]
os.makedirs(ckpt, exist_ok=True)
with open(os.path.join(ckpt, "final.pt.tmp"), "wb") as f:
    f.write(os.urandom(1 << 20))
os.replace(os.path.join(ckpt, "final.pt.tmp"), os.path.join(ckpt, "final.pt"))
print("loss=0.1", flush=True)
with open(os.environ["EXIT_FILE"], "w") as f:
    f.write(repr(time.time()))
"""

ONE_SECOND_SCRIPT = """\
import time
print("training", flush=True)
time.sleep(1.0)
"""


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> tuple[float, Any]:
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return time.monotonic() - started, proc


def check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    _check(proc, what)


def project(root: Path, name: str, script: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "pyproject.toml").write_text("[project]\nname = '%s'\nversion = '0'\n" % name)
    (folder / "s.py").write_text(script)
    return folder


class Bench:
    def __init__(self, root: Path, reps: int) -> None:
        from tests.support.aws import Ec2World, FaultProxy, Hypervisor, MotoEmulator
        from tests.support.sshhosts import start_hosts_with_poweroff_fake

        self.root, self.reps = root, reps
        self.hosts = start_hosts_with_poweroff_fake(1, root / "hosts")
        self.host = self.hosts[0]
        self.host.check_poweroff_fake()
        config = root / "ssh_config"
        config.write_text(
            "Host *\n  UserKnownHostsFile %s\n  IdentityFile %s\n  IdentitiesOnly yes\n  User root\n"
            % (self.hosts.known_hosts, self.hosts.client_key)
        )
        self.emulator = MotoEmulator()
        public = self.hosts.client_key.with_name(self.hosts.client_key.name + ".pub").read_text()
        self.world = Ec2World.create(self.emulator, list(self.hosts), public)
        self.hypervisor = Hypervisor(self.emulator, list(self.hosts))
        self.hypervisor.start()
        self.proxy = FaultProxy(self.emulator.url)
        self.env = {**os.environ, **self.proxy.env(), "RUNCTL_SSH_CONFIG": str(config)}
        self.env.pop("PYTHONUNBUFFERED", None)
        self.instance = self.world.launch_for(self.host, tags={"Name": "bench"})
        self.hypervisor.wait_for(self.instance, "running")
        self.host.wait_reachable(30)

    def close(self) -> None:
        self.hypervisor.stop()
        self.proxy.stop()
        self.emulator.stop()
        self.hosts.teardown()

    def runctl(self, *args: str, cwd: Path, extra: dict[str, str] | None = None) -> tuple[float, Any]:
        return run([RUNCTL, *args], cwd, {**self.env, **(extra or {})})

    def boot(self) -> None:
        """The instance running again and its host answering (after a stop)."""
        ec2 = self.emulator.client()
        state = ec2.describe_instances(InstanceIds=[self.instance])["Reservations"][0]["Instances"][0]["State"]
        if state["Name"] != "running":
            self.hypervisor.wait_for(self.instance, "stopped", 60)
            ec2.start_instances(InstanceIds=[self.instance])
            self.hypervisor.wait_for(self.instance, "running", 60)
        self.host.wait_reachable(60)

    # ---- 1 and 2: idle paid seconds -----------------------------------------------------------

    def idle(self, wait: bool) -> list[float]:
        folder = project(self.root, "idle-%s" % ("present" if wait else "gone"), CHECKPOINT_SCRIPT)
        values = []
        for i in range(self.reps):
            self.boot()
            exit_file = self.root / ("exit-%s-%d" % (wait, i))
            stops = len(self.proxy.calls_at("StopInstances"))
            offs = len(self.host.poweroff_calls())
            args = [
                "aws",
                "train",
                self.instance,
                "s.py",
                *REACH,
                "--on-end",
                "stop",
                "--env",
                "EXIT_FILE=%s" % exit_file,
            ]
            _, proc = self.runctl(*args, *(["--wait"] if wait else []), cwd=folder)
            check(proc, "aws train --on-end stop")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                done = self.proxy.calls_at("StopInstances")[stops:] if wait else self.host.poweroff_calls()[offs:]
                if done and exit_file.exists():
                    break
                time.sleep(0.05)
            else:
                raise SystemExit("no stop request within 120 s (controller %s)" % ("present" if wait else "gone"))
            requested = done[0] if wait else done[0][0]
            values.append(float(requested) - float(exit_file.read_text()))
            # The host's power-off becomes a stop on the hypervisor's next tick: wait for it, or
            # the next boot() may see the instance still running and train on a host going down.
            self.hypervisor.wait_for(self.instance, "stopped", 60)
        self.boot()
        return values

    # ---- 3: aws train beside ssh train --------------------------------------------------------

    def launch(self) -> tuple[list[float], list[float]]:
        folder = project(self.root, "launch", ONE_SECOND_SCRIPT)
        dest = "root@%s" % self.host.address
        for args in (
            ["ssh", "train", dest, "s.py", "--wait"],
            ["aws", "train", self.instance, "s.py", *REACH, "--wait"],
        ):
            _, proc = self.runctl(*args, cwd=folder)  # warm: agent shipped, env built, code synced
            check(proc, " ".join(args[:2]))
        aws, ssh = [], []
        for _ in range(self.reps):
            seconds, proc = self.runctl("ssh", "train", dest, "s.py", "--wait", cwd=folder)
            check(proc, "ssh train")
            ssh.append(seconds)
            seconds, proc = self.runctl("aws", "train", self.instance, "s.py", *REACH, "--wait", cwd=folder)
            check(proc, "aws train")
            aws.append(seconds)
        return aws, ssh

    # ---- 4: aws list with 200 instances --------------------------------------------------------

    def listing(self) -> tuple[list[float], list[float], int]:
        ec2 = self.emulator.client()
        ami = self.world.amis[next(iter(self.world.amis))]
        tags = [{"Key": "runctl:managed", "Value": "true"}, {"Key": "Name", "Value": "fleet"}]
        for _ in range(4):
            ec2.run_instances(
                ImageId=ami, InstanceType="g5.xlarge", MinCount=50, MaxCount=50,
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
            )  # fmt: skip
        env = {**self.env, **self.emulator.env()}  # straight to the emulator: no proxy hop for either
        describe = (
            "import boto3; c = boto3.client('ec2'); "
            "n = sum(len(r['Instances']) for p in c.get_paginator('describe_instances').paginate() "
            "for r in p['Reservations']); print(n)"
        )
        ours, alternative, count = [], [], 0
        for _ in range(self.reps):
            seconds, proc = run([RUNCTL, "aws", "list", "--all", "-o", "json"], self.root, env)
            check(proc, "aws list")
            count = len(json.loads(proc.stdout))
            ours.append(seconds)
            seconds, proc = run([PY, "-c", describe], self.root, env)
            check(proc, "boto3 describe_instances")
            alternative.append(seconds)
        return ours, alternative, count


def main() -> int:
    args = arguments(__doc__, "repetitions of each measurement (default 5)").parse_args()
    require_runctl()
    sys.path.insert(0, str(REPO))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="runctl-bench-aws-") as tmp:
        root = Path(tmp)
        os.environ["RUNCTL_HOME"] = str(root / "home")
        os.environ.pop("RUNCTL_DEBUG", None)
        bench = Bench(root, args.reps)
        try:
            present = bench.idle(wait=True)
            gone = bench.idle(wait=False)
            aws, ssh = bench.launch()
            ours, alternative, count = bench.listing()
        finally:
            bench.close()
    reps = args.reps
    rows = [
        make_row("idle s, controller present (exit -> StopInstances)", "s", median(present),
                 "original system's documented wait", ORIGINAL_WAIT,
                 {"vs_skypilot_autostop": SKYPILOT_AUTOSTOP}, 2.0, "measured, incl. 1 MB pull", median(present),
                 reps, {"values": present}),
        make_row("idle s, controller gone (exit -> host power-off)", "s", median(gone),
                 "SkyPilot's minimum autostop", SKYPILOT_AUTOSTOP, {"vs_original": ORIGINAL_WAIT}, 5.0,
                 "measured", median(gone), reps, {"values": gone}),
        make_row("aws train 1 s script --wait, added over ssh train", "s", median(aws) - median(ssh),
                 "ssh train (wall)", median(ssh), {"aws_train_wall": median(aws)}, 1.5, "added seconds",
                 median(aws) - median(ssh), reps, {"aws": aws, "ssh": ssh}),
        make_row("aws list, %d instances" % count, "s", median(ours), "boto3 describe_instances (new process)",
                 median(alternative), {"ratio": median(ours) / median(alternative)}, 1.0, "wall time",
                 median(ours), reps, {"values": ours, "alternative_values": alternative}),
    ]  # fmt: skip
    header = {
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "load_average": "%.2f" % os.getloadavg()[0],
        "platform": platform.platform(terse=True),
        "total_seconds": time.monotonic() - started,
    }
    line = "%-55s %9s %-40s %9s %7s  %s"

    def table() -> None:
        print("python %(python)s | %(cores)s cores | load %(load_average)s | %(platform)s" % header)
        print_rows(
            line,
            ("measurement", "runctl", "beside it", "value", "target"),
            rows,
            lambda r: (r["name"], "%.3f" % r["measured"], r["alternative"], "%.3f" % r["alternative_value"],
                       "<=%g" % r["target"]),
        )  # fmt: skip

    return report(rows, args.json, {"header": header, "rows": rows}, table)


if __name__ == "__main__":
    raise SystemExit(main())
