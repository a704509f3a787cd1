"""Fixtures shared by the integration tests.

The EC2 fixtures (``moto_emulator``, ``ec2_hosts``, ``ec2_sshenv``, ``ec2_world``, ``fault_proxy``)
import boto3 and moto only when a test asks for them; see tests/support/aws.py. Likewise ``s3_server``
(SeaweedFS, tests/support/s3server.py) and ``imds`` (the instance metadata fake, tests/support/imds.py).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.test_aws_instances import Aws
    from tests.integration.test_ssh import SshEnv
    from tests.support.aws import Ec2World, FaultProxy, MotoEmulator
    from tests.support.imds import Imds
    from tests.support.lambda_fake import LambdaFake
    from tests.support.s3server import S3Server
    from tests.support.sshhosts import SshHosts


@pytest.fixture(scope="module")
def sshenv(ssh_hosts: SshHosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshEnv]:
    """The SSH tests' user setup on the session's test hosts, once per module."""
    from tests.integration.test_ssh import SshEnv

    base = tmp_path_factory.mktemp("sshenv")
    env = SshEnv.create(list(ssh_hosts), base, [ssh_hosts.client_key], ssh_hosts.known_hosts.read_text())
    yield env
    env.cleanup()


@pytest.fixture(scope="session")
def moto_emulator() -> Iterator[MotoEmulator]:
    """moto in server mode for the whole session, validation on; no AWS_* of this machine applies."""
    from tests.support.aws import MotoEmulator

    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("AWS_")]:
            patch.delenv(name)  # a real profile or endpoint must never leak into a test's CLI
        emulator = MotoEmulator()
        try:
            yield emulator
        finally:
            emulator.stop()


@pytest.fixture(scope="module")
def ec2_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHosts]:
    """Two network-namespace sshd hosts (10.231.X.2:22) with the power-off fake: the instances."""
    from tests.support.sshhosts import netns_available, start_hosts_with_poweroff_fake

    if os.geteuid() != 0 or shutil.which("unshare") is None or not netns_available():
        pytest.skip("EC2 tests need root, unshare and network namespaces (hosts at their private IPs)")
    hosts = start_hosts_with_poweroff_fake(2, tmp_path_factory.mktemp("ec2hosts"))
    try:
        yield hosts
    finally:
        hosts.teardown()


@pytest.fixture(scope="module")
def ec2_sshenv(ec2_hosts: SshHosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshEnv]:
    """A user's side for the instances: RUNCTL_HOME and RUNCTL_SSH_CONFIG (root, test key, known hosts)."""
    from tests.integration.test_ssh import SshEnv

    base = tmp_path_factory.mktemp("ec2sshenv")
    env = SshEnv.create(list(ec2_hosts), base, [ec2_hosts.client_key], ec2_hosts.known_hosts.read_text(), tag="ec2")
    yield env
    env.cleanup()


@pytest.fixture
def ec2_world(moto_emulator: MotoEmulator, ec2_hosts: SshHosts) -> Iterator[Ec2World]:
    """A fresh account (emulator reset) with the hosts' VPC, subnets, key pair and AMIs, and the
    hypervisor running (``ec2_world.hypervisor``); afterwards every host is booted afresh."""
    from tests.support.aws import Ec2World, Hypervisor

    moto_emulator.reset()
    public_key = ec2_hosts.client_key.with_name(ec2_hosts.client_key.name + ".pub").read_text()
    world = Ec2World.create(moto_emulator, list(ec2_hosts), public_key)
    hypervisor = Hypervisor(moto_emulator, list(ec2_hosts))
    world.hypervisor = hypervisor
    hypervisor.start()
    try:
        yield world
    finally:
        try:
            hypervisor.stop()
        finally:
            for host in ec2_hosts:  # from this thread: sshd started by the hypervisor's dies with it
                host.power_off_now()
                host.start_sshd()
                host.check_poweroff_fake()


@pytest.fixture
def aws(ec2_world: Ec2World, ec2_sshenv: SshEnv, ec2_hosts: SshHosts, tmp_path: Path) -> Iterator[Aws]:
    """One test's EC2 user (tests/integration/test_aws_instances.py `Aws`): a fresh RUNCTL_HOME."""
    import tempfile

    from tests.integration.test_aws_instances import Aws

    home = Path(tempfile.mkdtemp(prefix="rch-", dir="/tmp"))  # short: ssh control sockets live in it
    try:
        yield Aws(ec2_world, ec2_sshenv, ec2_hosts, home, tmp_path)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def fault_proxy(moto_emulator: MotoEmulator) -> Iterator[FaultProxy]:
    """A failing proxy in front of the emulator (``.fail(action, times, ...)``, ``.env()``)."""
    from tests.support.aws import FaultProxy

    proxy = FaultProxy(moto_emulator.url)
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """SeaweedFS for the whole session, on an address the network-namespace test hosts reach
    (127.0.0.1 without namespaces); ``make_bucket()`` gives each test a bucket of its own."""
    from tests.support.s3server import S3Server

    server = S3Server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def imds(s3_server: S3Server) -> Iterator[Imds]:
    """The instance metadata fake, on the S3 server's address (reachable from the test hosts)."""
    from tests.support.imds import Imds

    fake = Imds(address=s3_server.address)
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def lambda_fake(ec2_hosts: SshHosts) -> Iterator[LambdaFake]:
    """The Lambda API fake for a module, its instances at the addresses of the sshd test hosts."""
    from tests.support.lambda_fake import LambdaFake

    fake = LambdaFake([host.address for host in ec2_hosts], request_interval=0.02, launch_interval=0.2)
    fake.bind = "0.0.0.0"  # the hosts call it themselves with --host-terminate
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def lambda_world(lambda_fake: LambdaFake) -> Iterator[LambdaFake]:
    """A fresh account per test (capacity, one SSH key, no instances, no faults)."""
    lambda_fake.reset()
    yield lambda_fake
