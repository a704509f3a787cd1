"""Try `runctl aws` and `runctl workflow` without an AWS account: the AWS emulator (moto) plus one
real OpenSSH host in a network namespace standing in for the instance.

    sudo .venv/bin/python scripts/aws_emulated.py           # a scripted tour, then everything is torn down
    sudo .venv/bin/python scripts/aws_emulated.py --shell   # prints the exports, keeps it up until Ctrl-C

It needs root (network namespaces). The emulator listens on 127.0.0.1; every instance runctl makes
here is launched into a private subnet at the test host's address (`--private-ip`), so runctl really
syncs, trains and follows over SSH. The test host's power-off is a fake that tells the emulator to
stop or terminate the instance, as EC2's shutdown behaviour would: nothing here powers this machine
off. RUNCTL_HOME is a temp dir, so your own runs are not touched.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNCTL = str(Path(sys.executable).parent / "runctl")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shell", action="store_true", help="keep it running and print the exports to use it")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run it as root (it makes a network namespace for the stand-in instance)")
    sys.path.insert(0, str(REPO))
    from tests.support.aws import Ec2World, Hypervisor, MotoEmulator
    from tests.support.sshhosts import start_hosts_with_poweroff_fake

    with tempfile.TemporaryDirectory(prefix="runctl-aws-emulated-") as tmp:
        root = Path(tmp)
        hosts = start_hosts_with_poweroff_fake(1, root / "hosts")
        emulator = hypervisor = None
        try:
            host = hosts[0]
            host.check_poweroff_fake()
            config = root / "ssh_config"
            config.write_text(
                "Host *\n  UserKnownHostsFile %s\n  IdentityFile %s\n  IdentitiesOnly yes\n"
                % (hosts.known_hosts, hosts.client_key)
            )
            emulator = MotoEmulator()
            for name in ("werkzeug", "moto"):  # the emulator's own chatter (e.g. the Pricing API it lacks)
                logging.getLogger(name).setLevel(logging.CRITICAL)
            public = hosts.client_key.with_name(hosts.client_key.name + ".pub").read_text()
            world = Ec2World.create(emulator, list(hosts), public)
            hypervisor = Hypervisor(emulator, list(hosts))
            hypervisor.start()
            env = {**os.environ, **emulator.env(), "RUNCTL_SSH_CONFIG": str(config), "RUNCTL_HOME": str(root / "home")}
            create = [
                "--instance-type", "g5.xlarge", "--key-name", world.key_name, "--subnet", world.subnets[host.name],
                "--security-group", world.security_groups[host.name], "--private-ip", host.address,
                "--address", "private", "--ssh-user", "root", "-i", str(hosts.client_key),
            ]  # fmt: skip
            if args.shell:
                return shell(env, create)
            return tour(env, create)
        finally:
            if hypervisor is not None:
                hypervisor.stop()
            if emulator is not None:
                emulator.stop()
            hosts.teardown()


def run(env: dict[str, str], *argv: str, cwd: Path = REPO) -> int:
    print("\n$ runctl " + shlex.join(argv), flush=True)
    return subprocess.run([RUNCTL, *argv], env=env, cwd=cwd).returncode


def tour(env: dict[str, str], create: list[str]) -> int:
    project = REPO / "examples"
    train = ["aws", "train", "trainer", "training/train_with_checkpoints.py", "--project-dir", "."]
    steps = [  # (command, the exit code it must give)
        (["aws", "create", *create, "--name", "trainer", "--idle-stop", "15m", "--wait"], 0),
        (["aws", "list"], 0),
        ([*train, "--wait", "--", "--epochs", "3", "--checkpoint-interval", "1"], 0),
        (["aws", "status", "trainer"], 0),
        (["aws", "stop", "trainer", "--wait"], 0),
        (train, 4),  # a stopped instance: exit 4, and the command that starts it
        (["aws", "start", "trainer", "--wait"], 0),
        ([*train, "--on-end", "terminate", "--wait", "--", "--epochs", "5",
          "--resume-from", "checkpoints/checkpoint_epoch_3.json"], 0),
        (["aws", "list", "--all"], 0),
    ]  # fmt: skip
    for step, expected in steps:
        code = run(env, *step, cwd=project)
        if code != expected:
            print("(exit %d, expected %d)" % (code, expected))
            return code or 1
    print("\nCheckpoints pulled home are in examples/checkpoints/<run id>/.")
    return 0


def shell(env: dict[str, str], create: list[str]) -> int:
    print("The emulator and a stand-in instance host are up. In another shell:\n")
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED",
                "RUNCTL_SSH_CONFIG", "RUNCTL_HOME"):  # fmt: skip
        print("export %s=%s" % (key, shlex.quote(env[key])))
    print("\nrunctl aws create " + shlex.join(create) + " --name trainer --wait")
    print("cd examples")
    print("runctl aws train trainer training/train_with_checkpoints.py --project-dir . --wait -- --epochs 3")
    print("runctl aws terminate trainer --wait")
    print("runctl workflow run " + shlex.join(create) + " training/train_with_checkpoints.py --project-dir .")
    print("\n(one stand-in host: terminate an instance before creating the next at the same address)")
    print("Ctrl-C here tears everything down.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
