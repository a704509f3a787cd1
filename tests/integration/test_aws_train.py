"""`runctl aws train|monitor` and the proven end of a run on EC2, end to end.

Real components only: a moto server (tests/support/aws.py), instances launched into our own
subnets at the private IP of a network-namespace sshd test host, a hypervisor that turns the
host's power-off (a fake: never the real one) into the emulator's stop or terminate, and the
runctl CLI as subprocesses. Every instance is reached by its private address.
"""

from __future__ import annotations

import http.server
import json
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from runctl.providers import ec2tags
from tests.integration.test_ssh import Result, SshEnv
from tests.support.aws import REGION, Ec2World, FaultProxy, Hypervisor
from tests.support.runs import poll
from tests.support.sshhosts import SshTestHost

pytestmark = pytest.mark.timeout(240)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "training" / "train_with_checkpoints.py"
SCRIPT = "training/train_with_checkpoints.py"
REACH = ["--ssh-user", "root", "--address", "private"]
QUICK = ["--steps-per-epoch", "3", "--delay", "0.01"]
# Long enough to act on mid-run (about 6 s), short enough to wait for.
SLOW = ["--epochs", "3", "--steps-per-epoch", "20", "--delay", "0.1"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "training").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'proj'\nversion = '0'\n")
    shutil.copy(EXAMPLE, root / SCRIPT)
    return root


class Aws:
    """The CLI against one account (the emulator, or a failing proxy in front of it)."""

    def __init__(self, sshenv: SshEnv, world: Ec2World, project: Path, env: dict[str, str] | None = None) -> None:
        self.sshenv, self.world, self.project = sshenv, world, project
        self.env = env or world.env()

    def cli(self, *args: str, timeout: float = 120) -> Result:
        return self.sshenv.cli(*args, cwd=self.project, env=self.env, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        from tests.integration.test_ssh import RUNCTL

        return subprocess.Popen(
            [*RUNCTL, *args],
            cwd=str(self.project),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.sshenv.environ(self.env),
        )

    def train(self, instance: str, *args: str, script_args: tuple[str, ...] = (), timeout: float = 120) -> Result:
        return self.cli("aws", "train", instance, SCRIPT, *REACH, *args, "--", *script_args, timeout=timeout)

    def status(self, run_id: str) -> dict[str, Any]:
        result = self.cli("runs", "status", run_id, "-o", "json")
        assert result.code == 0, result.err
        return result.json  # type: ignore[no-any-return]

    def instance(self, instance_id: str) -> dict[str, Any]:
        found = self.world.client().describe_instances(InstanceIds=[instance_id])["Reservations"][0]
        return found["Instances"][0]  # type: ignore[no-any-return]

    def state(self, instance_id: str) -> str:
        return str(self.instance(instance_id)["State"]["Name"])

    def tags(self, instance_id: str) -> dict[str, str]:
        return ec2tags.as_dict(self.instance(instance_id).get("Tags") or [])


@pytest.fixture
def aws(ec2_sshenv: SshEnv, ec2_world: Ec2World, project: Path) -> Aws:
    return Aws(ec2_sshenv, ec2_world, project)


def hypervisor(world: Ec2World) -> Hypervisor:
    assert world.hypervisor is not None
    return world.hypervisor


def run_id_of(result: Result) -> str:
    """The run id a `train` printed (first stdout line; with --wait the log follows it)."""
    for line in result.err.splitlines():
        if line.startswith("run ") and " started " in line:
            return line.split()[1]
    return result.out.strip().splitlines()[0]


def host_file(host: SshTestHost, project_name: str, rel: str) -> Path:
    return host.home / "runctl" / project_name / rel


def pulled(project: Path, run_id: str) -> dict[str, Any]:
    folder = project / "checkpoints" / run_id
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("checkpoint_epoch_*.json"))}


