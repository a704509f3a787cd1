"""Stop policies end to end: real agents supervising real training processes.

Each policy is shown firing (with the right status, reason and a graceful stop) and not firing
when it should not. Scripts are examples/train_stub.py or tiny scripts written into the project.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.runs import (
    events,
    kill_leftover_runs,
    poll,
    run_dir,
    start_run,
    status_file,
    train_wait,
    write_script,
)

STOP_BELOW_HALF = ("--auto-stop-loss", "0.5", "--stop-grace", "5")
LONG_STUB = ("--epochs", "1", "--steps-per-epoch", "2000", "--delay", "0.05", "--checkpoint-interval", "100")


def stub(epochs: int, steps: int, *extra: str, delay: str = "0.03") -> tuple[str, ...]:
    """Arguments of train_stub.py: EPOCHS epochs of STEPS steps, DELAY seconds each, then EXTRA."""
    return ("--epochs", str(epochs), "--steps-per-epoch", str(steps), "--delay", delay, *extra)


def event_names(project: Path, run_id: str) -> list[str]:
    return [e["event"] for e in events(project, run_id)]


def signals_sent(project: Path, run_id: str) -> list[str]:
    return [e["signal"] for e in events(project, run_id) if e["event"] == "signal"]


def wait_run(cli, run_id: str, timeout: str = "30s"):  # type: ignore[no-untyped-def]
    result = cli("runs", "wait", run_id, "--timeout", timeout, "-o", "json")
    assert result.code != 3, "run %s did not end in %s" % (run_id, timeout)
    return result.code, result.json


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(autouse=True)
def no_leftover_runs(project: Path) -> Iterator[None]:
    """A failing test must not leave a hung training process behind."""
    yield
    kill_leftover_runs(project)


def stop_checkpoint(project: Path) -> dict[str, Any]:
    """The checkpoint the stub saves when it honours a stop request (epoch not complete)."""
    saved = [json.loads(p.read_text()) for p in sorted((project / "checkpoints").glob("checkpoint_epoch_*.json"))]
    partial = [c for c in saved if c["epoch_complete"] is False]
    assert partial, "no checkpoint saved on the stop request: %s" % saved
    return partial[-1]


LOSS_SEQUENCE = """
    import sys
    import time

    import runctl.training as rt

    losses = [float(x) for x in sys.argv[1].split(",")]
    linger = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    for step, loss in enumerate(losses, 1):
        if rt.should_stop():
            print("stop requested before step", step, flush=True)
            sys.exit(0)
        rt.report(step=step, epoch=1, total_epochs=1, loss=loss)
        print("step", step, "loss=%s" % loss, flush=True)
        time.sleep(0.1)
    deadline = time.time() + linger
    while time.time() < deadline:
        if rt.should_stop():
            print("stop requested after the last report", flush=True)
            sys.exit(0)
        time.sleep(0.05)
    print("all reports sent", flush=True)
"""


def report_losses(cli, project: Path, *args: str, patience: int, grace: int):  # type: ignore[no-untyped-def]
    """LOSS_SEQUENCE with ARGS (the losses, then seconds to linger) under --auto-stop-loss 0.5: train_wait's result."""
    script = write_script(project, "losses.py", LOSS_SEQUENCE)
    flags = ("--auto-stop-loss", "0.5", "--auto-stop-patience", str(patience), "--stop-grace", str(grace))
    return train_wait(cli, script, *flags, args=args)


# ---- --auto-stop-loss --------------------------------------------------------------------------


