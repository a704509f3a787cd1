"""Bad input to the CLI: its exit code, one or two lines naming the problem and the fix, no traceback,
nothing left.

One table of bad inputs across every command group (flags, durations, numbers, `--env` values,
regexes, paths, run ids, runctl.toml contents). Every row runs the real `runctl` process, fails
before anything starts, and then the test checks that no run, run dir or project file was created.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

DIGITS_400 = "1" * 400
LOCAL = ("local", "train", "train_stub.py")
SSH = ("ssh", "train", "nohost.invalid", "train_stub.py")
AWS = ("aws", "train", "i-0123456789abcdef0", "train_stub.py")
RESUMING = (*AWS, "--wait", "--checkpoint-s3", "s3://bucket/ck")
UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: refused at once, no timeout to wait for


@dataclass(frozen=True)
class Case:
    """One bad input: the command, the exit code, words stderr must hold, and files written first."""

    args: tuple[str, ...]
    words: tuple[str, ...] = ()
    code: int = 2
    files: dict[str, str | bytes] = field(default_factory=dict)  # relative to the project
    home_files: dict[str, str] = field(default_factory=dict)  # relative to RUNCTL_HOME
    stdout: str = ""  # errors go to stderr; only a status verdict is data


def policies(body: str | bytes) -> dict[str, str | bytes]:
    return {"runctl.toml": body if isinstance(body, bytes) else "[policies]\n%s\n" % body}


CASES: dict[str, Case] = {
    # ---- local train: the script, the project and the interpreter
    "missing-script": Case(("local", "train", "nope.py"), ("does not exist", "check the path")),
    "outside-project": Case(("local", "train", "{outside}"), ("outside the project", "--project-dir")),
    "directory-as-script": Case(("local", "train", "subdir"), ("not a file", "training script")),
    "empty-script-name": Case(("local", "train", ""), ("not a file",)),
    "not-executable": Case(("local", "train", "run.sh"), ("not executable", "chmod +x")),
    "missing-project-dir": Case(
        (*LOCAL, "--project-dir", "{tmp}/no-such-dir"), ("does not exist", "existing directory")
    ),
    "project-dir-is-a-file": Case((*LOCAL, "--project-dir", "pyproject.toml"), ("not a directory", "--project-dir")),
    "missing-python": Case((*LOCAL, "--python", "/nonexistent/python3"), ("/nonexistent/python3", "interpreter")),
    "python-is-a-directory": Case((*LOCAL, "--python", "{tmp}"), ("not an executable", "interpreter")),
    # ---- Typer/Click usage errors: two lines, the second pointing at the command's help
    "missing-script-argument": Case(("local", "train"), ("missing argument", "see: runctl local train --help")),
    "unknown-option": Case((*LOCAL, "--no-such-flag"), ("--no-such-flag", "see: runctl local train --help")),
    "output-yaml": Case((*LOCAL, "--output", "yaml"), ("'yaml'", "see: runctl local train --help")),
    "patience-not-an-integer": Case((*LOCAL, "--auto-stop-patience", "1.5"), ("--auto-stop-patience", "--help")),
    "loss-not-a-number": Case((*LOCAL, "--auto-stop-loss", "low"), ("--auto-stop-loss", "--help")),
    "unknown-command": Case(("nosuch",), ("no such command", "see: runctl --help")),
    # ---- durations
    "bad-timeout": Case((*LOCAL, "--wait", "--timeout", "5x"), ("'5x'", "15m")),
    "bad-max-duration": Case((*LOCAL, "--max-duration", "5x"), ("'5x'", "15m")),
    "timeout-without-wait": Case((*LOCAL, "--timeout", "5m"), ("--wait", "--max-duration")),
    "open-without-dashboard": Case((*LOCAL, "--open"), ("--open only applies with --dashboard", "add --dashboard")),
    "dashboard-port-too-big": Case(("dashboard", "--port", "70000"), ("--port must be from 0 to 65535", "--port 8765")),
    "dashboard-port-not-a-number": Case(
        ("dashboard", "--port", "web"), ("'--port'", "valid integer", "see: runctl dashboard --help")
    ),
    "dashboard-host-unknown": Case(("dashboard", "--host", "no-such-host.invalid"), ("--host", "127.0.0.1")),
    "max-duration-400-digits": Case((*LOCAL, "--max-duration", DIGITS_400), ("--max-duration", "at most 30d")),
    "max-duration-over-30-days": Case((*LOCAL, "--max-duration", "31d"), ("--max-duration", "at most 30d")),
    "max-duration-zero": Case((*LOCAL, "--max-duration", "0"), ("--max-duration", "more than 0")),
    "max-duration-nan": Case((*LOCAL, "--max-duration", "nan"), ("--max-duration", "'nan'")),
    "max-duration-inf": Case((*LOCAL, "--max-duration", "inf"), ("--max-duration", "'inf'")),
    "max-duration-exponent": Case((*LOCAL, "--max-duration", "1e400"), ("--max-duration", "'1e400'")),
    "max-duration-trailing-number": Case((*LOCAL, "--max-duration", "1h2"), ("--max-duration", "'1h2'")),
    "hang-timeout-negative": Case((*LOCAL, "--hang-timeout", "-5"), ("--hang-timeout", "more than 0")),
    "hang-timeout-blank": Case((*LOCAL, "--hang-timeout", " "), ("--hang-timeout", "duration")),
    "poll-interval-zero": Case((*LOCAL, "--poll-interval", "0s"), ("--poll-interval", "more than 0")),
    "exit-grace-negative": Case((*LOCAL, "--exit-grace", "-1s"), ("--exit-grace", "0 or more")),
    "stop-grace-huge": Case((*LOCAL, "--stop-grace", "99999d"), ("--stop-grace", "at most 30d")),
    "wait-timeout-400-digits": Case((*LOCAL, "--wait", "--timeout", DIGITS_400), ("--timeout", "maximum of 30d")),
    "wait-timeout-negative": Case((*LOCAL, "--wait", "--timeout", "-1"), ("--timeout", "'-1'")),
    # ---- numbers and choices
    "auto-stop-loss-nan": Case((*LOCAL, "--auto-stop-loss", "nan"), ("--auto-stop-loss", "finite")),
    "auto-stop-loss-inf": Case((*LOCAL, "--auto-stop-loss", "inf"), ("--auto-stop-loss", "finite")),
    "auto-stop-loss-minus-inf": Case((*LOCAL, "--auto-stop-loss", "-inf"), ("--auto-stop-loss", "finite")),
    "patience-zero": Case((*LOCAL, "--auto-stop-patience", "0"), ("--auto-stop-patience", "between 1 and")),
    "patience-negative": Case((*LOCAL, "--auto-stop-patience", "-3"), ("--auto-stop-patience", "between 1 and")),
    "stall-polls-zero": Case((*LOCAL, "--stall-polls", "0"), ("--stall-polls", "between 1 and")),
    "stall-polls-huge": Case((*LOCAL, "--stall-polls", "10000001"), ("--stall-polls", "between 1 and")),
    "on-hang-invalid": Case((*LOCAL, "--on-hang", "maybe"), ("--on-hang", "stop or notify")),
    "on-nan-empty": Case((*LOCAL, "--on-nan", ""), ("--on-nan", "stop or ignore")),
    "notify-ftp": Case((*LOCAL, "--notify", "ftp://example.com/x"), ("--notify", "https://")),
    "notify-not-a-url": Case((*LOCAL, "--notify", "hooks"), ("--notify", "https://")),
    # ---- --env values
    "env-without-equals": Case((*LOCAL, "--env", "NOEQUALS"), ("NOEQUALS", "KEY=VALUE")),
    "env-bad-name": Case((*LOCAL, "--env", "1A=b"), ("1A=b", "--env")),
    "env-empty-name": Case((*LOCAL, "--env", "=x"), ("'=x'", "--env")),
    "env-dash-in-name": Case((*LOCAL, "--env", "A-B=1"), ("A-B=1", "--env")),
    "env-space-in-name": Case((*LOCAL, "--env", "A B=1"), ("A B=1", "--env")),
    "env-empty": Case((*LOCAL, "--env", ""), ("''", "--env")),
    # ---- --metrics-regex
    "regex-syntax": Case((*LOCAL, "--metrics-regex", "acc=(?P<acc>[0-9"), ("regex", "syntax")),
    "regex-no-group": Case((*LOCAL, "--metrics-regex", r"acc=([\d.]+)"), ("named group", "?P<")),
    "regex-empty-group-name": Case((*LOCAL, "--metrics-regex", "(?P<>x)"), ("--metrics-regex", "syntax")),
    "regex-bad-group-name": Case((*LOCAL, "--metrics-regex", "(?P<1a>x)"), ("--metrics-regex", "syntax")),
    "regex-unbalanced": Case((*LOCAL, "--metrics-regex", ")("), ("--metrics-regex", "syntax")),
    # ---- runctl.toml and the user config: the same refusals as the flags, naming the file and key
    "toml-policies-not-a-table": Case(LOCAL, ("runctl.toml", "must be a table"), files=policies(b"policies = 5\n")),
    "toml-policies-a-list": Case(LOCAL, ("runctl.toml", "must be a table"), files=policies(b"policies = [1]\n")),
    "toml-hang-timeout-negative": Case(
        LOCAL, ("runctl.toml", "hang_timeout", "more than 0"), files=policies("hang_timeout = -5")
    ),
    "toml-patience-zero": Case(
        LOCAL, ("runctl.toml", "auto_stop_patience", "between 1 and"), files=policies("auto_stop_patience = 0")
    ),
    "toml-patience-fraction": Case(
        LOCAL, ("runctl.toml", "auto_stop_patience", "whole number"), files=policies("auto_stop_patience = 2.5")
    ),
    "toml-loss-nan": Case(LOCAL, ("runctl.toml", "auto_stop_loss", "finite"), files=policies("auto_stop_loss = nan")),
    "toml-loss-string": Case(
        LOCAL, ("runctl.toml", "auto_stop_loss", "a number"), files=policies('auto_stop_loss = "0.05"')
    ),
    "toml-max-duration-inf": Case(
        LOCAL, ("runctl.toml", "max_duration", "at most 30d"), files=policies("max_duration = inf")
    ),
    "toml-max-duration-400-digits": Case(
        LOCAL, ("runctl.toml", "max_duration", "at most 30d"), files=policies('max_duration = "%s"' % DIGITS_400)
    ),
    "toml-max-duration-huge-number": Case(
        LOCAL, ("runctl.toml", "max_duration", "at most 30d"), files=policies("max_duration = 1e300")
    ),
    "toml-poll-interval-zero": Case(
        LOCAL, ("runctl.toml", "poll_interval", "more than 0"), files=policies("poll_interval = 0")
    ),
    "toml-stop-grace-bool": Case(LOCAL, ("runctl.toml", "stop_grace", "duration"), files=policies("stop_grace = true")),
    "toml-hang-timeout-text": Case(
        LOCAL, ("runctl.toml", "hang_timeout", "'soon'"), files=policies('hang_timeout = "soon"')
    ),
    "toml-on-nan-invalid": Case(LOCAL, ("runctl.toml", "on_nan", "stop or ignore"), files=policies('on_nan = "maybe"')),
    "toml-unknown-key": Case(LOCAL, ("runctl.toml", "colour", "not a known policy"), files=policies("colour = 1")),
    "toml-notify-string": Case(
        LOCAL, ("runctl.toml", "notify", "list of URLs"), files=policies('notify = "https://example.com"')
    ),
    "toml-notify-bad-url": Case(LOCAL, ("runctl.toml", "notify", "https://"), files=policies('notify = ["ftp://x"]')),
    "toml-syntax-error": Case(LOCAL, ("invalid TOML", "runctl.toml"), files=policies(b"[policies\n")),
    "toml-not-utf8": Case(LOCAL, ("runctl.toml", "UTF-8"), files=policies(b"[policies]\n# caf\xe9\n")),
    "user-config-bad-choice": Case(
        LOCAL,
        ("config.toml", "on_hang", "stop or notify"),
        home_files={"config.toml": '[policies]\non_hang = "later"\n'},
    ),
    # ---- ssh train: refused before any connection (the host does not exist)
    "ssh-missing-script-argument": Case(("ssh", "train", "h"), ("missing argument", "see: runctl ssh train --help")),
    "ssh-dest-starting-with-dash": Case(
        ("ssh", "train", "--", "-oProxyCommand=touch /tmp/x", "train_stub.py"), ("invalid host", "[user@]host")
    ),
    "ssh-dest-bad-port": Case(("ssh", "train", "h:99999", "train_stub.py"), ("invalid port", "1-65535")),
    "ssh-missing-script": Case(("ssh", "train", "h", "nope.py"), ("does not exist",)),
    "ssh-auto-stop-loss-nan": Case((*SSH, "--auto-stop-loss", "nan"), ("--auto-stop-loss", "finite")),
    "ssh-max-duration-400-digits": Case((*SSH, "--max-duration", DIGITS_400), ("--max-duration", "at most 30d")),
    "ssh-output-yaml": Case((*SSH, "-o", "yaml"), ("'yaml'", "see: runctl ssh train --help")),
    "ssh-missing-identity": Case((*SSH, "-i", "{tmp}/no-key"), ("identity file", "-i")),
    "ssh-missing-data": Case((*SSH, "--data", "{tmp}/no-data"), ("--data", "does not exist")),
    "ssh-project-name-with-slash": Case((*SSH, "--project-name", "a/b"), ("--project-name", "letters")),
    "ssh-timeout-without-wait": Case((*SSH, "--timeout", "5m"), ("--wait",)),
    "ssh-env-bad-name": Case((*SSH, "--env", "1A=b"), ("1A=b", "--env")),
    "ssh-toml-hang-timeout-negative": Case(
        SSH, ("runctl.toml", "hang_timeout", "more than 0"), files=policies("hang_timeout = -5")
    ),
    # ---- S3 flags: refused before anything starts, and before S3 is asked (see test_s3_catalog and
    # test_s3_data for the refusals that need a bucket: missing bucket, empty prefix, unknown name)
    "checkpoint-s3-not-a-uri": Case((*LOCAL, "--checkpoint-s3", "/tmp/ckpts"), ("--checkpoint-s3", "s3://")),
    "checkpoint-s3-bad-bucket": Case(
        (*SSH, "--checkpoint-s3", "s3://My_Bucket/x"), ("--checkpoint-s3", "not a valid bucket name", "s3://my-bucket")
    ),
    "checkpoint-s3-dotdot": Case((*LOCAL, "--checkpoint-s3", "s3://bucket/a/../b"), ("--checkpoint-s3", "'..' part")),
    "data-s3-not-a-uri": Case(
        (*LOCAL, "--data-s3", "https://bucket.s3.amazonaws.com/x/"), ("--data-s3", "not an s3:// URI")
    ),
    "data-s3-bad-bucket": Case((*SSH, "--data-s3", "s3://x/data/"), ("--data-s3", "not a valid bucket name")),
    "data-s3-empty-part": Case((*LOCAL, "--data-s3", "s3://bucket/a//b/"), ("--data-s3", "empty")),
    "data-s3-blank": Case((*LOCAL, "--data-s3", ""), ("--data-s3", "not an s3:// URI")),
    "forward-without-s3": Case(
        (*SSH, "--forward-aws-credentials"), ("only applies with --checkpoint-s3, --data-s3 or --resume",)
    ),
    "forward-bad-mode": Case(
        (*SSH, "--checkpoint-s3", "s3://bucket/x", "--forward-aws-credentials=always"),
        ("--forward-aws-credentials", "session or static", "'always'"),
    ),
    "forward-on-local": Case(
        (*LOCAL, "--checkpoint-s3", "s3://bucket/x", "--forward-aws-credentials"),
        ("for remote hosts", "drop --forward-aws-credentials"),
    ),
    "forward-on-local-data": Case(
        (*LOCAL, "--data-s3", "s3://bucket/x/", "--forward-aws-credentials=static"),
        ("for remote hosts", "drop --forward-aws-credentials"),
    ),
    "resume-and-resume-from-ssh": Case((*SSH, "--resume", "latest", "--resume-from", "c.pt"), ("keep one",)),
    "resume-latest-without-prefix-ssh": Case((*SSH, "--resume", "latest"), ("--checkpoint-s3",)),
    "resume-bad-uri-ssh": Case((*SSH, "--resume", "s3://B/k.pt"), ("not a valid bucket name",)),
    "resume-empty": Case((*LOCAL, "--resume", ""), ("--resume",)),
    "ssh-exec-no-command": Case(("ssh", "exec", "h"), ("missing argument", "see: runctl ssh exec --help")),
    "ssh-status-missing-identity": Case(("ssh", "status", "h", "-i", "{tmp}/no-key"), ("identity file",)),
    # ---- an unreachable host is exit 4, and a train leaves no record
    "ssh-train-unreachable": Case(
        ("ssh", "train", UNREACHABLE, "train_stub.py", "--insecure-host-key"), ("cannot reach",), code=4
    ),
    "ssh-exec-unreachable": Case(("ssh", "exec", UNREACHABLE, "--insecure-host-key", "--", "true"), code=4),
    "ssh-status-unreachable": Case(("ssh", "status", UNREACHABLE, "--insecure-host-key"), ("cannot reach",), code=4),
    # ---- aws train --auto-resume / --spot-fallback: refused before any AWS call
    "auto-resume-negative": Case((*RESUMING, "--auto-resume", "-1"), ("--auto-resume", "between 0 and 100")),
    "auto-resume-not-an-integer": Case((*RESUMING, "--auto-resume", "1.5"), ("--auto-resume", "whole number")),
    "auto-resume-text": Case((*RESUMING, "--auto-resume", "always"), ("--auto-resume", "whole number")),
    "auto-resume-without-wait": Case(
        (*AWS, "--checkpoint-s3", "s3://bucket/ck", "--auto-resume", "2"), ("controller running", "add --wait")
    ),
    "auto-resume-without-checkpoint-s3": Case(
        (*AWS, "--wait", "--auto-resume", "2"), ("verified in S3", "--checkpoint-s3")
    ),
    "spot-fallback-unknown": Case(
        (*RESUMING, "--auto-resume", "1", "--spot-fallback", "reserved"), ("--spot-fallback", "on-demand or none")
    ),
    "spot-fallback-without-auto-resume": Case(
        (*AWS, "--spot-fallback", "on-demand"), ("--spot-fallback", "--auto-resume")
    ),
    # ---- runs: ids, flags
    "unknown-run-status": Case(("runs", "status", "deadbeef"), ("deadbeef", "runs list")),
    "unknown-run-wait": Case(("runs", "wait", "deadbeef"), ("deadbeef", "runs list")),
    "unknown-run-stop": Case(("runs", "stop", "deadbeef"), ("deadbeef", "runs list")),
    "unknown-run-logs": Case(("runs", "logs", "deadbeef"), ("deadbeef", "runs list")),
    "unknown-run-metrics": Case(("runs", "metrics", "deadbeef"), ("deadbeef", "runs list")),
    "run-id-empty": Case(("runs", "status", ""), ("empty run id", "runs list")),
    "run-id-sql-quote": Case(("runs", "status", "x'; DROP TABLE runs; --"), ("no run", "runs list")),
    "run-id-percent": Case(("runs", "stop", "%"), ("no run", "runs list")),
    "run-id-newline": Case(("runs", "status", "ab\ncd"), ("no run", "runs list")),
    "run-id-missing": Case(("runs", "status"), ("missing argument", "see: runctl runs status --help")),
    "wait-bad-timeout": Case(("runs", "wait", "deadbeef", "--timeout", "5x"), ("'5x'", "15m")),
    "runs-wait-timeout-400-digits": Case(("runs", "wait", "deadbeef", "--timeout", DIGITS_400), ("maximum of 30d",)),
    "stop-grace-negative": Case(("runs", "stop", "deadbeef", "--grace", "-1"), ("--grace", "0 or more")),
    "stop-grace-nan": Case(("runs", "stop", "deadbeef", "--grace", "nan"), ("--grace", "nan")),
    "stop-grace-inf": Case(("runs", "stop", "deadbeef", "--grace", "inf"), ("--grace", "at most 3600")),
    "stop-grace-text": Case(("runs", "stop", "deadbeef", "--grace", "soon"), ("--grace", "see: runctl runs stop")),
    "logs-tail-not-a-number": Case(("runs", "logs", "deadbeef", "--tail", "x"), ("--tail", "see: runctl runs logs")),
    "runs-list-yaml": Case(("runs", "list", "-o", "yaml"), ("'yaml'", "see: runctl runs list --help")),
    "runs-metrics-yaml": Case(("runs", "metrics", "deadbeef", "-o", "yaml"), ("'yaml'", "'csv'")),
    "runs-unknown-command": Case(("runs", "lst"), ("no such command", "see: runctl runs --help")),
    # ---- checkpoint
    "checkpoint-list-unknown-run": Case(("checkpoint", "list", "deadbeef"), ("deadbeef", "runs list")),
    "checkpoint-download-unknown-run": Case(
        ("checkpoint", "download", "deadbeef", "--dest", "{tmp}/ckpt"), ("deadbeef", "runs list")
    ),
    "checkpoint-list-yaml": Case(("checkpoint", "list", "deadbeef", "-o", "yaml"), ("'yaml'", "--help")),
    "checkpoint-download-missing-id": Case(("checkpoint", "download"), ("missing argument", "--help")),
    # ---- local status
    "local-status-missing-dir": Case(
        ("local", "status", "--project-dir", "{tmp}/no-such-dir"), ("does not exist", "dir")
    ),
    "local-status-dir-is-a-file": Case(("local", "status", "--project-dir", "pyproject.toml"), ("not a directory",)),
    "local-status-yaml": Case(("local", "status", "-o", "yaml"), ("'yaml'", "see: runctl local status --help")),
    # a garbled training.pid is no pid: a verdict (exit 1), never a crash or a probe of pid 0 / -N
    "local-status-24-digit-pid": Case(
        ("local", "status"), ("evidence",), code=1, stdout="unknown\n", files={"training.pid": "1" * 24 + "\n"}
    ),
    "local-status-negative-pid": Case(
        ("local", "status"), ("evidence",), code=1, stdout="unknown\n", files={"training.pid": "-1\n"}
    ),
    "local-status-binary-pid": Case(
        ("local", "status"), ("evidence",), code=1, stdout="unknown\n", files={"training.pid": b"\xff\xfe\x00"}
    ),
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


def check_clean_failure(result, code: int, words: tuple[str, ...] = (), stdout: str = "") -> None:  # type: ignore[no-untyped-def]
    """The contract for every refused input: its exit code, one or two lines on stderr, no traceback."""
    assert result.code == code, (result.code, result.out, result.err)
    assert "Traceback" not in result.err
    assert "internal error" not in result.err
    assert result.out == stdout, "errors belong on stderr"
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, result.err
    for word in words:
        assert word in result.err, (word, result.err)


def check_usage_error(result, problem: str, fix: str) -> None:  # type: ignore[no-untyped-def]
    check_clean_failure(result, 2, (problem, fix))


def write_files(root: Path, files: dict[str, str | bytes]) -> None:
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(body, bytes):
            path.write_bytes(body)
        else:
            path.write_text(body)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_cleanly_and_leaves_nothing(
    cli, project: Path, runctl_home: Path, tmp_path: Path, case: str
) -> None:
    values = prepare(project, tmp_path)
    spec = CASES[case]
    write_files(project, spec.files)
    write_files(runctl_home, spec.home_files)
    before = snapshot(project)
    result = cli(*(arg.format(**values) for arg in spec.args))
    check_clean_failure(result, spec.code, tuple(word.format(**values) for word in spec.words), spec.stdout)
    assert snapshot(project) == before, "the rejected command changed the project dir"
    assert not (project / ".runctl").exists()
    assert runs_in_store(runctl_home) == 0


def test_the_table_covers_every_command_group() -> None:
    assert len(CASES) >= 60
    groups = {case.args[:2] for case in CASES.values()}
    for group in [("local", "train"), ("ssh", "train"), ("local", "status"), ("checkpoint", "list")]:
        assert group in groups
    assert {args[1] for args in groups if args[0] == "runs"} >= {"status", "wait", "stop", "logs", "list"}


def test_rejected_commands_leave_no_run_behind(cli, project: Path, tmp_path: Path) -> None:
    values = prepare(project, tmp_path)
    for case in ("env-bad-name", "missing-python", "not-executable", "auto-stop-loss-nan", "ssh-train-unreachable"):
        spec = CASES[case]
        assert cli(*(arg.format(**values) for arg in spec.args)).code == spec.code
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


def test_runctl_debug_shows_the_traceback(cli, project: Path) -> None:
    result = cli("local", "train", "nope.py", env={"RUNCTL_DEBUG": "1"})
    assert result.code == 2
    assert "Traceback (most recent call last)" in result.err
    assert "does not exist" in result.err
    assert not (project / ".runctl").exists()
