"""End reasons that are the truth: crash messages carry the exception, and a stop asked for at the
instant of a natural exit is recorded as what it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.runs import events, kill_leftover_runs, train_wait, write_script


@pytest.fixture(autouse=True)
def no_leftover_runs(project: Path) -> Iterator[None]:
    yield
    kill_leftover_runs(project)


CUDA_CRASH = r"""
    import sys

    sys.stderr.write("\r 40%|####      | 4/10 [00:01<00:01, loss=0.9]")
    sys.stderr.flush()

    def step():
        raise RuntimeError(
            "CUDA error: device-side assert triggered\n"
            "CUDA kernel errors might be asynchronously reported at some other API call.\n"
            "For debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
            "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions."
        )

    try:
        step()
    except RuntimeError as exc:
        raise SystemError("optimizer step failed") from exc
"""


def test_a_crash_is_described_by_its_exception_not_the_last_line(cli, project: Path) -> None:
    script = write_script(project, "crash.py", CUDA_CRASH)
    code, run = train_wait(cli, script)
    assert code == 1
    assert (run["status"], run["termination_status"]) == ("failed", "failed")
    message = run["termination_message"]
    assert message.startswith("exited with code 1: SystemError: optimizer step failed"), message
    assert "(CUDA error: device-side assert triggered)" in message
    assert "TORCH_USE_CUDA_DSA" not in message


STOP_AND_EXIT = """
    import json
    import os
    import sys
    import time

    print("step 10 loss=0.01", flush=True)
    time.sleep(0.5)
    if sys.argv[1] == "file":
        open(os.environ["RUNCTL_STOP_FILE"], "w").write("user\\n")  # the user's STOP_TRAINING, seen by the script
    else:
        path = os.path.join(os.environ["RUNCTL_RUN_DIR"], "stop_request.json")
        with open(path + ".tmp", "w") as handle:
            json.dump({"t": time.time(), "grace": None, "message": "stopped by the user"}, handle)
        os.replace(path + ".tmp", path)
    os._exit(0)
"""


def test_stop_at_the_instant_of_a_natural_exit(cli, project: Path) -> None:
    script = write_script(project, "stop_and_exit.py", STOP_AND_EXIT)
    # A request runctl had not passed on yet stopped nothing: the script ended on its own.
    _, run = train_wait(cli, script, args=("request",))
    assert (run["status"], run["termination_status"]) in (("completed", "auto_complete"), ("stopped", "user_stop"))
    if run["termination_status"] == "auto_complete":  # the usual case: the exit was seen first
        (late,) = [e for e in events(project, run["run_id"]) if e["event"] == "stop_at_exit"]
        assert late["counted"] is False
        assert late["requested_at"] <= late["exited_at"] + 0.5

    # A STOP_TRAINING file the script could see before exiting is a user stop.
    _, run = train_wait(cli, script, args=("file",))
    assert (run["status"], run["termination_status"]) == ("stopped", "user_stop"), run
