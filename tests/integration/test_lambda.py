"""`runctl lambda ...` end to end against the Lambda API fake, with real sshd test hosts as instances.

Real components only: the fake serves the published API over HTTP (tests/support/lambda_fake.py),
each instance's `ip` is a network-namespace sshd host, and runctl runs as CLI subprocesses. Every
test ends with no instance left non-terminated in the fake: a forgotten Lambda instance is pure loss.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_aws_train import Hooks, webhook  # noqa: F401  (the webhook fixture)
from tests.integration.test_ssh import Result, SshEnv
from tests.support.lambda_fake import LambdaFake
from tests.support.runs import poll

pytestmark = pytest.mark.timeout(240)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "training" / "train_with_checkpoints.py"
SCRIPT = "training/train_with_checkpoints.py"
TYPE = "gpu_1x_a10"
QUICK = ("--steps-per-epoch", "3", "--delay", "0.01")
# Long enough (60 s) that no test racing to stop it sees it complete first on a loaded machine; each stops it.
SLOW = ("--epochs", "3", "--steps-per-epoch", "200", "--delay", "0.1")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "training").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'proj'\nversion = '0'\n")
    shutil.copy(EXAMPLE, root / SCRIPT)
    return root


class Lambda:
    """The CLI against the fake account."""

    def __init__(self, sshenv: SshEnv, fake: LambdaFake, project: Path) -> None:
        self.sshenv, self.fake, self.project = sshenv, fake, project

    def cli(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> Result:
        full = {**self.fake.env(), **self.host_url(), **(env or {})}
        return self.sshenv.cli(*args, cwd=self.project, env=full, timeout=timeout)

    def host_url(self) -> dict[str, str]:
        gateway = self.sshenv.hosts[0].gateway
        return {"RUNCTL_LAMBDA_HOST_API_URL": self.fake.url_from(gateway)} if gateway else {}

    def train(self, *args: str, script_args: tuple[str, ...] = (), timeout: float = 150) -> Result:
        return self.cli(
            "lambda",
            "train",
            "--instance-type",
            TYPE,
            SCRIPT,
            "--ssh-user",
            "root",
            *args,
            "--",
            *script_args,
            timeout=timeout,
        )

    def popen_train(self) -> subprocess.Popen[str]:
        """A `lambda train` in the background (to interrupt it)."""
        from tests.integration.test_ssh import RUNCTL

        return subprocess.Popen(
            [*RUNCTL, "lambda", "train", "--instance-type", TYPE, SCRIPT, "--ssh-user", "root"],
            cwd=str(self.project),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.sshenv.environ(self.fake.env()),
        )

    def status(self, run_id: str) -> dict[str, Any]:
        result = self.cli("runs", "status", run_id, "-o", "json")
        assert result.code == 0, result.err
        return result.json  # type: ignore[no-any-return]

    def end_result(self, run_id: str) -> dict[str, Any]:
        db = sqlite3.connect(str(self.sshenv.home / "runctl.db"))
        rows = db.execute("SELECT data FROM events WHERE run_id = ? AND kind = 'on_end_result' ORDER BY id", (run_id,))
        found = [json.loads(r[0]) for r in rows]
        db.close()
        assert found, "no end-of-run result recorded"
        return found[-1]  # type: ignore[no-any-return]

    def runs(self) -> list[str]:
        result = self.cli("runs", "list", "--all", "-o", "json")
        assert result.code == 0, result.err
        return sorted(r["run_id"] for r in result.json)

    def launched(self) -> list[str]:
        return list(self.fake.instances)

    def all_terminated(self) -> None:
        poll(lambda: not self.fake.live(), 20, "every instance terminated")


@pytest.fixture
def lam(ec2_sshenv: SshEnv, lambda_world: LambdaFake, project: Path) -> Iterator[Lambda]:
    helper = Lambda(ec2_sshenv, lambda_world, project)
    yield helper
    left = [i.id for i in lambda_world.live()]
    for instance_id in left:  # never leak between tests, whatever the test found
        lambda_world.instances[instance_id].terminate_at = 0.0
    assert not left, "instances left non-terminated: %s" % left


def run_id_of(result: Result) -> str:
    for line in result.err.splitlines():
        if line.startswith("run ") and " started " in line:
            return line.split()[1]
    return result.out.strip().splitlines()[0]


def pulled(project: Path, run_id: str) -> list[str]:
    return sorted(p.name for p in (project / "checkpoints" / run_id).glob("checkpoint_epoch_*.json"))


# ---- end to end ---------------------------------------------------------------------------------


def test_auto_stop_on_low_loss_pulls_checkpoints_then_terminates_confirmed(lam: Lambda) -> None:
    done = lam.train(
        "--wait",
        "--auto-stop-loss",
        "0.5",
        "--auto-stop-patience",
        "1",
        script_args=("--epochs", "20", "--steps-per-epoch", "5", "--delay", "0.05"),
    )
    assert done.code == 0, done.err
    run_id = run_id_of(done)
    run = lam.status(run_id)
    assert run["termination_status"] == "auto_low_loss", run
    assert pulled(lam.project, run_id), "checkpoints came home before the terminate"
    result = lam.end_result(run_id)
    assert result["action"] == "terminate" and result["release"]["state"] == "terminated"
    assert result["proof"]["checkpoints_verified"]["held"] is True
    assert len(lam.launched()) == 1 and not lam.fake.live()
    assert "terminated (confirmed)" in done.err
    cost = run.get("cost") or {}
    assert cost.get("hourly_price") == 0.75 and cost.get("amount", 0) > 0, run


def test_completed_run_on_a_launched_instance_lists_cost_and_terminates(lam: Lambda) -> None:
    done = lam.train("--wait", script_args=("--epochs", "2", *QUICK))
    assert done.code == 0, done.err
    run_id = run_id_of(done)
    assert pulled(lam.project, run_id) == ["checkpoint_epoch_1.json", "checkpoint_epoch_2.json"]
    assert lam.status(run_id)["status"] == "completed"
    (instance_id,) = lam.launched()
    shown = lam.cli("lambda", "status", instance_id, "-o", "json")
    assert shown.code == 0, shown.err
    assert shown.json["status"] == "terminated" and shown.json["hourly_price"] == 0.75
    assert shown.json["cost_so_far"] > 0


def test_runs_stop_ends_the_run_and_terminates(lam: Lambda) -> None:
    started = lam.train(script_args=SLOW)
    assert started.code == 0, started.err
    run_id = started.out.strip()
    poll(lambda: (lam.status(run_id).get("step") or 0) >= 1, 60, "the run's first step", interval=0.3)
    listed = lam.cli("lambda", "list", "-o", "json")
    assert listed.code == 0, listed.err
    assert [v["status"] for v in listed.json] == ["active"] and listed.json[0]["runs"][0]["run_id"] == run_id
    stopped = lam.cli("runs", "stop", run_id)
    assert stopped.code == 0, stopped.err
    poll(lambda: not lam.fake.live(), 60, "the instance terminated after the stop")
    assert lam.status(run_id)["termination_status"] == "user_stop"
    assert pulled(lam.project, run_id), "checkpoint saved on the graceful stop came home"


def test_a_failing_script_still_terminates(lam: Lambda) -> None:
    (lam.project / "training" / "boom.py").write_text("import sys\nprint('boom')\nsys.exit(3)\n")
    done = lam.cli("lambda", "train", "--instance-type", TYPE, "training/boom.py", "--ssh-user", "root", "--wait")
    assert done.code == 1, done.err
    assert lam.status(run_id_of(done))["status"] == "failed"
    lam.all_terminated()


STALL = """
import sys
import time