def end_result(aws: Aws, run_id: str) -> dict[str, Any]:
    """The end-of-run step's result as the store recorded it (runctl's own record, read through SQLite)."""
    import sqlite3

    db = sqlite3.connect(str(aws.sshenv.home / "runctl.db"))
    rows = db.execute("SELECT data FROM events WHERE run_id = ? AND kind = 'on_end_result' ORDER BY id", (run_id,))
    found = [json.loads(r[0]) for r in rows]
    db.close()
    assert found, "no end-of-run result recorded"
    return found[-1]  # type: ignore[no-any-return]


def started_when(aws: Aws, run_id: str, step: int = 1) -> None:
    poll(lambda: (aws.status(run_id).get("step") or 0) >= step, 60, "the run's step %d" % step, interval=0.2)


# ---- seed 003 workflows ------------------------------------------------------------------------------


def test_workflows_1_and_2_train_with_checkpoints_then_resume(aws: Aws) -> None:
    host = aws.world.hosts[0]
    instance = aws.world.launch_for(host, tags={"Name": "trainer"})
    first = aws.train(instance, "--sync-code", "--wait", script_args=("--epochs", "3", "--checkpoint-interval", "1"))
    assert first.code == 0, first.err
    run_id = run_id_of(first)
    assert "Training complete: 3 epochs" in first.out
    checkpoints = pulled(aws.project, run_id)
    assert sorted(checkpoints) == ["checkpoint_epoch_%d.json" % n for n in (1, 2, 3)]
    assert checkpoints["checkpoint_epoch_3.json"]["epoch"] == 3
    assert aws.state(instance) == "running", "--on-end defaults to none on the user's instance"
    run = aws.status(run_id)
    assert run["status"] == "completed" and run["provider"] == "aws"
    # Seed 002: the run's metadata is kept in the instance's tags.
    meta = ec2tags.read_metadata(aws.tags(instance))
    assert meta is not None and meta["run_id"] == run_id and meta["status"] == "completed"
    assert meta["script"] == SCRIPT and meta["last_checkpoint"].endswith("checkpoint_epoch_3.json")
    assert meta["started_at"] and meta["ended_at"]

    # Workflow 2, by Name this time and with no SSH flags: how to reach it is remembered.
    resumed = aws.cli(
        "aws", "train", "trainer", SCRIPT, "--sync-code", "--wait",
        "--", "--epochs", "5", "--resume-from", "checkpoints/checkpoint_epoch_1.json", *QUICK,
    )  # fmt: skip
    assert resumed.code == 0, resumed.err
    assert "Resumed from checkpoints/checkpoint_epoch_1.json: epoch 1" in resumed.out
    assert "epoch 1/5" not in resumed.out and "epoch 2/5" in resumed.out
    second = run_id_of(resumed)
    assert sorted(pulled(aws.project, second)) == ["checkpoint_epoch_%d.json" % n for n in (2, 3, 4, 5)]

    # monitor and checkpoint list see the latest run on the instance.
    shown = aws.cli("aws", "monitor", instance, "-o", "json")
    assert shown.code == 0, shown.err
    assert shown.json["run"]["run_id"] == second and "Training complete" in shown.json["log_tail"]
    text = aws.cli("aws", "monitor", "trainer")
    assert text.code == 0 and second in text.out and "Training complete: 5 epochs" in text.out
    listed = aws.cli("checkpoint", "list", "--instance-id", instance, "-o", "json")
    assert listed.code == 0, listed.err
    assert {f["path"] for f in listed.json["files"] if f["this_run"]} >= {"checkpoint_epoch_5.json"}