def test_auto_stop_loss_fires_with_helper_reports(cli, project: Path) -> None:
    code, run = train_wait(cli, "train_stub.py", *STOP_BELOW_HALF, args=stub(3, 20, "--checkpoint-interval", "100"))
    assert code == 0
    assert run["status"] == "completed"
    assert run["termination_status"] == "auto_low_loss"
    message = run["termination_message"]
    match = re.search(r"loss ([\d.eE+-]+) below threshold 0\.5\b", message)
    assert match, message
    assert float(match.group(1)) < 0.5
    # Graceful: the script saw STOP_TRAINING, saved a checkpoint and exited 0 before any signal.
    run_id = run["run_id"]
    assert run["exit_code"] == 0
    assert signals_sent(project, run_id) == []
    checkpoint = stop_checkpoint(project)
    assert checkpoint["step"] < 60
    assert checkpoint["loss"] < 0.5
    assert not (project / "training_complete.txt").exists()
    assert "Stop requested: saved checkpoint" in (run_dir(project, run_id) / "training.log").read_text()

    # The reason is recorded in status.json, in the store (runs status) and in the summary.
    on_disk = status_file(project, run_id)
    shown = cli("runs", "status", run_id, "-o", "json")
    assert shown.code == 0, shown.err
    summary = json.loads((run_dir(project, run_id) / "training_log.json").read_text())
    for source in (on_disk, shown.json, summary):
        assert source["termination_status"] == "auto_low_loss"
        assert source["termination_message"] == message
    # The original dashboards' keys.
    for key in ("termination_status", "termination_message", "epoch", "step", "loss", "losses"):
        assert key in summary, key
    assert summary["step"] == on_disk["step"] == shown.json["step"] == checkpoint["step"]
    assert summary["epoch"] == checkpoint["epoch"]
    assert summary["loss"] == pytest.approx(checkpoint["loss"])
    assert isinstance(summary["losses"], list) and summary["losses"]
    assert all({"step", "loss"} <= set(entry) for entry in summary["losses"])
    assert summary["losses"][-1]["step"] == summary["step"]
    text = cli("runs", "status", run_id)
    assert "auto_low_loss" in text.out + text.err


def test_auto_stop_loss_fires_from_log_lines_without_helper(cli, project: Path) -> None:
    args = stub(3, 20, "--no-report", "--checkpoint-interval", "100")
    code, run = train_wait(cli, "train_stub.py", *STOP_BELOW_HALF, args=args)
    assert code == 0
    assert (run["status"], run["termination_status"]) == ("completed", "auto_low_loss")
    assert "threshold 0.5" in run["termination_message"]
    metrics = cli("runs", "metrics", run["run_id"], "-o", "json").json
    assert metrics and {m["source"] for m in metrics} == {"log"}
    assert stop_checkpoint(project)["step"] < 60
    assert signals_sent(project, run["run_id"]) == []


def test_loss_dipping_below_threshold_briefly_does_not_fire_with_patience(cli, project: Path) -> None:
    # Below 0.5 once, then twice in a row: never three consecutive reports.
    sequence = "1.0,0.9,0.8,0.4,0.7,0.45,0.42,0.6,0.55,0.52"
    code, run = report_losses(cli, project, sequence, patience=3, grace=2)
    assert code == 0
    assert run["status"] == "completed"
    assert run["termination_status"] == "auto_complete"
    assert "stop_initiated" not in event_names(project, run["run_id"])
    assert "all reports sent" in (run_dir(project, run["run_id"]) / "training.log").read_text()
    assert run["min_loss"] == pytest.approx(0.4)


def test_a_low_report_that_is_also_printed_counts_once(cli, project: Path) -> None:
    # The script reports each loss and prints it too: one report below the threshold is one, not two.
    code, run = report_losses(cli, project, "0.4,0.9,0.8,0.7", patience=2, grace=2)
    assert code == 0
    assert (run["status"], run["termination_status"]) == ("completed", "auto_complete"), run["termination_message"]


def test_patience_fires_after_enough_consecutive_low_reports(cli, project: Path) -> None:
    sequence = "1.0,0.9,0.4,0.7,0.45,0.42,0.41,0.6"
    code, run = report_losses(cli, project, sequence, "10", patience=3, grace=5)
    assert code == 0
    assert (run["status"], run["termination_status"]) == ("completed", "auto_low_loss")
    assert re.search(r"loss 0\.41 below threshold 0\.5 for 3 consecutive reports", run["termination_message"]), run[
        "termination_message"
    ]
    assert "stop requested" in (run_dir(project, run["run_id"]) / "training.log").read_text()


