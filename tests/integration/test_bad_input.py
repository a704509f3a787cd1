"""Bad input to the CLI: exit 2, one or two lines naming the problem and the fix, no traceback, nothing left.

Every case runs the real `runctl` process and then checks that no run, run dir or project file was
created by the rejected command.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

SCRIPT_ERRORS = {
    # id: (arguments, words naming the problem, words naming the fix)
    "missing-script": (["local", "train", "nope.py"], "does not exist", "check the path"),
    "outside-project": (["local", "train", "{outside}"], "outside the project", "--project-dir"),
    "directory-as-script": (["local", "train", "subdir"], "not a file", "training script"),
    "not-executable": (["local", "train", "run.sh"], "not executable", "chmod +x"),
    "missing-project-dir": (
        ["local", "train", "train_stub.py", "--project-dir", "{tmp}/no-such-dir"],
        "does not exist",
        "existing directory",
    ),
    "project-dir-is-a-file": (
        ["local", "train", "train_stub.py", "--project-dir", "pyproject.toml"],
        "not a directory",
        "--project-dir",
    ),
    "bad-timeout": (["local", "train", "train_stub.py", "--wait", "--timeout", "5x"], "'5x'", "15m"),
    "bad-max-duration": (["local", "train", "train_stub.py", "--max-duration", "5x"], "'5x'", "15m"),
    "timeout-without-wait": (["local", "train", "train_stub.py", "--timeout", "5m"], "--wait", "--max-duration"),
    "env-without-equals": (["local", "train", "train_stub.py", "--env", "NOEQUALS"], "NOEQUALS", "KEY=VALUE"),
    "env-bad-name": (["local", "train", "train_stub.py", "--env", "1A=b"], "1A=b", "--env"),
    "missing-python": (
        ["local", "train", "train_stub.py", "--python", "/nonexistent/python3"],
        "/nonexistent/python3",
        "interpreter",
    ),
    "regex-syntax": (["local", "train", "train_stub.py", "--metrics-regex", "acc=(?P<acc>[0-9"], "regex", "syntax"),
    "regex-no-group": (["local", "train", "train_stub.py", "--metrics-regex", r"acc=([\d.]+)"], "named group", "?P<"),
    "unknown-run-status": (["runs", "status", "deadbeef"], "deadbeef", "runs list"),
    "unknown-run-wait": (["runs", "wait", "deadbeef"], "deadbeef", "runs list"),
    "unknown-run-stop": (["runs", "stop", "deadbeef"], "deadbeef", "runs list"),
    "unknown-run-logs": (["runs", "logs", "deadbeef"], "deadbeef", "runs list"),
    "wait-bad-timeout": (["runs", "wait", "deadbeef", "--timeout", "5x"], "'5x'", "15m"),
    "local-status-missing-dir": (["local", "status", "--project-dir", "{tmp}/no-such-dir"], "does not exist", "dir"),
}


def prepare(project: Path, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "outside.py").write_text("print('outside')\n")
    (project / "subdir").mkdir()
    (project / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (project / "run.sh").chmod(0o644)
    return {"outside": str(tmp_path / "outside.py"), "tmp": str(tmp_path)}


def snapshot(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def runs_in_store(home: Path) -> int:
    database = home / "runctl.db"
    if not database.exists():
        return 0
    with sqlite3.connect(str(database)) as db:
        try:
            return int(db.execute("SELECT count(*) FROM runs").fetchone()[0])
        except sqlite3.OperationalError:  # no schema yet
            return 0


def check_usage_error(result, problem: str, fix: str) -> None:  # type: ignore[no-untyped-def]
    assert result.code == 2, (result.code, result.out, result.err)
    assert "Traceback" not in result.err
    assert result.out == "", "errors belong on stderr"
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, result.err
    assert problem in result.err and fix in result.err, result.err


@pytest.mark.parametrize("case", sorted(SCRIPT_ERRORS))
def test_bad_input_is_a_clean_usage_error(cli, project: Path, runctl_home: Path, tmp_path: Path, case: str) -> None:
    values = prepare(project, tmp_path)
    args, problem, fix = SCRIPT_ERRORS[case]
    before = snapshot(project)
    result = cli(*(arg.format(**values) for arg in args))
    check_usage_error(result, problem, fix)
    assert snapshot(project) == before, "the rejected command changed the project dir"
    assert not (project / ".runctl").exists()
    assert runs_in_store(runctl_home) == 0


def test_rejected_commands_leave_no_run_behind(cli, project: Path, tmp_path: Path) -> None:
    values = prepare(project, tmp_path)
    for case in ("env-bad-name", "missing-python", "not-executable"):
        args, _, _ = SCRIPT_ERRORS[case]
        assert cli(*(arg.format(**values) for arg in args)).code == 2
    listed = cli("runs", "list", "--all", "-o", "json")
    assert listed.code == 0, listed.err
    assert listed.json == []
    assert not (project / ".runctl").exists()


def test_ambiguous_run_id_prefix(cli, project: Path, runctl_home: Path) -> None:
    from runctl.core.spec import RunSpec
    from runctl.store import Store

    store = Store()
    for run_id in ("ab12cd01", "ab12cd02"):
        spec = RunSpec(run_id=run_id, name="x", project_dir=str(project), command=["true"])
        store.add_run(spec.to_dict(), {"kind": "local"}, {"status": "pending", "seq": 0})
    store.close()
    for command in ("status", "wait", "stop"):
        result = cli("runs", command, "ab12")
        check_usage_error(result, "ambiguous", "more characters")
        assert "ab12cd01" in result.err and "ab12cd02" in result.err
    # A longer prefix that is unique resolves.
    assert cli("runs", "status", "ab12cd02", "-o", "json").json["run_id"] == "ab12cd02"


def test_stop_grace_must_not_be_negative(cli) -> None:
    check_usage_error(cli("runs", "stop", "deadbeef", "--grace", "-1"), "--grace", "0 or more")


def test_unknown_option_is_usage_error_without_traceback(cli, project: Path) -> None:
    result = cli("local", "train", "train_stub.py", "--no-such-flag")
    assert result.code == 2
    assert "Traceback" not in result.err
    assert "--no-such-flag" in result.err
    assert not (project / ".runctl").exists()


def test_runctl_debug_shows_the_traceback(cli, project: Path) -> None:
    result = cli("local", "train", "nope.py", env={"RUNCTL_DEBUG": "1"})
    assert result.code == 2
    assert "Traceback (most recent call last)" in result.err
    assert "does not exist" in result.err
    assert not (project / ".runctl").exists()
