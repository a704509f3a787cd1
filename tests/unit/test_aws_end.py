"""The pure decisions of an EC2 run's end: which release the proof allows, and what an instance's
state says of a run on it that stopped answering."""

from __future__ import annotations

import os
from pathlib import Path

from runctl.agent.ops import checkpoint_digests
from runctl.ending import agent_notice, choose_action, power_off_failed
from runctl.providers.aws import unreachable_verdict

HELD = {"checkpoints_verified": {"held": True, "files": [{"path": "a.pt"}], "problems": []}}
NOT_HELD = {"checkpoints_verified": {"held": False, "problems": ["a.pt differs from the host's copy (size or sha256)"]}}


def test_terminate_needs_every_checkpoint_verified() -> None:
    assert choose_action("terminate", HELD, True, True, None) == ("terminate", None)
    action, reason = choose_action("terminate", NOT_HELD, True, True, None)
    assert action == "stop" and reason is not None and "a.pt differs" in reason


def test_terminate_without_a_pull_or_a_readable_host_stops() -> None:
    action, reason = choose_action("terminate", {}, True, False, None)
    assert action == "stop" and reason is not None and "--no-download-checkpoints" in reason
    action, reason = choose_action("terminate", {}, True, True, "ssh: connection refused")
    assert action == "stop" and reason is not None and "connection refused" in reason


def test_a_power_off_that_took_the_host_down_is_not_taken_for_a_failure() -> None:
    """The controller releases through the API only after a power-off that really failed: one it
    takes for failed when the host went down would stop or terminate an instance started again."""
    under_way = {"started_at": 1.0, "ended_at": None, "action": "terminate", "becomes": "stop"}
    assert not power_off_failed(under_way)
    killed_going_down = {**under_way, "ended_at": 2.0, "exit_code": -9, "error": None}
    assert not power_off_failed(killed_going_down)
    assert "stopped, not terminated" in agent_notice(killed_going_down)
    refused = {
        **under_way,
        "ended_at": 2.0,
        "exit_code": 1,
        "error": None,
        "output_tail": "sudo: a password is required",
    }
    assert power_off_failed(refused) and "password is required" in agent_notice(refused)
    timed_out = {**under_way, "ended_at": 2.0, "exit_code": -9, "error": "timed out after 60s; killed"}
    assert power_off_failed(timed_out)


def test_stop_and_a_run_never_launched_go_as_asked() -> None:
    assert choose_action("stop", NOT_HELD, True, True, None) == ("stop", None)
    assert choose_action("terminate", {}, False, True, "never launched") == ("terminate", None)


def test_a_running_instance_says_nothing() -> None:
    assert unreachable_verdict("i-0123456789abcdef0", "running", None, "on-demand", True) is None
    assert unreachable_verdict("i-0123456789abcdef0", "pending", None, "on-demand", True) is None


def test_an_instance_that_powered_itself_off_only_gets_a_notice() -> None:
    reason = "Client.InstanceInitiatedShutdown: Instance initiated shutdown"
    verdict = unreachable_verdict("i-0123456789abcdef0", "stopped", reason, "on-demand", True)
    assert verdict is not None and "status" not in verdict
    assert verdict["message"] == (
        "the instance stopped itself after the run; start it to read how the run ended: "
        "runctl aws start i-0123456789abcdef0 --wait"
    )


def test_an_instance_stopped_or_terminated_from_outside_interrupts_the_run() -> None:
    reason = "Client.UserInitiatedShutdown: User initiated shutdown"
    verdict = unreachable_verdict("i-0123456789abcdef0", "stopped", reason, "on-demand", False)
    assert verdict is not None and verdict["status"] == "interrupted" and verdict["termination_status"] == "lost"
    assert verdict["message"] == "instance i-0123456789abcdef0 was stopped from outside (%s)" % reason
    verdict = unreachable_verdict("i-0123456789abcdef0", "terminated", reason, "on-demand", False)
    assert verdict is not None and "was terminated from outside" in verdict["message"]


def test_a_spot_reclaim_is_a_spot_interruption() -> None:
    reason = "Server.SpotInstanceTermination: Spot instance termination"
    verdict = unreachable_verdict("i-0123456789abcdef0", "terminated", reason, "spot", False)
    assert verdict is not None and verdict["termination_status"] == "spot_interruption"


def test_digests_prove_files_of_the_run_and_refuse_others(tmp_path: Path) -> None:
    import hashlib
    import json

    project = tmp_path / "proj"
    run_dir = project / ".runctl" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_text(json.dumps({"project_dir": str(project)}))
    (project / "checkpoints").mkdir()
    (project / "checkpoints" / "a.pt").write_bytes(b"weights")
    (tmp_path / "secret").write_text("no")
    found = checkpoint_digests(str(run_dir), "checkpoint_dir", ["a.pt", "../../secret", "missing.pt"])["files"]
    assert found["a.pt"] == {"size": 7, "sha256": hashlib.sha256(b"weights").hexdigest()}
    assert "outside" in found["../../secret"]["error"]
    assert "error" in found["missing.pt"]


def test_an_end_step_begun_by_a_controller_that_died_is_taken_up_again() -> None:
    from runctl.ending import GUARD, RESULT, abandoned

    dead = {"kind": GUARD, "by": "controller", "pid": 2**22 + 7, "start": None}
    alive = {"kind": GUARD, "by": "controller", "pid": os.getpid(), "start": None}
    assert abandoned([dead])
    assert not abandoned([alive]), "a controller still at it is left to finish"
    assert not abandoned([dead, {"kind": RESULT}]), "a recorded result is the end of it"
    assert not abandoned([{"kind": GUARD, "by": "controller"}]), "a guard from before pids were kept stays"