def test_workflow_11_checkpoints_survive_a_stop_and_start(aws: Aws) -> None:
    host = aws.world.hosts[0]
    instance = aws.world.launch_for(host)
    started = aws.train(instance, "--sync-code", script_args=("--epochs", "2", *QUICK))
    assert started.code == 0, started.err
    run_id = started.out.strip()
    assert aws.cli("runs", "wait", run_id).code == 0
    follow = aws.cli("aws", "monitor", instance, "--follow")
    assert follow.code == 0 and "Training complete" in follow.out
    ec2 = aws.world.client()
    ec2.stop_instances(InstanceIds=[instance])
    hypervisor(aws.world).wait_for(instance, "stopped")
    ec2.start_instances(InstanceIds=[instance])
    hypervisor(aws.world).wait_for(instance, "running")
    host.wait_reachable(20)
    resumed = aws.train(
        instance,
        "--sync-code",
        "--wait",
        script_args=("--epochs", "3", "--resume-from", "checkpoints/checkpoint_epoch_2.json", *QUICK),
    )
    assert resumed.code == 0, resumed.err
    assert "Resumed from checkpoints/checkpoint_epoch_2.json: epoch 2" in resumed.out


def test_workflow_13_bad_script_and_stopped_instance(aws: Aws) -> None:
    host = aws.world.hosts[0]
    instance = aws.world.launch_for(host)
    missing = aws.cli("aws", "train", instance, "nonexistent_script.py", "--sync-code", *REACH)
    assert missing.code == 2
    assert "nonexistent_script.py does not exist" in missing.err and len(missing.err.strip().splitlines()) <= 2
    aws.world.client().stop_instances(InstanceIds=[instance])
    hypervisor(aws.world).wait_for(instance, "stopped")
    stopped = aws.train(instance, "--sync-code", script_args=("--epochs", "1"))
    assert stopped.code == 4
    assert "is stopped" in stopped.err and "start it: runctl aws start %s --wait" % instance in stopped.err
    nothing = aws.cli("aws", "monitor", instance)
    assert nothing.code == 2 and "no runs on %s" % instance in nothing.err, "no run was recorded"
    none_listed = aws.cli("checkpoint", "list", "--instance-id", instance)
    assert none_listed.code == 2 and "no runs on" in none_listed.err
    unknown = aws.train("no-such-box", script_args=("--epochs", "1"))
    assert unknown.code == 2 and "no instance named 'no-such-box'" in unknown.err
    bad = aws.train(instance, "--on-end", "explode")
    assert bad.code == 2 and "--on-end" in bad.err
    assert aws.state(instance) == "stopped", "nothing changed"
    went = aws.train(instance, "--start", "--wait", script_args=("--epochs", "1", *QUICK))
    assert went.code == 0, went.err
    assert aws.state(instance) == "running"


# ---- the end of a run, controller present -------------------------------------------------------------


@pytest.mark.parametrize("action,final", [("stop", "stopped"), ("terminate", "terminated")])
def test_on_end_with_the_controller_present(aws: Aws, action: str, final: str) -> None:
    host = aws.world.hosts[0]
    host.check_poweroff_fake()
    instance = aws.world.launch_for(host)
    done = aws.train(instance, "--on-end", action, "--wait", script_args=("--epochs", "2", *QUICK))
    assert done.code == 0, done.err
    run_id = run_id_of(done)
    assert aws.state(instance) == final
    assert sorted(pulled(aws.project, run_id)) == ["checkpoint_epoch_1.json", "checkpoint_epoch_2.json"]
    result = end_result(aws, run_id)
    assert result["action"] == action and result["release"]["state"] == final
    verified = result["proof"]["checkpoints_verified"]
    assert verified["held"] is True and len(verified["files"]) == 2
    assert host.poweroff_calls() == [], "the controller claimed the step: the host did not power itself off"


def test_terminate_is_refused_when_a_checkpoint_changes_on_the_host_after_the_pull(aws: Aws) -> None:
    host = aws.world.hosts[0]
    host.check_poweroff_fake()
    instance = aws.world.launch_for(host)
    started = aws.train(instance, "--on-end", "terminate", script_args=SLOW)
    assert started.code == 0, started.err
    run_id = started.out.strip()
    started_when(aws, run_id)
    # Something beside the run keeps writing a checkpoint file: no copy of it can be proven exact.
    target = host_file(host, "proj", "checkpoints/growing.pt")
    grower = host.run(
        "mkdir -p %s && (setsid sh -c 'while true; do echo x >> %s; sleep 0.02; done' </dev/null >/dev/null 2>&1 &)"
        % (target.parent, target)
    )
    assert grower.returncode == 0
    waited = aws.cli("runs", "wait", run_id)
    assert waited.code == 0, waited.err
    assert aws.state(instance) == "stopped"
    result = end_result(aws, run_id)
    assert result["asked"] == "terminate" and result["action"] == "stop"
    assert "growing.pt differs from the host's copy" in result["reason"]
    run = aws.status(run_id)
    assert run["status"] == "completed"
    assert "not terminated" in run["notice"] and "growing.pt" in run["notice"]