import runctl.training as rt

for step in range(1, 6):
    rt.report(step=step, epoch=2, total_epochs=2, loss=1.0 / step)
    time.sleep(0.05)
print("step frozen at 5", flush=True)
time.sleep(1000)
"""


def test_final_epoch_stall_completes_and_terminates(lam: Lambda) -> None:
    (lam.project / "training" / "stall.py").write_text(STALL)
    done = lam.cli(
        "lambda",
        "train",
        "--instance-type",
        TYPE,
        "training/stall.py",
        "--ssh-user",
        "root",
        "--wait",
        "--poll-interval",
        "0.3",
        "--stall-polls",
        "3",
        "--stop-grace",
        "1",
    )
    assert done.code == 0, done.err
    run = lam.status(run_id_of(done))
    assert (run["status"], run["termination_status"]) == ("completed", "auto_complete")
    lam.all_terminated()


def test_unproven_checkpoints_keep_the_instance_and_say_how_to_end_it(lam: Lambda, webhook: str) -> None:  # noqa: F811
    done = lam.train("--wait", "--no-download-checkpoints", "--notify", webhook, script_args=("--epochs", "1", *QUICK))
    assert done.code == 0, done.err
    run_id = run_id_of(done)
    (instance_id,) = lam.launched()
    result = lam.end_result(run_id)
    assert result["asked"] == "terminate" and result["action"] == "none"
    assert "cannot be stopped" in result["reason"]
    assert [i.id for i in lam.fake.live()] == [instance_id], "kept, not destroyed with its checkpoints"
    run = lam.status(run_id)
    assert "not terminated" in run["notice"] and "not pulled" in run["notice"]
    assert any(h.get("event") == "release_skipped" for h in Hooks.received), Hooks.received
    gone = lam.cli("lambda", "terminate", instance_id)
    assert gone.code == 0, gone.err
    lam.all_terminated()


def test_terminate_failing_after_its_retries_exits_4_with_the_command(lam: Lambda, webhook: str) -> None:  # noqa: F811
    lam.fake.fail_next("POST", "/instance-operations/terminate", 500, times=1000)
    done = lam.train("--wait", "--notify", webhook, script_args=("--epochs", "1", *QUICK))
    assert done.code == 4, done.err
    (instance_id,) = lam.launched()
    assert "runctl lambda terminate %s" % instance_id in done.err
    assert any(h.get("event") == "release_failed" for h in Hooks.received), Hooks.received
    listed = lam.cli("lambda", "list")
    assert listed.code == 0 and "release-failed" in listed.out
    lam.fake.faults.clear()
    gone = lam.cli("lambda", "terminate", instance_id)
    assert gone.code == 0, gone.err
    lam.all_terminated()
    again = lam.cli("lambda", "list")
    assert instance_id not in again.out


# ---- injected faults: never an instance left running ---------------------------------------------


def test_429_bursts_are_retried(lam: Lambda) -> None:
    lam.fake.burst_429(4)
    done = lam.train("--wait", script_args=("--epochs", "1", *QUICK))
    assert done.code == 0, done.err
    assert sum(1 for c in lam.fake.calls if c[3] == 429) >= 4
    lam.all_terminated()


def test_a_500_on_the_first_terminate_is_retried_and_confirmed(lam: Lambda) -> None:
    lam.fake.fail_next("POST", "/instance-operations/terminate", 500)
    done = lam.train("--wait", script_args=("--epochs", "1", *QUICK))
    assert done.code == 0, done.err
    terminates = [c for c in lam.fake.calls if c[2].endswith("/terminate")]
    # A loaded machine may also meet the fake's rate limit (429, retried after its wait) in between.
    assert [c[3] for c in terminates if c[3] != 429][:2] == [500, 200]
    lam.all_terminated()


def test_launch_accepted_but_the_first_gets_fail(lam: Lambda) -> None:
    lam.fake.fail_get_after_launch(3)
    done = lam.train("--wait", script_args=("--epochs", "1", *QUICK))
    assert done.code == 0, done.err
    assert len(lam.launched()) == 1
    lam.all_terminated()


def test_capacity_gone_between_types_and_launch_moves_to_a_region_that_has_it(lam: Lambda) -> None:
    lam.fake.set_capacity(TYPE, "us-east-1", 1)
    lam.fake.set_capacity(TYPE, "us-west-1", 0)
    lam.fake.set_capacity(TYPE, "europe-central-1", 0)
    # The check's look-up sees us-east-1; then capacity moves to europe-central-1 before the launch.
    original = lam.fake.instance_types

    def moved() -> dict[str, Any]:
        data = original()
        lam.fake.set_capacity(TYPE, "us-east-1", 0)
        lam.fake.set_capacity(TYPE, "europe-central-1", 1)
        return data

    lam.fake.instance_types = moved  # type: ignore[method-assign]
    try:
        done = lam.train("--wait", script_args=("--epochs", "1", *QUICK))
    finally:
        lam.fake.instance_types = original  # type: ignore[method-assign]
    assert done.code == 0, done.err
    assert [i.region for i in lam.fake.instances.values()] == ["europe-central-1"]
    lam.all_terminated()


def test_capacity_gone_everywhere_names_no_region_and_launches_nothing(lam: Lambda) -> None:
    before = lam.runs()
    lam.fake.capacity_gone_after_types(TYPE)
    done = lam.train(
        script_args=(
            "--epochs",
            "1",
        )
    )
    assert done.code == 4, done.err
    assert "no capacity for gpu_1x_a10" in done.err
    assert "types with capacity" in done.err
    assert lam.launched() == []
    assert lam.runs() == before, "nothing was recorded"


def test_setup_failure_after_the_launch_terminates_what_it_launched(lam: Lambda) -> None:
    before = lam.runs()
    done = lam.cli("lambda", "train", "--instance-type", TYPE, SCRIPT, "--ssh-user", "root", "--remote-dir", "/")
    assert done.code == 2, done.err
    assert "root directory" in done.err
    assert len(lam.launched()) == 1
    lam.all_terminated()
    assert lam.runs() == before, "the failed start left no run"


def test_ctrl_c_while_booting_terminates_what_it_launched(lam: Lambda) -> None:
    import signal

    lam.fake.boot_seconds = 30.0
    proc = lam.popen_train()
    try:
        poll(lambda: lam.launched(), 30, "the launch")
        poll(lambda: any(c[1] == "GET" and "/instances/" in c[2] for c in lam.fake.calls), 10, "a status read")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "terminating" in err and "nothing is running" in err
    assert not lam.fake.live()


def test_ctrl_c_while_the_launched_instance_is_first_read_terminates_it(lam: Lambda) -> None:
    """The window between the launch's answer and the first read of the instance (retried here):
    the instance exists, the caller does not have it yet, and Ctrl-C must not leave it billing."""
    import signal

    lam.fake.fail_get_after_launch(50)
    proc = lam.popen_train()
    try:
        poll(lambda: lam.launched(), 30, "the launch")
        poll(lambda: any(c[1] == "GET" and "/instances/" in c[2] and c[3] >= 500 for c in lam.fake.calls), 10,
             "a failing read of the launched instance")  # fmt: skip
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        lam.fake.fail_get_after_launch(0)
    assert proc.returncode == 130, err
    assert "interrupted: terminating" in err and "nothing is running" in err
    assert not lam.fake.live()


# ---- bad input -----------------------------------------------------------------------------------


def test_bad_api_key_exits_4_and_launches_nothing(lam: Lambda) -> None:
    done = lam.cli("lambda", "train", "--instance-type", TYPE, SCRIPT, env={"LAMBDA_API_KEY": "wrong"})
    assert done.code == 4
    lines = done.err.strip().splitlines()
    assert len(lines) == 2 and "rejected the API key" in lines[0] and "LAMBDA_API_KEY" in lines[1]
    assert "wrong" not in done.err, "the key is never printed"
    assert lam.launched() == []


def test_no_api_key_is_a_usage_error(lam: Lambda, tmp_path: Path) -> None:
    done = lam.cli("lambda", "list", env={"LAMBDA_API_KEY": "", "HOME": str(tmp_path)})
    assert done.code == 2 and "no Lambda API key" in done.err


def test_key_from_the_lambda_cli_file(lam: Lambda, tmp_path: Path) -> None:
    (tmp_path / ".lambda_cloud").mkdir()
    (tmp_path / ".lambda_cloud" / "lambda_keys").write_text("api_key = %s\n" % lam.fake.key)
    done = lam.cli("lambda", "types", "--available", "-o", "json", env={"LAMBDA_API_KEY": "", "HOME": str(tmp_path)})
    assert done.code == 0, done.err
    assert {t["name"] for t in done.json} == {"gpu_1x_a10", "gpu_1x_h100_pcie", "gpu_8x_a100"}


def test_lambda_stop_says_only_terminate_exists(lam: Lambda) -> None:
    done = lam.cli("lambda", "stop", "0123abcd")
    assert done.code == 2
    assert done.err.strip().splitlines() == [
        "runctl: Lambda instances cannot be stopped, only terminated",
        "  terminate it: runctl lambda terminate 0123abcd",
    ]


def test_unknown_type_and_missing_script_create_nothing(lam: Lambda) -> None:
    typo = lam.cli("lambda", "train", "--instance-type", "gpu_1x_a100x", SCRIPT)
    assert typo.code == 2 and "unknown Lambda instance type" in typo.err
    missing = lam.cli("lambda", "train", "--instance-type", TYPE, "nope.py")
    assert missing.code == 2 and "does not exist" in missing.err
    assert lam.launched() == []


def test_launch_list_terminate_commands(lam: Lambda) -> None:
    launched = lam.cli("lambda", "launch", "--instance-type", TYPE, "--region", "us-west-1", "--wait", "-o", "json")
    assert launched.code == 0, launched.err
    data = launched.json
    assert data["status"] == "active" and data["region"] == "us-west-1" and data["ip"] in lam.fake.addresses
    listed = lam.cli("lambda", "list")
    assert listed.code == 0 and data["id"] in listed.out and "0.75" in listed.out
    gone = lam.cli("lambda", "terminate", data["id"])
    assert gone.code == 0, gone.err
    assert "terminated (confirmed)" in gone.err
    lam.all_terminated()


def test_train_on_a_named_instance_keeps_it_unless_asked(lam: Lambda) -> None:
    launched = lam.cli("lambda", "launch", "--instance-type", TYPE, "--wait", "-o", "json")
    assert launched.code == 0, launched.err
    instance_id = launched.json["id"]
    kept = lam.cli(
        "lambda", "train", instance_id, SCRIPT, "--ssh-user", "root", "--wait", "--", "--epochs", "1", *QUICK
    )
    assert kept.code == 0, kept.err
    assert [i.id for i in lam.fake.live()] == [instance_id], "--on-end defaults to none on a named instance"
    ended = lam.cli(
        "lambda",
        "train",
        instance_id,
        SCRIPT,
        "--ssh-user",
        "root",
        "--wait",
        "--on-end",
        "terminate",
        "--",
        "--epochs",
        "1",
        *QUICK,
    )
    assert ended.code == 0, ended.err
    lam.all_terminated()
    assert pulled(lam.project, run_id_of(ended)) == ["checkpoint_epoch_1.json"]


def test_an_idle_instance_is_warned_of_first_by_any_command(lam: Lambda) -> None:
    launched = lam.cli("lambda", "launch", "--instance-type", TYPE, "--wait", "-o", "json")
    assert launched.code == 0, launched.err
    instance_id = launched.json["id"]
    later = lam.cli("runs", "list", env={"RUNCTL_IDLE_WARN": "0"})
    assert later.code == 0, later.err
    first = later.err.splitlines()[0]
    assert first.startswith("runctl: warning: instance %s has been idle for 0 minutes at $0.75/hr" % instance_id)
    assert first.endswith("terminate it: runctl lambda terminate %s" % instance_id)
    quiet = lam.cli("runs", "list")
    assert instance_id not in quiet.err, "idle for less than the default 10 minutes"
    assert lam.cli("lambda", "terminate", instance_id).code == 0
    after = lam.cli("runs", "list", env={"RUNCTL_IDLE_WARN": "0"})
    assert instance_id not in after.err
    lam.all_terminated()


def test_seed_layout_keeps_the_termination_in_training_log_json(lam: Lambda) -> None:
    output = lam.project / "training_output"
    output.mkdir()
    (output / "training_log.json").write_text(json.dumps({"losses": [1.0, 0.5]}))
    done = lam.train(
        "--wait",
        "--auto-stop-loss",
        "0.5",
        "--auto-stop-patience",
        "1",
        script_args=("--epochs", "20", "--steps-per-epoch", "5", "--delay", "0.05"),
    )
    assert done.code == 0, done.err
    log = json.loads((output / "training_log.json").read_text())
    assert log["termination_status"] == "auto_low_loss" and "below threshold" in log["termination_message"]
    assert log["losses"] == [1.0, 0.5] and log["run_id"] == run_id_of(done), "the file's own keys are kept"
    assert sorted(p.name for p in (output / "checkpoints").glob("checkpoint_epoch_*.json"))
    assert not (lam.project / "checkpoints").exists()
    lam.all_terminated()


def test_host_terminate_ends_the_bill_with_no_controller(lam: Lambda, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("api_key = %s\n" % lam.fake.key)
    gateway = lam.sshenv.hosts[0].gateway
    assert gateway, "netns hosts reach the test machine at their gateway"
    started = lam.train(
        "--host-terminate",
        str(key_file),
        script_args=("--epochs", "1", *QUICK),
    )
    assert started.code == 0, started.err
    run_id = started.out.strip()
    assert "--host-terminate: your API key is on" in started.err and "(0600)" in started.err
    (instance_id,) = lam.launched()
    host = next(h for h in lam.sshenv.hosts if h.address == lam.fake.instances[instance_id].address)
    key_on_host = host.home / "runctl" / "proj" / ".runctl" / "lambda_api_key"
    assert oct(key_on_host.stat().st_mode & 0o777) == "0o600"
    poll(lambda: not lam.fake.live(), 60, "the host's own terminate")
    callers = {c[4] for c in lam.fake.calls if c[2].endswith("/terminate")}
    assert callers == {host.address}, "the host asked, no controller did"
    host.power_off_now()  # what a terminated instance is
    try:
        run = lam.status(run_id)
        assert run["status"] == "lost" and "terminated itself after the run" in run["termination_message"]
        db = sqlite3.connect(str(lam.sshenv.home / "runctl.db"))
        stored = " ".join(str(r[0]) for r in db.execute("SELECT spec FROM runs WHERE run_id = ?", (run_id,)))
        db.close()
        assert "lambda_terminate.json" in stored and lam.fake.key not in stored, "the key is never in the spec"
    finally:
        host.start_sshd()
        host.wait_reachable(20)


def test_host_terminate_with_the_controller_present_is_the_controllers(lam: Lambda, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(lam.fake.key + "\n")
    done = lam.train("--host-terminate", str(key_file), "--wait", script_args=("--epochs", "1", *QUICK))
    assert done.code == 0, done.err
    lam.all_terminated()
    callers = {c[4] for c in lam.fake.calls if c[2].endswith("/terminate")}
    assert callers == {"127.0.0.1"}, "the controller claimed the step: pulled, verified, terminated"
    assert lam.end_result(run_id_of(done))["proof"]["checkpoints_verified"]["held"] is True


def test_host_terminate_needs_a_key_and_on_end_terminate(lam: Lambda, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    bad = lam.train("--host-terminate", str(empty))
    assert bad.code == 2 and "no API key in --host-terminate" in bad.err
    keep = lam.train("--host-terminate", str(empty), "--on-end", "none")
    assert keep.code == 2
    assert lam.launched() == []


def test_ctrl_c_of_wait_confirmed_on_the_terminal_stops_pulls_and_terminates(lam: Lambda) -> None:
    import os
    import pty
    import signal
    import subprocess
    import threading

    from tests.integration.test_ssh import RUNCTL

    master, slave = pty.openpty()
    argv = [*RUNCTL, "lambda", "train", "--instance-type", TYPE, SCRIPT, "--ssh-user", "root", "--wait", "--", *SLOW]
    proc = subprocess.Popen(argv, cwd=str(lam.project), stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=lam.sshenv.environ({**lam.fake.env(), **lam.host_url()}))  # fmt: skip
    os.close(slave)
    err: list[str] = []  # stderr as it comes, character by character (the question ends no line)
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        poll(lambda: "Ctrl-C detaches" in "".join(err), 60, "the run to start")
        run_id = next(line.split()[1] for line in "".join(err).splitlines() if "Ctrl-C detaches" in line)
        poll(lambda: (lam.status(run_id).get("step") or 0) >= 1, 60, "the first step", interval=0.3)
        proc.send_signal(signal.SIGINT)
        poll(lambda: "[y/N] " in "".join(err), 30, "the question")
        os.write(master, b"y\n")
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    reader.join(5)
    from runctl.core import status as st

    assert proc.returncode == st.exit_code_for("stopped"), "".join(err)  # as `runs wait` exits for it
    assert "terminated (confirmed)" in "".join(err)
    run = lam.status(run_id)
    assert run["termination_status"] == "user_stop", run
    assert pulled(lam.project, run_id)
    lam.all_terminated()


def test_ssh_keys_list_and_add(lam: Lambda, tmp_path: Path) -> None:
    public = tmp_path / "id.pub"
    public.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample me@laptop\n")
    added = lam.cli("lambda", "ssh-keys", "--add", str(public), "--name", "laptop", "-o", "json")
    assert added.code == 0, added.err
    assert {k["name"] for k in added.json} == {"runctl-test", "laptop"}
    again = lam.cli("lambda", "ssh-keys", "--add", str(public), "--name", "laptop")
    assert again.code == 2 and "already exists" in again.err
    private = tmp_path / "id"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxxx\n")
    refused = lam.cli("lambda", "ssh-keys", "--add", str(private), "--name", "oops")
    assert refused.code == 2 and "not an OpenSSH public key" in refused.err
    # Two keys now: a launch must name one.
    two = lam.cli("lambda", "launch", "--instance-type", TYPE)
    assert two.code == 2 and "--ssh-key" in two.err
    assert lam.launched() == []


def test_a_launch_whose_answer_is_lost_is_found_by_its_token_and_terminated(lam: Lambda) -> None:
    lam.fake.lose_launch_answer()
    done = lam.train("--wait", script_args=("--epochs", "1", *QUICK))
    assert done.code == 0, done.err
    launches = [c for c in lam.fake.calls if c[2].endswith("/launch")]
    # A 429 (the launch rate limit, met when the previous test launched moments ago) launched nothing.
    assert [c[3] for c in launches if c[3] != 429] == [500], "never launched twice"
    assert len(lam.launched()) == 1
    lam.all_terminated()


def test_account_inactive_quota_and_an_unreachable_api(lam: Lambda) -> None:
    lam.fake.account_inactive = True
    inactive = lam.cli("lambda", "list")
    assert inactive.code == 4 and "account is inactive" in inactive.err
    lam.fake.account_inactive = False
    lam.fake.quota = 0
    quota = lam.cli("lambda", "launch", "--instance-type", TYPE)
    assert quota.code == 4 and "quota exceeded" in quota.err and "runctl lambda list" in quota.err
    assert quota.err.strip().splitlines()[-2] == "runctl: Lambda quota exceeded"
    down = lam.cli("lambda", "list", env={"RUNCTL_LAMBDA_API_URL": "http://127.0.0.1:9/api/v1"})
    assert down.code == 4 and "cannot reach http://127.0.0.1:9/api/v1" in down.err
    assert lam.launched() == []


def test_terminate_stops_the_live_run_first_and_pulls_its_checkpoints(lam: Lambda) -> None:
    launched = lam.cli("lambda", "launch", "--instance-type", TYPE, "--wait", "-o", "json")
    assert launched.code == 0, launched.err
    instance_id = launched.json["id"]
    started = lam.cli("lambda", "train", instance_id, SCRIPT, "--ssh-user", "root", "--", *SLOW)
    assert started.code == 0, started.err
    run_id = started.out.strip()
    poll(lambda: (lam.status(run_id).get("step") or 0) >= 1, 60, "the run's first step", interval=0.3)
    shown = lam.cli("lambda", "status", instance_id)
    assert shown.code == 0 and run_id in shown.out and "$0.75/hr" in shown.out
    gone = lam.cli("lambda", "terminate", instance_id)
    assert gone.code == 0, gone.err
    assert "stopping run %s" % run_id in gone.err
    assert lam.status(run_id)["termination_status"] == "user_stop"
    assert pulled(lam.project, run_id)
    lam.all_terminated()


def test_an_unknown_instance_is_a_usage_error(lam: Lambda) -> None:
    for command in ("status", "terminate"):
        done = lam.cli("lambda", command, "0123456789abcdef")
        assert done.code == 2 and done.err.strip().splitlines() == [
            "runctl: no Lambda instance 0123456789abcdef",
            "  list them: runctl lambda list",
        ]
    bad = lam.cli("lambda", "status", "../etc")
    assert bad.code == 2 and "invalid Lambda instance id" in bad.err
