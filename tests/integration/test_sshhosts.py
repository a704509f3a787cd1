"""Self-test of the OpenSSH test hosts (tests/support/sshhosts.py).

Every other SSH test trusts these hosts to behave like separate machines: their own address, HOME
and files, real rsync, and faults (lost link, crashed sshd) that look like the real thing.  If any
of that silently stopped holding, those tests would pass for the wrong reason; this file checks it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO_ROOT = Path(__file__).resolve().parents[2]
if str(_REPO_ROOT) not in sys.path:  # makes `tests.support` importable without any conftest
    sys.path.insert(0, str(_REPO_ROOT))

from tests.support.sshhosts import (  # noqa: E402
    SshHosts,
    SshTestHost,
    ssh_hosts_fixture,
    start_hosts,
)

pytestmark = pytest.mark.timeout(60)

ssh_hosts = pytest.fixture(scope="module")(ssh_hosts_fixture)


@pytest.fixture(scope="module")
def pathless_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshTestHost]:
    """A host whose sessions get PATH=/nonexistent-bin, i.e. a machine without python3 on PATH."""
    base_dir = tmp_path_factory.mktemp("pathless")
    with start_hosts(1, base_dir, extra_env_per_host=[{"PATH": "/nonexistent-bin"}]) as hosts:
        yield hosts[0]


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.split()}


def test_hosts_have_distinct_addresses(ssh_hosts: SshHosts) -> None:
    first, second = ssh_hosts
    assert (first.address, first.port) != (second.address, second.port)
    if ssh_hosts.use_netns:
        assert first.address != second.address
        assert first.port == second.port == 22
        assert first.netns and first.netns in _netns_names()
    for host in ssh_hosts:
        result = host.run("true")
        assert result.returncode == 0, result.stderr


def test_each_host_has_its_own_home(ssh_hosts: SshHosts) -> None:
    for host in ssh_hosts:
        result = host.run('echo "$HOME"; pwd; cd ~ && pwd')
        assert result.returncode == 0, result.stderr
        # HOME, the starting directory and ~ all point at the host's own home.
        assert result.stdout.splitlines() == [str(host.home)] * 3


def test_files_written_on_one_host_are_not_on_the_other(ssh_hosts: SshHosts) -> None:
    first, second = ssh_hosts
    result = first.run('echo written-on-first > "$HOME/marker" && echo relative > rel-marker')
    assert result.returncode == 0, result.stderr
    assert (first.home / "marker").read_text() == "written-on-first\n"
    assert (first.home / "rel-marker").read_text() == "relative\n"
    assert not (second.home / "marker").exists()
    assert second.run('test -e "$HOME/marker" || test -e rel-marker').returncode == 1


def test_rsync_copies_a_directory(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    host = ssh_hosts[1]
    src = tmp_path / "project"
    (src / "pkg").mkdir(parents=True)
    (src / "train.py").write_text("print('hi')\n")
    (src / "pkg" / "data.bin").write_bytes(bytes(range(256)) * 100)
    cmd = ["rsync", "-a", "-e", host.rsync_rsh(), f"{src}/", f"{host.dest}:code/"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    # A relative remote path lands under the host's HOME, as on a real machine.
    assert (host.home / "code" / "train.py").read_text() == "print('hi')\n"
    assert (host.home / "code" / "pkg" / "data.bin").read_bytes() == bytes(range(256)) * 100


def test_known_hosts_is_strict(ssh_hosts: SshHosts) -> None:
    first, second = ssh_hosts
    # The second host's options but the first host's known_hosts: its key must not be accepted.
    result = second.run("true", extra_args=["-o", f"UserKnownHostsFile={first.known_hosts}"])
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr
    # The group's combined file accepts both.
    for host in ssh_hosts:
        combined = ["-o", f"UserKnownHostsFile={ssh_hosts.known_hosts}"]
        assert host.run("true", extra_args=combined).returncode == 0


def test_link_down_fails_connections_and_link_up_restores(ssh_hosts: SshHosts) -> None:
    if not ssh_hosts.use_netns:
        pytest.skip("link faults need network namespaces (root and `ip netns`)")
    host = ssh_hosts[0]
    host.link_down()
    try:
        started = time.monotonic()
        result = host.run("true")  # ConnectTimeout=5 from ssh_args()
        elapsed = time.monotonic() - started
        assert result.returncode == 255
        assert elapsed < 5 + 1.5, f"took {elapsed:.1f}s, longer than ConnectTimeout"
        assert not host.is_reachable(timeout=0.5)
    finally:
        host.link_up()
    result = host.run("echo back")
    assert (result.returncode, result.stdout) == (0, "back\n"), result.stderr


def test_killed_sshd_refuses_and_restart_restores(ssh_hosts: SshHosts) -> None:
    host = ssh_hosts[1]
    session = subprocess.Popen(
        host.ssh_command("sleep 1; echo survived"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)  # let the session get past authentication
        host.kill_sshd()
        assert host.sshd_pid() is None
        refused = host.run("true")
        assert refused.returncode == 255
        assert "refused" in refused.stderr
        # A session opened before the crash keeps running: it has its own sshd process.
        out, err = session.communicate(timeout=15)
        assert (session.returncode, out) == (0, "survived\n"), err
    finally:
        session.kill()
        host.start_sshd()
    result = host.run("echo again")
    assert (result.returncode, result.stdout) == (0, "again\n"), result.stderr


def test_host_without_python_on_path(pathless_host: SshTestHost) -> None:
    result = pathless_host.run("command -v python3")
    assert result.returncode != 0
    assert result.stdout == ""
    result = pathless_host.run('echo "$PATH $HOME"')
    assert result.stdout.split() == ["/nonexistent-bin", str(pathless_host.home)]


def test_teardown_leaves_nothing_behind(tmp_path: Path) -> None:
    with start_hosts(1, tmp_path) as hosts:
        host = hosts[0]
        sshd_pid = host.sshd_pid()
        assert sshd_pid is not None
        # A session still running at teardown must not keep anything alive.
        lingering = subprocess.Popen(host.ssh_command("sleep 60"), stdin=subprocess.DEVNULL)
        time.sleep(0.5)
    try:
        assert host.sshd_pid() is None
        assert not Path(f"/proc/{sshd_pid}").exists()
        assert lingering.wait(timeout=10) == 255  # the session was cut
        if host.netns:
            assert host.netns not in _netns_names()
            assert not Path(f"/sys/class/net/{host.veth_host}").exists()
    finally:
        lingering.kill()