def test_stop_calls_that_fail_twice_are_retried_and_confirmed(aws: Aws, fault_proxy: FaultProxy) -> None:
    host = aws.world.hosts[0]
    instance = aws.world.launch_for(host)
    fault_proxy.fail("StopInstances", 2)
    through = Aws(aws.sshenv, aws.world, aws.project, fault_proxy.env())
    done = through.train(instance, "--on-end", "stop", "--wait", script_args=("--epochs", "1", *QUICK))
    assert done.code == 0, done.err
    assert len(fault_proxy.calls("StopInstances")) == 3
    assert aws.state(instance) == "stopped"
    assert end_result(aws, run_id_of(done))["release"]["state"] == "stopped"


class Hooks(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Hooks.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    Hooks.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d/hook" % server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_stop_that_keeps_failing_exits_4_with_the_command_and_flags_the_instance(
    aws: Aws, fault_proxy: FaultProxy, webhook: str
) -> None:
    host = aws.world.hosts[0]
    instance = aws.world.launch_for(host)
    fault_proxy.fail("StopInstances", 100)
    through = Aws(aws.sshenv, aws.world, aws.project, fault_proxy.env())
    done = through.train(
        instance, "--on-end", "stop", "--wait", "--notify", webhook, script_args=("--epochs", "1", *QUICK), timeout=180
    )
    assert done.code == 4, done.err
    assert "aws ec2 stop-instances --region %s --instance-ids %s" % (REGION, instance) in done.err
    assert aws.state(instance) == "running"
    assert aws.tags(instance).get(ec2tags.RELEASE_FAILED) == "true"
    assert any(h.get("event") == "release_failed" for h in Hooks.received), Hooks.received
    again = through.cli("runs", "wait", run_id_of(done))
    assert again.code == 4 and "stop-instances" in again.err


# ---- the controller gone, the instance stopped from outside -------------------------------------


def test_with_the_controller_killed_the_host_stops_itself_and_the_end_is_read_after_a_start(aws: Aws) -> None:
    host = aws.world.hosts[0]
    host.check_poweroff_fake()
    instance = aws.world.launch_for(host)
    before = run_ids(aws)
    waiter = aws.popen("aws", "train", instance, SCRIPT, *REACH, "--on-end", "terminate", "--wait", "--", *SLOW)
    run_id = new_run(aws, before)
    started_when(aws, run_id)
    waiter.send_signal(signal.SIGKILL)
    waiter.wait(10)
    hypervisor(aws.world).wait_for(instance, "stopped", timeout=60)
    assert len(host.poweroff_calls()) == 1, "the agent powered the host off"
    assert aws.state(instance) == "stopped", "asked to terminate, it stopped: nothing proved the checkpoints safe"
    seen = aws.status(run_id)
    assert seen["status"] == "running", "how the run ended is on the stopped instance's disk"
    assert "stopped itself after the run" in seen["notice"]
    assert "runctl aws start %s --wait" % instance in seen["notice"]
    waited = aws.cli("runs", "wait", run_id)
    assert waited.code == 1 and "stopped itself after the run" in waited.err
    aws.world.client().start_instances(InstanceIds=[instance])
    hypervisor(aws.world).wait_for(instance, "running")
    host.wait_reachable(20)
    # The first look may still find sshd coming up ("last known state"); the next reads the end.
    after = poll(lambda: (lambda run: run if run["status"] == "completed" else None)(aws.status(run_id)), 30,
                 "the run's end read from the restarted instance", interval=0.5)  # fmt: skip
    assert "stopped, not terminated" in after["notice"]
    assert aws.state(instance) == "running", "a controller that comes back does not release it again"
    assert end_result(aws, run_id)["claimed_by"] == "agent"


