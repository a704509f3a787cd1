"""--max-cost end to end: real agents stop real runs when the host's price times their time nears the budget.

A high stated price (--hourly-price 3600: a dollar a second) makes seconds cost dollars, so a budget
of a few dollars is spent in seconds. The agent alone counts the money (from the price in the spec
and its own clock), so these runs are started without --wait where the controller plays no part.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.runs import kill_leftover_runs, poll, run_dir, start_run, status_file, write_script

PRICE = "3600"  # $/hr: $1 a second
DOLLARS_PER_SECOND = 1.0

# Trains until told to stop; on the stop request it saves its checkpoint and exits 0.
SAVES_ON_STOP = """
    import json
    import time

    import runctl.training as rt

    step = 0
    while True:
        step += 1
        rt.report(step=step, loss=1.0 / step)
        if rt.should_stop():
            rt.atomic_write(rt.checkpoint_dir() / ("checkpoint_step_%d.json" % step), json.dumps({"step": step}))
            print("stop requested: saved step", step, flush=True)
            break
        time.sleep(0.05)
"""

# Ignores STOP_TRAINING and SIGTERM: only SIGKILL ends it.
STUBBORN = """
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(0.05)
"""

FIGURES = re.compile(r"spent \$([\d.]+) of \$([\d.]+) budget at \$([\d.]+)/hr after ([\d.]+) s")


@pytest.fixture(autouse=True)
def no_leftover_runs(project: Path) -> Iterator[None]:
    yield
    kill_leftover_runs(project)


def wait_end(cli, run_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    result = cli("runs", "wait", run_id, "--timeout", "60s", "-o", "json")
    assert result.code != 3, "run %s did not end: %s" % (run_id, result.err)
    return result.json  # type: ignore[no-any-return]


def overshoot(project: Path, run_id: str, max_cost: float) -> float:
    """Dollars past the budget, from the agent's own record: price x (the end - when it took the run)."""
    state = status_file(project, run_id)
    since = state["budget"]["since"]
    return (float(state["ended_at"]) - since) * DOLLARS_PER_SECOND - max_cost


def test_a_budget_stop_saves_the_checkpoint_and_ends_stopped_budget(cli, project: Path) -> None:
    script = write_script(project, "train.py", SAVES_ON_STOP)
    flags = ("--hourly-price", PRICE, "--max-cost", "3", "--poll-interval", "1s")
    run_id = start_run(cli, script, *flags)
    run = wait_end(cli, run_id)
    assert run["status"] == "stopped" and run["termination_status"] == "budget"
    figures = FIGURES.search(run["termination_message"])
    assert figures, run["termination_message"]
    assert figures.group(2) == "3.00" and figures.group(3) == "3600"
    saved = list((project / "checkpoints").glob("checkpoint_step_*.json"))
    assert saved, "the script's checkpoint was not saved on the budget stop"
    assert run["last_checkpoint"] and Path(run["last_checkpoint"]).name == saved[-1].name
    assert overshoot(project, run_id, 3.0) <= 1.0 * DOLLARS_PER_SECOND  # one poll interval's cost
    assert float(figures.group(1)) <= 3.0 + 1.0
    status = cli("runs", "status", run_id, "-o", "json").json
    assert status["budget"]["max_cost"] == 3.0 and status["budget"]["hourly_price"] == 3600.0
    assert status["budget"]["spent"] <= 4.0


def test_a_script_that_ignores_the_stop_is_killed_within_one_poll_past_the_budget(cli, project: Path) -> None:
    script = write_script(project, "stubborn.py", STUBBORN)
    flags = ("--hourly-price", PRICE, "--max-cost", "4", "--poll-interval", "2s", "--stop-grace", "60s")
    run_id = start_run(cli, script, *flags)
    run = wait_end(cli, run_id)
    assert run["status"] == "stopped" and run["termination_status"] == "budget", run
    assert run["exit_signal"] == "SIGKILL"
    assert overshoot(project, run_id, 4.0) <= 2.0 * DOLLARS_PER_SECOND


def test_runs_status_shows_spend_against_the_budget_and_the_time_left(cli, project: Path) -> None:
    script = write_script(project, "train.py", SAVES_ON_STOP)
    run_id = start_run(cli, script, "--hourly-price", PRICE, "--max-cost", "900", "--poll-interval", "1s")
    poll(lambda: status_file(project, run_id).get("budget"), 20, "the run's budget in status.json")
    shown = cli("runs", "status", run_id, "-o", "json").json["budget"]
    assert shown["max_cost"] == 900.0 and shown["hourly_price"] == 3600.0
    assert 0 < shown["spent"] < 900 and shown["left"] == pytest.approx(900 - shown["spent"], abs=1e-3)
    assert 0 < shown["seconds_left"] < 900
    text = cli("runs", "status", run_id)
    assert re.search(r"budget\s+\$[\d.]+ of \$900\.00 at \$3600/hr; \S+ left at this rate", text.out), text.out
    assert cli("runs", "stop", run_id).code == 0
    final = cli("runs", "status", run_id, "-o", "json").json
    assert final["termination_status"] == "user_stop" and final["budget"]["spent"] < 900