def test_negative_auto_stop_loss_disables_it(cli, project: Path) -> None:
    code, run = train_wait(cli, "train_stub.py", "--auto-stop-loss", "-1", args=stub(1, 10, delay="0"))
    assert code == 0, run
    assert (run["status"], run["termination_status"]) == ("completed", "auto_complete")
    assert run["step"] == 10
    assert (project / "training_complete.txt").exists()


# ---- completion marker ---------------------------------------------------------------------------


def test_stable_marker_completes_a_lingering_process_which_is_then_stopped(cli, project: Path) -> None:
    script = write_script(
        project,
        "linger.py",
        """
        import time

        import runctl.training as rt

        print("training done, writing the marker", flush=True)
        rt.mark_complete("all epochs done")
        time.sleep(1000)
        """,
    )
    run_id = start_run(cli, script, "--exit-grace", "2")
    marker = project / "training_complete.txt"
    poll(marker.exists, 10, "the marker")
    written = marker.stat().st_mtime
    poll(lambda: status_file(project, run_id).get("status") == "completed", 8, "completed by the marker")
    completed_after = time.time() - written
    assert completed_after <= 4.0, "completed %.1fs after the marker" % completed_after
    state = status_file(project, run_id)
    assert state["termination_status"] == "auto_complete"
    assert pid_alive(state["pid"]), "the process must get its exit grace"
    # After the exit grace the lingering process is stopped; the run stays completed.
    final = poll(lambda: (s := status_file(project, run_id)).get("exited_at") and s, 10, "the process to be stopped")
    assert 1.5 <= final["exited_at"] - final["ended_at"] <= 5.0
    assert final["status"] == "completed"
    assert final["termination_status"] == "auto_complete"
    assert final["exit_code"] != 0
    assert not pid_alive(final["pid"])
    assert "SIGTERM" in signals_sent(project, run_id)
    code, run = wait_run(cli, run_id)
    assert code == 0
    assert (run["status"], run["termination_status"]) == ("completed", "auto_complete")


def test_marker_still_being_written_does_not_complete_the_run(cli, project: Path) -> None:
    script = write_script(
        project,
        "slow_marker.py",
        """
        import sys
        import time

        for i in range(8):
            with open("training_complete.txt", "a") as handle:
                handle.write("part %d\\n" % i)
            time.sleep(0.5)
        print("crashed after writing part of the marker", flush=True)
        sys.exit(1)
        """,
    )
    run_id = start_run(cli, script)
    seen = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = status_file(project, run_id)
        seen.add(state.get("status"))
        if state.get("status") in ("completed", "failed", "stopped", "lost"):
            break
        time.sleep(0.1)
    assert "completed" not in seen
    code, run = wait_run(cli, run_id)
    assert code == 1
    assert (run["status"], run["termination_status"]) == ("failed", "failed")
    assert run["exit_code"] == 1
    assert "exited with code 1" in run["termination_message"]


# ---- final-epoch stall ---------------------------------------------------------------------------

STALL = """
    import sys
    import time

    import runctl.training as rt

    epoch, total = int(sys.argv[1]), int(sys.argv[2])
    for step in range(1, 6):
        rt.report(step=step, epoch=epoch, total_epochs=total, loss=1.0 / step)
        time.sleep(0.05)
    print("step frozen at 5", flush=True)
    time.sleep(1000)
"""
STALL_POLLS = ("--poll-interval", "0.3", "--stall-polls", "3")


def test_final_epoch_step_stall_completes_the_run(cli, project: Path) -> None:
    script = write_script(project, "stall.py", STALL)
    started = time.monotonic()
    # The stall stop is graceful: STOP_TRAINING, then SIGTERM after --stop-grace (this script ignores the file).
    code, run = train_wait(cli, script, *STALL_POLLS, "--stop-grace", "1", args=("3", "3"))
    took = time.monotonic() - started
    assert code == 0
    assert (run["status"], run["termination_status"]) == ("completed", "auto_complete")
    assert "final epoch 3/3" in run["termination_message"]
    assert "step 5" in run["termination_message"]
    assert run["step"] == 5
    assert took < 10
    assert not pid_alive(run["pid"])


