"""SSH runs under faults: a link that drops, an sshd that dies, a controller killed, a host that is gone.

The hosts here are this module's own (faults are injected into them), in network namespaces where
possible so a link can really go down. What is checked is what a user relies on: the run finishes,
the followed log has every line exactly once and in order, the status is right, and a dead host
gives a clear exit 4 quickly instead of a hang.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.test_ssh import (
    LINES_SCRIPT,
    SshEnv,
    kill_controller_once_logged,
    make_project,
    numbered_lines,
    read_run_id,
)
from tests.support.runs import poll
from tests.support.sshhosts import SshHosts, SshTestHost, start_hosts

pytestmark = pytest.mark.timeout(120)

LINES = 100  # one every 0.1 s: a 10 s run


@pytest.fixture(scope="module")
def fault_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHosts]:
    with start_hosts(2, tmp_path_factory.mktemp("faulthosts")) as hosts:
        yield hosts


@pytest.fixture(scope="module")
def env(fault_hosts: SshHosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshEnv]:
    made = SshEnv.create(
        list(fault_hosts),
        tmp_path_factory.mktemp("faultenv"),
        [fault_hosts.client_key],
        fault_hosts.known_hosts.read_text(),
    )
    yield made
    made.cleanup()


@pytest.fixture
def netns_host(fault_hosts: SshHosts) -> Iterator[SshTestHost]:
    """The host whose link the test cuts; the link is up again afterwards whatever happened."""
    if not fault_hosts.use_netns:
        pytest.skip("link faults need network-namespace hosts (root and `ip netns`)")
    host = fault_hosts[0]
    yield host
    host.link_up()


def _follow_through(env: SshEnv, host: SshTestHost, project: Path, name: str, fault: Callable[[], None]) -> str:
    """Run LINES numbered lines, followed by `ssh train --wait` and `runs logs --follow`; inject
    `fault` mid-run; both followers must print every line exactly once, in order."""
    waiter = env.popen(
        "ssh", "train", env.dest(host), "lines.py", "--wait", "--name", name, "--", str(LINES), "0.1", cwd=project
    )
    follower = None
    try:
        run = env.status(read_run_id(waiter), project)
        follower = env.popen("runs", "logs", run["run_id"], "--follow", cwd=project)
        log = Path(run["run_dir"]) / "training.log"
        poll(lambda: log.exists() and "line 20\n" in log.read_text(), 20, "line 20")
        fault()
        wait_out, wait_err = waiter.communicate(timeout=90)
        follow_out, follow_err = follower.communicate(timeout=30)
    finally:
        for proc in (waiter, follower):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert "line %d\n" % LINES in log.read_text(), "the run itself went on"
    assert waiter.returncode == 0, wait_err
    assert numbered_lines(wait_out) == list(range(1, LINES + 1)), wait_out
    assert follower.returncode == 0, follow_err
    assert numbered_lines(follow_out) == list(range(1, LINES + 1)), follow_out
    assert "Traceback" not in wait_err + follow_err
    final = env.status(run["run_id"], project)
    assert final["status"] == "completed" and final["exit_code"] == 0
    return wait_err


def test_link_down_mid_run_loses_and_repeats_no_line(env: SshEnv, netns_host: SshTestHost, tmp_path: Path) -> None:
    project = make_project(tmp_path, "f-linkdown", {"lines.py": LINES_SCRIPT})

    def cut_link() -> None:
        netns_host.link_down()
        time.sleep(5)
        netns_host.link_up()

    _follow_through(env, netns_host, project, "linkdown", cut_link)


def test_sshd_killed_and_restarted_mid_run_loses_and_repeats_no_line(env: SshEnv, tmp_path: Path) -> None:
    host = env.hosts[1]
    project = make_project(tmp_path, "f-sshdkill", {"lines.py": LINES_SCRIPT})

    def crash_sshd() -> None:
        # The daemon dies and the controller's connections with it; it comes back 2 s later.
        host.kill_sshd()
        assert env.kill_masters(host)
        time.sleep(2)
        host.start_sshd()

    try:
        chatter = _follow_through(env, host, project, "sshdkill", crash_sshd)
        assert "reconnecting" in chatter, "the controller says it lost the connection"
    finally:
        host.start_sshd()


def test_controller_killed_mid_run_then_runs_wait_reattaches(env: SshEnv, tmp_path: Path) -> None:
    host = env.hosts[0]
    project = make_project(tmp_path, "f-ctlkill", {"lines.py": LINES_SCRIPT})
    proc = env.popen("ssh", "train", env.dest(host), "lines.py", "--wait", "--name", "ctlkill", "--", "40", "0.1",
                     cwd=project)  # fmt: skip
    run = kill_controller_once_logged(env, proc, project, "line 10\n", "line 10")
    assert env.status(run["run_id"], project)["status"] == "running"

    waited = env.cli("runs", "wait", run["run_id"], cwd=project)
    assert waited.code == 0, waited.err
    assert "completed" in waited.err
    final = env.status(run["run_id"], project)
    assert final["status"] == "completed" and final["exit_code"] == 0
    assert numbered_lines(env.cli("runs", "logs", run["run_id"], cwd=project).out) == list(range(1, 41))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _assert_unreachable(env: SshEnv, dest: str, project: Path, limit: float = 15.0) -> None:
    before = env.runs(project)
    result = env.cli("ssh", "train", dest, "train_stub.py", cwd=project, timeout=60)
    assert result.code == 4, (result.code, result.err)
    assert result.seconds < limit, "took %.1fs to give up (ConnectTimeout is 10s)" % result.seconds
    assert 1 <= len(result.err_lines) <= 2, result.err
    assert "cannot reach" in result.err and dest.split(":")[0] in result.err, result.err
    assert env.runs(project) == before, "nothing is recorded for a run that never started"


def test_unreachable_closed_port(env: SshEnv, tmp_path: Path) -> None:
    project = make_project(tmp_path, "f-closed")
    _assert_unreachable(env, "127.0.0.1:%d" % _free_port(), project, limit=5.0)


def test_unreachable_host_link_down_before_connecting(
    fault_hosts: SshHosts, netns_host: SshTestHost, tmp_path: Path
) -> None:
    fresh = SshEnv.create(
        list(fault_hosts), tmp_path / "client", [fault_hosts.client_key], fault_hosts.known_hosts.read_text()
    )
    try:
        project = make_project(tmp_path, "f-down")
        netns_host.link_down()
        _assert_unreachable(fresh, fresh.dest(netns_host), project)
    finally:
        fresh.cleanup()


def test_unreachable_host_while_a_master_connection_is_still_open(
    env: SshEnv, netns_host: SshTestHost, tmp_path: Path
) -> None:
    project = make_project(tmp_path, "f-downmaster")
    assert env.cli("ssh", "status", env.dest(netns_host), cwd=project).code == 0
    assert env.ssh_processes(masters_only=True)
    netns_host.link_down()
    _assert_unreachable(env, env.dest(netns_host), project)