def test_max_cost_from_runctl_toml(cli, project: Path) -> None:
    (project / "runctl.toml").write_text('[policies]\nmax_cost = 2\npoll_interval = "1s"\n')
    run_id = start_run(cli, write_script(project, "train.py", SAVES_ON_STOP), "--hourly-price", PRICE)
    run = wait_end(cli, run_id)
    assert run["termination_status"] == "budget"
    assert "of $2.00 budget" in run["termination_message"]


def test_a_flag_overrides_the_config_budget(cli, project: Path) -> None:
    (project / "runctl.toml").write_text("[policies]\nmax_cost = 1\n")
    script = write_script(project, "train.py", SAVES_ON_STOP)
    run_id = start_run(cli, script, "--hourly-price", PRICE, "--max-cost", "5000")
    poll(lambda: status_file(project, run_id).get("budget"), 20, "the run's budget in status.json")
    assert status_file(project, run_id)["budget"]["max_cost"] == 5000.0
    assert cli("runs", "stop", run_id, "--now").code == 0


def nothing_recorded(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("runs", "list", "--all", "-o", "json").json == []
    assert not list((project / ".runctl" / "runs").glob("*")) if (project / ".runctl" / "runs").exists() else True


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "--max-cost must be more than 0 dollars"),
        ("-3", "--max-cost must be more than 0 dollars"),
        ("nan", "--max-cost must be a finite number"),
        ("inf", "--max-cost must be a finite number"),
        ("ten", "invalid value for '--max-cost'"),
    ],
)
def test_bad_max_cost_is_refused_before_anything_runs(cli, project: Path, value: str, problem: str) -> None:
    result = cli("local", "train", "train_stub.py", "--hourly-price", PRICE, "--max-cost", value)
    assert result.code == 2 and problem in result.err, result.err
    assert "Traceback" not in result.err
    nothing_recorded(cli, project)


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_bad_hourly_price_is_refused(cli, project: Path, value: str) -> None:
    result = cli("local", "train", "train_stub.py", "--hourly-price", value, "--max-cost", "5")
    assert result.code == 2 and "--hourly-price must be a finite number of dollars above 0" in result.err
    assert "Traceback" not in result.err
    nothing_recorded(cli, project)


def test_max_cost_on_a_host_without_a_price_starts_nothing(cli, project: Path) -> None:
    result = cli("local", "train", "train_stub.py", "--max-cost", "5")
    assert result.code == 2, result.err
    assert "no hourly price known for this host: --max-cost needs one" in result.err
    assert "--hourly-price USD" in result.err
    assert "Traceback" not in result.err
    nothing_recorded(cli, project)


def test_max_cost_from_config_on_a_host_without_a_price_starts_nothing(cli, project: Path) -> None:
    (project / "runctl.toml").write_text("[policies]\nmax_cost = 5\n")
    result = cli("local", "train", "train_stub.py")
    assert result.code == 2 and "no hourly price known" in result.err
    nothing_recorded(cli, project)


def test_a_run_without_a_budget_carries_no_budget(cli, project: Path) -> None:
    run_id = start_run(cli, "train_stub.py", "--hourly-price", PRICE, args=("--epochs", "1", "--steps-per-epoch", "3"))
    run = wait_end(cli, run_id)
    assert run["status"] == "completed" and "budget" not in run
    assert "budget" not in status_file(project, run_id)
    assert run_dir(project, run_id).exists()


# ---- over SSH: the agent on the host counts the money ------------------------------------------


