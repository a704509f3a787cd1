"""The agent's stop sequence over a real run dir, with the clock passed in and no process touched."""

from __future__ import annotations

import json
from pathlib import Path

from runctl.agent.record import RunRecord
from runctl.agent.stopper import Stopper
from runctl.core import policies
from runctl.core import status as st


def make(tmp_path: Path, **cfg: float) -> tuple[Stopper, list[str], list[str]]:
    run = tmp_path / "run"
    run.mkdir()
    record = RunRecord(str(run), str(tmp_path), {"status": st.RUNNING, "seq": 3})
    notified: list[str] = []
    stopper = Stopper(record, str(tmp_path), notified.append)
    stopper.engine = policies.PolicyEngine({"stop_grace": 30, "term_grace": 10, **cfg}, 0.0)
    return stopper, [], notified


def events(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]


def test_a_policy_stop_writes_stop_training_then_sigterm_after_its_grace_then_sigkill(tmp_path: Path) -> None:
    stopper, sent, notified = make(tmp_path)
    send = lambda name: sent.append(name) or []  # noqa: E731
    stopper.apply(policies.Decision(st.T_STALL, "no progress"), 100.0)
    assert (tmp_path / "run" / "STOP_TRAINING").read_text() == "no progress\n"
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == st.STOPPING and status["termination_status"] == st.T_STALL
    assert status["seq"] == 4 and notified == ["policy"]
    assert stopper.advance(129.9, send, "group") is None
    assert stopper.advance(130.0, send, "group") == "SIGTERM" and stopper.term_sent
    assert stopper.advance(139.9, send, "group") is None
    assert stopper.advance(140.0, send, "group") == "SIGKILL"
    assert stopper.advance(1e9, send, "group") is None
    assert sent == ["SIGTERM", "SIGKILL"]
    assert [e["event"] for e in events(tmp_path)] == ["stop_initiated", "signal", "signal"]


def test_a_second_request_with_no_grace_hurries_the_sequence(tmp_path: Path) -> None:
    stopper, sent, _ = make(tmp_path)
    send = lambda name: sent.append(name) or []  # noqa: E731
    request = tmp_path / "run" / "stop_request.json"
    request.write_text(json.dumps({"t": 1.0, "grace": 600, "message": "stop it", "id": "a"}))
    stopper.check_controls(10.0)
    assert stopper.reason == policies.Decision(st.T_USER_STOP, "stop it")
    assert stopper.advance(11.0, send, "group") is None
    stopper.check_controls(11.0)  # the same request again changes nothing
    request.write_text(json.dumps({"t": 2.0, "grace": 0, "message": "now", "id": "b"}))
    stopper.check_controls(12.0)
    assert stopper.advance(12.0, send, "group") == "SIGTERM"
    hurried = [e for e in events(tmp_path) if e["event"] == "stop_requested_again"]
    assert hurried[0]["hurried"] is True and hurried[0]["grace"] == 0


def test_a_notice_is_recorded_without_stopping(tmp_path: Path) -> None:
    stopper, _, notified = make(tmp_path)
    stopper.apply(policies.Decision(st.T_HANG, "quiet for 1h", policies.NOTIFY), 5.0)
    assert stopper.reason is None and not (tmp_path / "run" / "STOP_TRAINING").exists()
    assert json.loads((tmp_path / "run" / "status.json").read_text())["notice"] == "quiet for 1h"
    assert notified == ["policy"]


def test_after_the_exit_a_policy_is_only_recorded_and_a_late_request_stopped_nothing(tmp_path: Path) -> None:
    stopper, _, _ = make(tmp_path)
    stopper.exited_at = 50.0
    stopper.apply(policies.Decision(st.T_AUTO_LOW_LOSS, "low loss"), 60.0)
    assert stopper.reason is None
    (tmp_path / "run" / "stop_request.json").write_text(json.dumps({"t": 55.0, "grace": 1, "message": "late"}))
    stopper.at_exit(50.0)
    assert stopper.reason is None
    late = next(e for e in events(tmp_path) if e["event"] == "stop_at_exit")
    assert late["counted"] is False and late["requested_at"] == 55.0
    assert next(e["event"] for e in events(tmp_path)) == "policy_after_exit"


def test_a_signal_to_the_agent_is_a_user_stop(tmp_path: Path) -> None:
    stopper, _, _ = make(tmp_path)
    stopper.on_signal("SIGTERM", 3.0)
    assert stopper.asked() == ("the agent received SIGTERM", None)
    assert stopper.requested_at() == 3.0
