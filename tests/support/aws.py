"""EC2 for the tests: moto in server mode, a VPC of our own, and test hosts that act as instances.

Real boto3 talks HTTP to a real moto server (never moto's in-process mocks), with validation on,
so unknown instance types, AMIs and key pairs are refused as AWS refuses them.  Instances are
launched into subnets of our own with ``PrivateIpAddress`` set to a network-namespace sshd test host
(tests/support/sshhosts.py), so ssh to an instance's private IP reaches that host.  Never connect to
a public IP moto invents: those are real addresses on the internet.

* :class:`MotoEmulator`: the server (one per test session), ``reset()``, a boto3 ``client()`` and
  ``env()`` for a runctl CLI subprocess.
* :class:`Ec2World`: per test, a VPC 10.231.0.0/16, one subnet and security group per host, a key
  pair with the test client's key, and realistic AMIs (:data:`AMIS`); ``launch_for(host)``.
* :class:`Hypervisor`: makes each instance and its host one machine (power-off inside -> stop or
  terminate per ``InstanceInitiatedShutdownBehavior``; stopped from outside -> processes end, sshd
  down; running again -> sshd up).
* :func:`spot_reclaim`: EC2 taking a spot instance back (terminated, ``Server.SpotInstanceTermination``).
* :class:`FaultProxy`: an HTTP proxy in front of the emulator that fails the next N calls of an
  EC2 action with a proper EC2 error, since moto itself never fails a call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import http.client
import http.server
import importlib.util
import json
import logging
import os
import socket
import struct
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from tests.support.sshhosts import SshTestHost

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
VPC_CIDR = "10.231.0.0/16"  # holds every netns test host (10.231.X.2, see sshhosts.SUBNET_PREFIX)
KEY_NAME = "runctl-test"
DEFAULT_INSTANCE_TYPE = "g5.xlarge"

DLAMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20261101"
DLAMI_OLDER_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20261001"
UBUNTU_NAME = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20261101"
# name -> (id, owner, creation date): the public images a GPU user picks from, with the owners AWS
# and Canonical publish them under, so name/owner lookups behave as on AWS.
AMIS = {
    DLAMI_NAME: ("ami-0dl4b5e20261101", "898082745236", "2026-11-01T08:00:00.000Z"),
    DLAMI_OLDER_NAME: ("ami-0dl4b5e20261001", "898082745236", "2026-10-01T08:00:00.000Z"),
    UBUNTU_NAME: ("ami-0ub22a20261101", "099720109477", "2026-11-01T06:00:00.000Z"),
}
VALIDATION_ENV = {
    "MOTO_ENABLE_AMI_VALIDATION": "1",
    "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "1",
    "MOTO_ENABLE_KEYPAIR_VALIDATION": "1",
}
DOWN_STATES = ("stopping", "stopped", "shutting-down", "terminated")


class EmulatorError(RuntimeError):
    """The emulator, the hypervisor or the proxy could not do what a test asked."""


def _amis_file() -> Path:
    """moto's built-in AMIs plus :data:`AMIS`, written for ``MOTO_AMIS_PATH``."""
    spec = importlib.util.find_spec("moto")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise EmulatorError("moto is not installed: run bash scripts/setup-env.sh")
    builtin = Path(next(iter(spec.submodule_search_locations))) / "ec2" / "resources" / "amis.json.gz"
    with gzip.open(builtin, "rt") as fh:
        images: list[dict[str, Any]] = json.load(fh)
    for name, (ami_id, owner, created) in AMIS.items():
        images.append(
            {
                **{"ami_id": ami_id, "name": name, "owner_id": owner, "creation_date": created},
                **{"description": name, "public": True, "state": "available", "architecture": "x86_64"},
                **{"virtualization_type": "hvm", "hypervisor": "xen", "image_type": "machine"},
                **{"root_device_name": "/dev/sda1", "root_device_type": "ebs", "sriov": "simple"},
            }
        )
    path = Path(tempfile.mkdtemp(prefix="rctest-moto-")) / "amis.json"
    path.write_text(json.dumps(images))
    return path


def _configure_moto() -> None:
    """Put validation and our AMIs in effect: moto reads both once, when it is first imported."""
    if "moto" in sys.modules:
        from moto import settings

        on = settings.ENABLE_AMI_VALIDATION and settings.ENABLE_KEYPAIR_VALIDATION
        if not (on and settings.EC2_ENABLE_INSTANCE_TYPE_VALIDATION and "MOTO_AMIS_PATH" in os.environ):
            raise EmulatorError("moto was imported before tests/support/aws.py could configure it")
        return
    os.environ.update(VALIDATION_ENV)
    os.environ["MOTO_AMIS_PATH"] = str(_amis_file())