def test_stall_on_a_non_final_epoch_is_not_completion(cli, project: Path) -> None:
    script = write_script(project, "stall.py", STALL)
    code, run = train_wait(cli, script, *STALL_POLLS, "--max-duration", "2.5s", "--stop-grace", "0.5", args=("2", "3"))
    assert code == 1
    assert (run["status"], run["termination_status"]) == ("stopped", "max_duration")
    assert run["epoch"] == 2
    assert not pid_alive(run["pid"])


# ---- hang ----------------------------------------------------------------------------------------


def test_hang_timeout_stops_a_silent_process(cli, project: Path) -> None:
    started = time.monotonic()
    code, run = train_wait(
        cli, "train_stub.py", "--hang-timeout", "1.5", "--stop-grace", "0.5", args=stub(1, 100, "--hang-at-step", "5")
    )
    took = time.monotonic() - started
    assert code == 1
    assert (run["status"], run["termination_status"]) == ("stopped", "hang")
    assert "1.5s" in run["termination_message"]
    assert run["step"] == 4
    # The hung script ignores STOP_TRAINING: the agent escalates to SIGTERM.
    assert signals_sent(project, run["run_id"])[:1] == ["SIGTERM"]
    assert not pid_alive(run["pid"])
    assert took < 10


def test_slow_but_progressing_run_is_not_a_hang(cli, project: Path) -> None:
    code, run = train_wait(cli, "train_stub.py", "--hang-timeout", "1.5", args=stub(1, 4, delay="0.5"))
    assert code == 0
    assert (run["status"], run["termination_status"]) == ("completed", "auto_complete")
    assert run["step"] == 4
    assert "stop_initiated" not in event_names(project, run["run_id"])


def test_on_hang_notify_records_a_notice_and_keeps_running(cli, project: Path) -> None:
    run_id = start_run(
        cli, "train_stub.py", "--hang-timeout", "1", "--on-hang", "notify", args=stub(1, 100, "--hang-at-step", "3")
    )
    notices = poll(lambda: [e for e in events(project, run_id) if e["event"] == "policy_notice"], 10, "a notice")
    notice = notices[0]
    assert notice["termination_status"] == "hang"
    time.sleep(0.6)
    state = status_file(project, run_id)
    assert state["status"] == "running"
    assert "stop_initiated" not in event_names(project, run_id)
    shown = cli("runs", "status", run_id, "-o", "json").json
    assert shown["status"] == "running"
    assert "no output" in shown.get("notice", "")
    stopped = cli("runs", "stop", run_id, "--grace", "0.5")
    assert stopped.code == 0, stopped.err
    code, run = wait_run(cli, run_id)
    assert code == 1
    assert (run["status"], run["termination_status"]) == ("stopped", "user_stop")


# ---- max duration, NaN ---------------------------------------------------------------------------


def test_max_duration_stops_gracefully(cli, project: Path) -> None:
    started = time.monotonic()
    code, run = train_wait(cli, "train_stub.py", "--max-duration", "1s", "--stop-grace", "5", args=LONG_STUB)
    took = time.monotonic() - started
    assert code == 1
    assert (run["status"], run["termination_status"]) == ("stopped", "max_duration")
    assert "1s" in run["termination_message"]
    assert run["exit_code"] == 0
    assert signals_sent(project, run["run_id"]) == []
    assert stop_checkpoint(project)["step"] >= 1
    assert took < 8


def test_nan_loss_is_divergence(cli, project: Path) -> None:
    code, run = train_wait(cli, "train_stub.py", "--stop-grace", "5", args=stub(1, 200, "--curve", "nan-at:5"))
    assert code == 1
    assert (run["status"], run["termination_status"]) == ("failed", "diverged")
    assert "nan" in run["termination_message"].lower()
    assert run["min_loss"] is not None and run["min_loss"] > 0
    assert not (project / "training_complete.txt").exists()
    assert stop_checkpoint(project)["step"] < 200


def test_nan_loss_ignored_on_request(cli, project: Path) -> None:
    code, run = train_wait(
        cli, "train_stub.py", "--on-nan", "ignore", args=stub(1, 10, "--curve", "nan-at:5", delay="0.01")
    )
    assert code == 0
    assert (run["status"], run["termination_status"]) == ("completed", "auto_complete")
    assert run["step"] == 10


