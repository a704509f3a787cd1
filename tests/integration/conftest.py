"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.test_ssh import SshEnv
    from tests.support.sshhosts import SshHosts


@pytest.fixture(scope="module")
def sshenv(ssh_hosts: SshHosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshEnv]:
    """The SSH tests' user setup on the session's test hosts, once per module."""
    from tests.integration.test_ssh import SshEnv

    base = tmp_path_factory.mktemp("sshenv")
    env = SshEnv.create(list(ssh_hosts), base, [ssh_hosts.client_key], ssh_hosts.known_hosts.read_text())
    yield env
    env.cleanup()