def _free_terminated_ips() -> None:
    """Make a terminated instance give its private IP back, as AWS does.

    moto 5 frees it only when the instance object is garbage-collected, so launching onto a test
    host's address again after a terminate would fail with "IP already in use".
    """
    from moto.ec2.models.instances import Instance

    if getattr(Instance.terminate, "_frees_ips", False):
        return
    original = Instance.terminate

    def terminate(self: Any) -> Any:
        previous = original(self)
        with contextlib.suppress(Exception):
            subnet = self.ec2_backend.get_subnet(self.subnet_id)
            for ip in self._private_ips:
                subnet.del_subnet_ip(ip)
        return previous

    terminate._frees_ips = True  # type: ignore[attr-defined]
    Instance.terminate = terminate  # type: ignore[method-assign]


def client_env(endpoint: str, config_dir: Path) -> dict[str, str]:
    """Environment for a CLI subprocess to reach ``endpoint`` and nothing of this machine's AWS setup."""
    config_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config", "credentials"):
        (config_dir / name).touch()
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(config_dir / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(config_dir / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def ec2_client(endpoint: str, attempts: int | None = None) -> Any:
    """A real boto3 EC2 client for ``endpoint`` with dummy credentials; ``attempts`` counts the first."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"total_max_attempts": attempts, "mode": "standard"}) if attempts else None
    return boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=config,
    )


class MotoEmulator:
    """moto's server in this process on 127.0.0.1 (a free port), with AMI, type and key validation."""

    def __init__(self) -> None:
        _configure_moto()
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        _free_terminated_ips()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self._config_dir = Path(tempfile.mkdtemp(prefix="rctest-awsconfig-"))

    def stop(self) -> None:
        self._server.stop()

    def reset(self) -> None:
        """Forget every resource (POST /moto-api/reset); the built-in and :data:`AMIS` images stay."""
        request = urllib.request.Request(self.url + "/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def client(self, service: str = "ec2", attempts: int | None = None) -> Any:
        """A boto3 client for ``service``; ``attempts=1`` turns botocore's retries off (EC2 only)."""
        if service == "ec2":
            return ec2_client(self.url, attempts)
        import boto3

        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def env(self) -> dict[str, str]:
        """Variables for a runctl CLI subprocess: this emulator, dummy credentials, no real config."""
        return client_env(self.url, self._config_dir)


@dataclasses.dataclass
class Ec2World:
    """One test's AWS account: a VPC holding a subnet and security group per test host."""

    emulator: MotoEmulator
    hosts: Sequence[SshTestHost]
    vpc_id: str = ""
    subnets: dict[str, str] = dataclasses.field(default_factory=dict)
    """host name -> subnet id (10.231.X.0/24, the host's own /24)."""
    security_groups: dict[str, str] = dataclasses.field(default_factory=dict)
    """host name -> security group id."""
    key_name: str = KEY_NAME
    amis: dict[str, str] = dataclasses.field(default_factory=dict)
    """AMI name -> id (:data:`AMIS`)."""
    hypervisor: Hypervisor | None = None
    """Set (and running) when built by the ``ec2_world`` fixture."""

    @classmethod
    def create(cls, emulator: MotoEmulator, hosts: Sequence[SshTestHost], public_key: str) -> Ec2World:
        """Build the account on a freshly reset emulator; ``public_key`` becomes key pair :data:`KEY_NAME`."""
        world = cls(emulator, hosts, amis={name: ami[0] for name, ami in AMIS.items()})
        ec2 = emulator.client()
        world.vpc_id = ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
        ec2.create_tags(Resources=[world.vpc_id], Tags=[{"Key": "Name", "Value": "runctl-test"}])
        for host in hosts:
            cidr = host.address.rsplit(".", 1)[0] + ".0/24"
            subnet = ec2.create_subnet(VpcId=world.vpc_id, CidrBlock=cidr, AvailabilityZone=f"{REGION}a")
            world.subnets[host.name] = subnet["Subnet"]["SubnetId"]
            group = ec2.create_security_group(GroupName=f"ssh-{host.name}", Description="ssh", VpcId=world.vpc_id)
            world.security_groups[host.name] = group["GroupId"]
        ec2.import_key_pair(KeyName=KEY_NAME, PublicKeyMaterial=public_key.encode())
        return world

    def client(self) -> Any:
        return self.emulator.client()

    def env(self) -> dict[str, str]:
        """The emulator's :meth:`MotoEmulator.env`, for a runctl CLI subprocess."""
        return self.emulator.env()

    def launch_for(
        self,
        host: SshTestHost,
        *,
        instance_type: str = DEFAULT_INSTANCE_TYPE,
        image_id: str | None = None,
        shutdown_behavior: str = "stop",
        tags: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> str:
        """Launch an instance that *is* ``host`` (its private IP, no public one); its id.

        For tests that need an instance the user made before runctl; extra ``kwargs`` go to
        ``run_instances``.
        """
        spec: dict[str, Any] = {
            "ImageId": image_id or self.amis[DLAMI_NAME],
            "InstanceType": instance_type,
            "KeyName": self.key_name,
            "MinCount": 1,
            "MaxCount": 1,
            "SubnetId": self.subnets[host.name],
            "SecurityGroupIds": [self.security_groups[host.name]],
            "PrivateIpAddress": host.address,
            "InstanceInitiatedShutdownBehavior": shutdown_behavior,
        }
        if tags:
            tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
            spec["TagSpecifications"] = [{"ResourceType": "instance", "Tags": tag_list}]
        spec.update(kwargs)
        return str(self.client().run_instances(**spec)["Instances"][0]["InstanceId"])


class Hypervisor:
    """Background thread making each instance and the test host at its private IP one machine.

    * A power-off inside a host (its fake recorded a call) becomes ``stop_instances`` or
      ``terminate_instances`` per the instance's ``InstanceInitiatedShutdownBehavior``.
    * An instance seen stopping/stopped/terminated ends every process of its host and takes its
      sshd down (files kept, as a stop keeps the disk): training dies, as on EC2.
    * An instance seen running again (or launched onto a host that is down) starts its sshd.

    ``actions`` records what it did: ``(time, instance_id, action)`` with action ``"stop"`` or
    ``"terminate"`` (a power-off translated; instance_id None when no instance had that IP),
    ``"down"`` or ``"boot"``.  It polls (every ``poll`` s): a stop and start closer together than
    that go unseen, so :meth:`wait_for` the state in between.  Don't start or stop a host's sshd
    from a test while it runs.
    """

    def __init__(self, emulator: MotoEmulator, hosts: Sequence[SshTestHost], poll: float = 0.15) -> None:
        self._ec2 = emulator.client()
        self._hosts = {host.address: host for host in hosts}
        self._poll = poll
        self._seen_calls = {host.address: len(host.poweroff_calls()) for host in hosts}
        self._states: dict[str, str] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.actions: list[tuple[float, str | None, str]] = []
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ec2-hypervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; raise if a tick failed (a test must not pass over a broken harness).

        sshd processes the thread started get SIGTERM when it ends (their parent-death signal
        follows the thread): the ``ec2_world`` fixture then boots every host again from the main thread.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self.errors:
            raise EmulatorError("hypervisor failed: " + "; ".join(self.errors[:3]))

    def wait_for(self, instance_id: str, state: str, timeout: float = 10.0) -> None:
        """Return once the hypervisor saw ``instance_id`` in ``state`` and did what that means."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._states.get(instance_id) != state:
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = self._states.get(instance_id)
                    raise EmulatorError(f"{instance_id} not {state} after {timeout:.0f}s (last seen {seen})")
                self._changed.wait(left)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:  # keep going; stop() reports it
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self._poll)

    def _instances(self) -> dict[str, tuple[str, str | None]]:
        found = {}
        for page in self._ec2.get_paginator("describe_instances").paginate():
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
                    found[inst["InstanceId"]] = (inst["State"]["Name"], inst.get("PrivateIpAddress"))
        return found

    def _tick(self) -> None:
        instances = self._instances()
        for host in self._hosts.values():
            calls = len(host.poweroff_calls())
            if calls > self._seen_calls[host.address]:
                self._seen_calls[host.address] = calls
                self._power_off_from_inside(host, instances)
        instances = self._instances()  # again: this tick's stop or terminate is then seen at once
        for instance_id, (state, ip) in instances.items():
            previous = self._states.get(instance_id)
            on = self._hosts.get(ip or "")
            if on is not None and state != previous:
                live = [i for i, (s, a) in instances.items() if a == ip and s not in DOWN_STATES]
                if state in DOWN_STATES and not live:
                    on.power_off_now()
                    self._record(instance_id, "down")
                elif state == "running" and on.sshd_pid() is None:
                    on.start_sshd()
                    self._record(instance_id, "boot")
            with self._changed:
                self._states[instance_id] = state
        with self._changed:
            self._changed.notify_all()

    def _power_off_from_inside(self, host: SshTestHost, instances: dict[str, tuple[str, str | None]]) -> None:
        running = [i for i, (s, a) in instances.items() if a == host.address and s in ("pending", "running")]
        if not running:
            self._record(None, "stop")
            return
        instance_id = running[0]
        attribute = "instanceInitiatedShutdownBehavior"
        answer = self._ec2.describe_instance_attribute(InstanceId=instance_id, Attribute=attribute)
        if answer["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate":
            self._ec2.terminate_instances(InstanceIds=[instance_id])
            self._record(instance_id, "terminate")
        else:
            self._ec2.stop_instances(InstanceIds=[instance_id])
            self._record(instance_id, "stop")
        instance_initiated(instance_id)

    def _record(self, instance_id: str | None, action: str) -> None:
        self.actions.append((time.time(), instance_id, action))


def instance_initiated(instance_id: str) -> None:
    """Give a power-off's stop or terminate the state reason EC2 gives it (moto's API calls say
    "User initiated"), so runctl can tell a host that powered itself off from one stopped from outside."""
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import StateReason

    instance = ec2_backends[ACCOUNT_ID][REGION].get_instance_by_id(instance_id)
    if instance is not None:
        code = "Client.InstanceInitiatedShutdown"
        instance.state_reason = StateReason(code + ": Instance initiated shutdown", code)


def spot_reclaim(client: Any, instance_id: str) -> None:
    """EC2 takes a spot instance back: terminated, with the state reason a spot reclaim has (the
    emulator has no interruption API, so its backend gets the reason, as after a real one)."""
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import StateReason

    client.terminate_instances(InstanceIds=[instance_id])
    instance = ec2_backends[ACCOUNT_ID][REGION].get_instance_by_id(instance_id)
    if instance is not None:
        code = "Server.SpotInstanceTermination"
        instance.state_reason = StateReason(code + ": Spot instance termination", code)


@dataclasses.dataclass
class _Fault:
    action: str
    times: int
    status: int
    code: str
    message: str
    reset: bool


def ec2_error_body(code: str, message: str) -> bytes:
    """An EC2 (query protocol) error document, as botocore parses it."""
    request_id = str(uuid.uuid4())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
        f"</Errors><RequestID>{request_id}</RequestID></Response>"
    ).encode()


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade"}


class FaultProxy:
    """HTTP proxy on 127.0.0.1 in front of the emulator that fails chosen EC2 actions on purpose.

    ``fail("StopInstances", 2)`` makes the next two StopInstances calls answer 503
    ``ServiceUnavailable``; everything else is forwarded unchanged.  ``calls(action)`` counts the
    calls seen (failed ones included).
    """

    def __init__(self, upstream: str, config_dir: Path | None = None) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._faults: list[_Fault] = []
        self._seen: list[str] = []
        self._seen_at: list[float] = []
        self._lock = threading.Lock()
        self._config_dir = config_dir or Path(tempfile.mkdtemp(prefix="rctest-awsconfig-"))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(
        self,
        action: str,
        times: int = 1,
        status: int = 503,
        code: str = "ServiceUnavailable",
        message: str = "The service is unavailable. Please try again shortly.",
        reset: bool = False,
    ) -> None:
        """Fail the next ``times`` calls of ``action``: an EC2 error (``code``, ``status``), or with
        ``reset`` a connection reset (no answer at all).

        Codes tests use: ServiceUnavailable, Throttling / RequestLimitExceeded (usually 503),
        InsufficientInstanceCapacity (500), SpotMaxPriceTooLow (400).
        """
        with self._lock:
            self._faults.append(_Fault(action, times, status, code, message, reset))

    def calls(self, action: str | None = None) -> list[str]:
        """Actions seen, in order (only ``action`` when given)."""
        with self._lock:
            return [a for a in self._seen if action is None or a == action]

    def calls_at(self, action: str) -> list[float]:
        """When each call of ``action`` arrived (time.time()), oldest first."""
        with self._lock:
            return [t for a, t in zip(self._seen, self._seen_at, strict=True) if a == action]

    def env(self) -> dict[str, str]:
        """Like :meth:`MotoEmulator.env`, but through this proxy."""
        return client_env(self.url, self._config_dir)

    def client(self, attempts: int | None = None) -> Any:
        """A boto3 EC2 client through this proxy (``attempts=1``: no botocore retries)."""
        return ec2_client(self.url, attempts)

    def _take_fault(self, action: str) -> _Fault | None:
        with self._lock:
            self._seen.append(action)
            self._seen_at.append(time.time())
            for fault in self._faults:
                if fault.action == action and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                query = urllib.parse.urlsplit(self.path).query
                form = body.decode("utf-8", "replace") if b"=" in body else query
                action = (urllib.parse.parse_qs(form).get("Action") or [""])[0]
                fault = proxy._take_fault(action)
                if fault is not None and fault.reset:
                    # SO_LINGER 0: close() sends RST, which clients see as "connection reset by peer".
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault is not None:
                    self._answer(
                        fault.status, [("Content-Type", "text/xml")], ec2_error_body(fault.code, fault.message)
                    )
                    return
                upstream = http.client.HTTPConnection(*proxy._upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                    self._answer(response.status, kept, data)
                finally:
                    upstream.close()

            def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        return Handler