def run_ids(aws: Aws) -> set[str]:
    return {run["run_id"] for run in aws.cli("runs", "list", "--all", "-o", "json").json}


def new_run(aws: Aws, before: set[str]) -> str:
    """The id of the run a `train` started in the background (the one not in `before`)."""
    found = poll(lambda: run_ids(aws) - before, 60, "the run to be recorded", interval=0.2)
    assert len(found) == 1
    return str(found.pop())


def test_an_instance_stopped_from_outside_mid_run_interrupts_the_run(aws: Aws) -> None:
    host = aws.world.hosts[0]
    instance = aws.world.launch_for(host)
    before = run_ids(aws)
    waiter = aws.popen("aws", "train", instance, SCRIPT, *REACH, "--wait", "--", *SLOW)
    run_id = new_run(aws, before)
    started_when(aws, run_id)
    aws.world.client().stop_instances(InstanceIds=[instance])
    hypervisor(aws.world).wait_for(instance, "stopped")
    _out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 1, err
    run = aws.status(run_id)
    assert run["status"] == "interrupted" and run["termination_status"] == "lost"
    assert run["termination_message"].startswith("instance %s was stopped from outside (" % instance)
    assert "UserInitiatedShutdown" in run["termination_message"]
    assert "interrupted" in err


def test_runs_status_ends_a_run_whose_instance_was_terminated_from_outside(aws: Aws) -> None:
    host = aws.world.hosts[0]
    instance = aws.world.launch_for(host)
    started = aws.train(instance, script_args=SLOW)
    assert started.code == 0, started.err
    run_id = started.out.strip()
    started_when(aws, run_id)
    aws.world.client().terminate_instances(InstanceIds=[instance])
    hypervisor(aws.world).wait_for(instance, "terminated")
    run = aws.status(run_id)
    assert run["status"] == "interrupted"
    assert "instance %s was terminated from outside" % instance in run["termination_message"]


# ---- metadata in tags ----------------------------------------------------------------------------------


def test_two_kilobytes_of_run_metadata_are_chunked_into_tags_and_replaced(aws: Aws) -> None:
    host = aws.world.hosts[0]
    instance = aws.world.launch_for(host, tags={"Name": "tagged", "team": "ml"})
    long_args = ["--seed", "1234567"] * 170  # argparse keeps the last; about 2 KB of arguments
    assert len(" ".join(long_args)) > 2048
    big = aws.train(instance, "--wait", script_args=(*long_args, "--epochs", "1", *QUICK))
    assert big.code == 0, big.err
    tags = aws.tags(instance)
    chunks = [k for k in tags if ec2tags.is_metadata_key(k) and k != ec2tags.RUN_COUNT]
    assert len(chunks) >= 8 and all(len(tags[k]) <= 256 for k in chunks) and len(tags) <= 50
    assert len(chunks) == int(tags[ec2tags.RUN_COUNT])
    meta = ec2tags.read_metadata(tags)
    assert meta is not None and meta["run_id"] == run_id_of(big) and meta["status"] == "completed"
    assert meta["args"][: len(long_args)] == long_args
    assert tags["team"] == "ml" and tags["Name"] == "tagged"
    small = aws.train(instance, "--wait", script_args=("--epochs", "1", *QUICK))
    assert small.code == 0, small.err
    tags = aws.tags(instance)
    chunks = [k for k in tags if ec2tags.is_metadata_key(k) and k != ec2tags.RUN_COUNT]
    assert len(chunks) == int(tags[ec2tags.RUN_COUNT]) < 8, "the old chunks were removed"
    meta = ec2tags.read_metadata(tags)
    assert meta is not None and meta["run_id"] == run_id_of(small)