# ---- user stop -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["runs_stop", "run_stop_file", "project_stop_file"])
def test_user_stop_is_graceful(cli, project: Path, how: str) -> None:
    run_id = start_run(cli, "train_stub.py", "--stop-grace", "5", args=LONG_STUB)
    poll(lambda: (status_file(project, run_id).get("step") or 0) >= 3, 10, "the first steps")
    if how == "runs_stop":
        result = cli("runs", "stop", run_id)
        assert result.code == 0, result.err
    elif how == "run_stop_file":
        (run_dir(project, run_id) / "STOP_TRAINING").touch()
    else:
        (project / "training_output").mkdir()
        (project / "training_output" / "STOP_TRAINING").touch()
    code, run = wait_run(cli, run_id)
    assert code == 1
    assert (run["status"], run["termination_status"]) == ("stopped", "user_stop"), run["termination_message"]
    assert run["exit_code"] == 0
    assert signals_sent(project, run_id) == []
    checkpoint = stop_checkpoint(project)
    assert 3 <= checkpoint["step"] < 2000
    assert "Stop requested: saved checkpoint" in (run_dir(project, run_id) / "training.log").read_text()


# ---- [policies] in runctl.toml -------------------------------------------------------------------


def test_policies_from_project_config(cli, project: Path) -> None:
    (project / "runctl.toml").write_text('[policies]\nauto_stop_loss = 0.5\nhang_timeout = "5m"\nstop_grace = "5s"\n')
    code, run = train_wait(cli, "train_stub.py", args=stub(3, 20))
    assert code == 0
    assert run["termination_status"] == "auto_low_loss"
    assert "threshold 0.5" in run["termination_message"]
    spec = json.loads((run_dir(project, run["run_id"]) / "spec.json").read_text())
    assert spec["policies"]["hang_timeout"] == 300
    assert spec["policies"]["auto_stop_loss"] == 0.5


def test_cli_flags_override_project_config(cli, project: Path) -> None:
    (project / "runctl.toml").write_text('[policies]\nauto_stop_loss = 0.5\nhang_timeout = "5m"\n')
    code, run = train_wait(
        cli, "train_stub.py", "--auto-stop-loss", "0.3", "--hang-timeout", "1m", "--stop-grace", "5", args=stub(3, 20)
    )
    assert code == 0
    assert run["termination_status"] == "auto_low_loss"
    match = re.search(r"loss ([\d.]+) below threshold 0\.3\b", run["termination_message"])
    assert match and float(match.group(1)) < 0.3, run["termination_message"]
    spec = json.loads((run_dir(project, run["run_id"]) / "spec.json").read_text())
    assert spec["policies"]["hang_timeout"] == 60


def test_cli_zero_disables_a_config_threshold(cli, project: Path) -> None:
    (project / "runctl.toml").write_text("[policies]\nauto_stop_loss = 0.5\n")
    code, run = train_wait(cli, "train_stub.py", "--auto-stop-loss", "0", args=stub(1, 10, delay="0"))
    assert code == 0
    assert (run["status"], run["termination_status"]) == ("completed", "auto_complete")
    assert run["step"] == 10


@pytest.mark.parametrize(
    ("line", "key"),
    [('on_nan = "maybe"', "on_nan"), ("colour = 1", "colour"), ('hang_timeout = "soon"', "hang_timeout")],
)
def test_invalid_project_config_is_bad_input(cli, project: Path, line: str, key: str) -> None:
    config = project / "runctl.toml"
    config.write_text("[policies]\n%s\n" % line)
    result = cli("local", "train", "train_stub.py", "--", "--epochs", "1")
    assert result.code == 2, (result.out, result.err)
    assert str(config) in result.err
    assert key in result.err
    assert "Traceback" not in result.err
    assert result.out == ""
    assert not (project / ".runctl").exists()
    listed = cli("runs", "list", "--all", "-o", "json")
    assert listed.code == 0 and listed.json == []
