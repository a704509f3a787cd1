"""Try spot interruptions and `--auto-resume` without an AWS account.

    sudo .venv/bin/python scripts/spot_emulated.py

The AWS emulator (moto) for EC2, SeaweedFS for S3, the IMDSv2 fake for the instance metadata
service, and one real OpenSSH host in a network namespace standing in for the spot instance (its
power-off a fake, never this machine's). The host has an instance role and an AWS config naming
the S3 and metadata endpoints, as an instance would; boto3 for its uploader comes from a
wheelhouse downloaded here once (`pip download boto3`), since the namespace has no index.

The tour: `aws create --spot`, then `aws train --checkpoint-s3 ... --auto-resume 1 --wait` in the
background; mid-run EC2 posts a notice (the fake), the run stops, its final checkpoint is verified
in S3 and the run ends `interrupted (spot_interruption)`; EC2 takes the instance; runctl relaunches
a spot instance like it, resumes from that checkpoint and completes. Then `runs status` of both.
RUNCTL_HOME is a temp dir, so your own runs are not touched.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RUNCTL = str(Path(sys.executable).parent / "runctl")
SCRIPT = "training/train_with_checkpoints.py"


def main() -> int:
    if os.geteuid() != 0:
        raise SystemExit("run it as root (it makes a network namespace for the stand-in instance)")
    sys.path.insert(0, str(REPO))
    from tests.support.aws import Ec2World, Hypervisor, MotoEmulator
    from tests.support.imds import Imds
    from tests.support.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server
    from tests.support.sshhosts import start_hosts_with_poweroff_fake

    with tempfile.TemporaryDirectory(prefix="runctl-spot-emulated-") as tmp:
        root = Path(tmp)
        wheels = root / "wheels"
        print("downloading boto3 wheels for the stand-in host's uploader ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(wheels), "boto3>=1.28"],
            check=True,
        )
        hosts = start_hosts_with_poweroff_fake(1, root / "hosts")
        emulator = hypervisor = s3 = imds = None
        try:
            host = hosts[0]
            host.check_poweroff_fake()
            s3 = S3Server()
            imds = Imds(address=s3.address)
            imds.set_role("runctl-demo-role", ACCESS_KEY, SECRET_KEY)
            (host.home / ".aws").mkdir(exist_ok=True)
            (host.home / ".aws" / "config").write_text(
                "[default]\nregion = %s\nendpoint_url = %s\nec2_metadata_service_endpoint = %s\n"
                % (REGION, s3.endpoint, imds.endpoint)
            )
            pip_conf = host.home / ".config" / "pip" / "pip.conf"
            pip_conf.parent.mkdir(parents=True, exist_ok=True)
            pip_conf.write_text("[global]\nno-index = true\nfind-links = %s\n" % wheels)
            bucket = s3.make_bucket("spot-demo")
            config = root / "ssh_config"
            config.write_text(
                "Host *\n  UserKnownHostsFile %s\n  IdentityFile %s\n  IdentitiesOnly yes\n"
                % (hosts.known_hosts, hosts.client_key)
            )
            emulator = MotoEmulator()
            for name in ("werkzeug", "moto"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
            public = hosts.client_key.with_name(hosts.client_key.name + ".pub").read_text()
            world = Ec2World.create(emulator, list(hosts), public)
            hypervisor = Hypervisor(emulator, list(hosts))
            hypervisor.start()
            env = {
                **os.environ,
                **emulator.env(),
                "AWS_ENDPOINT_URL_S3": s3.endpoint,
                "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "RUNCTL_SPOT_POLL_INTERVAL": "0.5",
                "RUNCTL_SSH_CONFIG": str(config),
                "RUNCTL_HOME": str(root / "home"),
            }
            create = [
                "aws", "create", "--instance-type", "g5.xlarge", "--spot", "--key-name", world.key_name,
                "--subnet", world.subnets[host.name], "--security-group", world.security_groups[host.name],
                "--private-ip", host.address, "--address", "private", "--ssh-user", "root",
                "-i", str(hosts.client_key), "--name", "cheap", "--wait",
            ]  # fmt: skip
            return tour(env, create, bucket, world, host, imds)
        finally:
            if hypervisor is not None:
                hypervisor.stop()
            for service in (imds, s3, emulator):
                if service is not None:
                    service.stop()
            hosts.teardown()


def run(env: dict[str, str], *argv: str) -> int:
    print("\n$ runctl " + shlex.join(argv), flush=True)
    return subprocess.run([RUNCTL, *argv], env=env, cwd=REPO / "examples").returncode


def status(env: dict[str, str], run_id: str) -> dict[str, Any]:
    out = subprocess.run(
        [RUNCTL, "runs", "status", run_id, "-o", "json"], env=env, cwd=REPO / "examples", capture_output=True, text=True
    ).stdout
    return json.loads(out) if out.strip() else {}


def runs(env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [RUNCTL, "runs", "list", "--all", "-o", "json"], env=env, capture_output=True, text=True
    ).stdout
    return [r["run_id"] for r in json.loads(out or "[]")]


def tour(env: dict[str, str], create: list[str], bucket: str, world: Any, host: Any, imds: Any) -> int:
    from tests.support.aws import spot_reclaim

    if run(env, *create) != 0:
        return 1
    instance = world.client().describe_instances()["Reservations"][0]["Instances"][0]["InstanceId"]
    train = [
        "aws", "train", "cheap", SCRIPT, "--project-dir", ".", "--checkpoint-s3", "s3://%s/ck" % bucket,
        "--auto-resume", "1", "--wait", "--", "--epochs", "2", "--steps-per-epoch", "20", "--delay", "0.3",
    ]  # fmt: skip
    print("\n$ runctl " + shlex.join(train) + "   (in the background)", flush=True)
    follower = subprocess.Popen([RUNCTL, *train], env=env, cwd=REPO / "examples")
    first = wait_for(lambda: runs(env), 120)[0]
    wait_for(lambda: (status(env, first).get("step") or 0) >= 8, 180)
    notice = imds.schedule("terminate", at=time.time() + 120)
    print("\n(EC2 posts a spot interruption notice: %s)" % json.dumps(notice), flush=True)
    run_dir = host.home / "runctl" / "examples" / ".runctl" / "runs" / first
    wait_for(lambda: "checkpoint_uploads_finished" in (run_dir / "events.jsonl").read_text(), 120)
    print("\n(EC2 takes the instance %s)" % instance, flush=True)
    imds.clear()
    spot_reclaim(world.client(), instance)
    code = follower.wait(600)
    for run_id in runs(env)[::-1]:
        run(env, "runs", "status", run_id)
    run(env, "checkpoint", "list", "s3://%s/ck" % bucket)
    run(env, "aws", "list", "--all")
    return code


def wait_for(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (OSError, ValueError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.5)


if __name__ == "__main__":
    raise SystemExit(main())