def test_a_budget_over_ssh_stops_on_the_host_and_brings_the_checkpoint_home(sshenv, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.integration.test_ssh import make_project, remote_project

    host = sshenv.hosts[0]
    project = make_project(tmp_path, "s-budget")
    price, max_cost, poll_seconds = 720.0, 3.0, 2.0  # $0.20 a second: 15 s of budget
    args = ["--epochs", "3", "--steps-per-epoch", "500", "--delay", "0.05", "--checkpoint-interval", "1000"]
    started = sshenv.cli(
        "ssh", "train", sshenv.dest(host), "train_stub.py", "--hourly-price", "720", "--max-cost", "3",
        "--poll-interval", "2s", "--", *args, cwd=project,
    )  # fmt: skip
    assert started.code == 0, started.err
    run_id = started.out.strip()
    waited = sshenv.cli("runs", "wait", run_id, "--timeout", "60s", cwd=project)
    assert waited.code == 1, waited.err  # stopped, not completed
    run = sshenv.status(run_id, project)
    assert run["status"] == "stopped" and run["termination_status"] == "budget", run
    assert FIGURES.search(run["termination_message"]), run["termination_message"]
    log = sshenv.cli("runs", "logs", run_id, cwd=project).out
    saved = re.search(r"Stop requested: saved checkpoint \S*/(checkpoint_epoch_\d+\.json)", log)
    assert saved, log[-500:]
    assert (project / "checkpoints" / run_id / saved.group(1)).is_file()
    remote = json.loads((remote_project(host, "s-budget") / ".runctl" / "runs" / run_id / "status.json").read_text())
    spent_at_end = (remote["ended_at"] - remote["budget"]["since"]) * price / 3600.0
    assert spent_at_end <= max_cost + poll_seconds * price / 3600.0
    assert run["budget"]["max_cost"] == max_cost and run["budget"]["spent"] <= max_cost + 0.4


# ---- on EC2: the price comes from runctl's own pricing -------------------------------------------


def test_a_budget_on_ec2_is_counted_at_the_instances_price(ec2_sshenv, ec2_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from runctl.providers.ec2prices import on_demand_price
    from tests.integration.test_aws_train import EXAMPLE, SCRIPT, Aws
    from tests.support.aws import DEFAULT_INSTANCE_TYPE, REGION

    root = tmp_path / "ec2proj"
    (root / "training").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'ec2proj'\nversion = '0'\n")
    shutil.copy(EXAMPLE, root / SCRIPT)
    aws = Aws(ec2_sshenv, ec2_world, root)
    price, _ = on_demand_price(DEFAULT_INSTANCE_TYPE, REGION)
    assert price
    max_cost = price * 8 / 3600.0  # eight seconds of the instance
    instance = aws.world.launch_for(aws.world.hosts[0])
    started = aws.train(
        instance, "--sync-code", "--max-cost", "%.9f" % max_cost, "--poll-interval", "1s",
        script_args=("--epochs", "3", "--steps-per-epoch", "100", "--delay", "0.1"),
    )  # fmt: skip
    assert started.code == 0, started.err
    run_id = started.out.strip()
    assert aws.cli("runs", "wait", run_id, "--timeout", "90s").code == 1
    run = aws.status(run_id)
    assert run["status"] == "stopped" and run["termination_status"] == "budget", run
    assert "at $%.4g/hr" % price in run["termination_message"], run["termination_message"]
    assert run["budget"]["hourly_price"] == price
    assert run["budget"]["spent"] <= max_cost + price / 3600.0  # within one poll interval's cost
    assert list((root / "checkpoints" / run_id).glob("checkpoint_epoch_*.json")), "the checkpoint came home"


def test_a_budget_smaller_than_one_poll_is_refused(cli, project: Path) -> None:
    result = cli("local", "train", "train_stub.py", "--hourly-price", PRICE, "--max-cost", "4", "--poll-interval", "5s")
    assert result.code == 2, result.err
    assert "--max-cost $4.00 is no more than one poll interval's cost ($5.00: 5s at $3600/hr)" in result.err
    assert "shorten --poll-interval" in result.err
    nothing_recorded(cli, project)


def test_a_budget_spent_during_setup_stops_before_the_script_starts(sshenv, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.integration.test_ssh import make_project

    project = make_project(tmp_path, "s-budget-setup")
    started = sshenv.cli(
        "ssh", "train", sshenv.dest(sshenv.hosts[1]), "train_stub.py", "--setup", "sleep 60",
        "--hourly-price", PRICE, "--max-cost", "3", "--poll-interval", "1s", cwd=project,
    )  # fmt: skip
    assert started.code == 0, started.err
    run_id = started.out.strip()
    assert sshenv.cli("runs", "wait", run_id, "--timeout", "40s", cwd=project).code == 1
    run = sshenv.status(run_id, project)
    assert run["status"] == "stopped" and run["termination_status"] == "budget", run
    assert "during setup; the script was not started" in run["termination_message"]
    assert FIGURES.search(run["termination_message"]), run["termination_message"]


# ---- on Lambda Labs: the price comes from the Cloud API ------------------------------------------


def test_a_budget_on_lambda_stops_the_run_and_terminates_the_instance(ec2_sshenv, lambda_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from tests.integration.test_lambda import EXAMPLE, SCRIPT, Lambda, pulled, run_id_of

    root = tmp_path / "lproj"
    (root / "training").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'lproj'\nversion = '0'\n")
    shutil.copy(EXAMPLE, root / SCRIPT)
    lam = Lambda(ec2_sshenv, lambda_world, root)
    price = 0.75  # the fake's gpu_1x_a10, in dollars an hour
    max_cost = price * 8 / 3600.0
    try:
        done = lam.train(
            "--wait", "--max-cost", "%.9f" % max_cost, "--poll-interval", "1s",
            script_args=("--epochs", "3", "--steps-per-epoch", "100", "--delay", "0.1"),
        )  # fmt: skip
        assert done.code == 1, done.err
        run_id = run_id_of(done)
        run = lam.status(run_id)
        assert run["status"] == "stopped" and run["termination_status"] == "budget", run
        assert "at $0.75/hr" in run["termination_message"], run["termination_message"]
        assert run["budget"]["spent"] <= max_cost + price / 3600.0
        assert pulled(root, run_id), "the checkpoint came home before the terminate"
        lam.all_terminated()
    finally:
        for instance in lambda_world.live():
            lambda_world.instances[instance.id].terminate_at = 0.0
