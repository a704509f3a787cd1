"""Fast start: commands that don't need them never import boto3, httpx or Rich; `--help` not even pydantic."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("boto3", "botocore", "httpx", "rich", "pydantic")
CLOUD_AND_RENDERING = {"boto3", "botocore", "httpx", "rich"}

PROBE = """
import sys
sys.argv = ["runctl", *sys.argv[1:]]
from runctl.cli.main import app
try:
    app(prog_name="runctl")
except SystemExit:
    pass
print(",".join(m for m in WATCHED if m in sys.modules), file=sys.stderr)
"""


def loaded_modules(*args: str, watched: tuple[str, ...] = HEAVY) -> set[str]:
    probe = "WATCHED = %r\n%s" % (watched, PROBE)
    proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    return set(filter(None, lines[-1].split(","))) if lines else set()


def test_top_level_help_imports_nothing_heavy(runctl_home: object) -> None:
    assert loaded_modules("--help") == set()


@pytest.mark.parametrize("group", ["local", "runs", "ssh", "checkpoint", "lambda"])
def test_group_help_imports_no_cloud_sdk_or_rendering(group: str, runctl_home: object) -> None:
    assert not loaded_modules(group, "--help") & CLOUD_AND_RENDERING


def test_runs_list_json_never_imports_cloud_or_rich(runctl_home: object) -> None:
    assert not loaded_modules("runs", "list", "--output", "json") & CLOUD_AND_RENDERING


def test_a_command_builds_only_its_own_group(runctl_home: object) -> None:
    train_commands = ("runctl.cli.local", "runctl.cli.ssh", "runctl.cli.trainopts", "runctl.params")
    assert loaded_modules("runs", "list", "-o", "json", watched=train_commands) == set()
    assert loaded_modules("local", "--help", watched=train_commands) == {"runctl.cli.local", *train_commands[2:]}


def test_only_the_dashboard_imports_the_web_stack(runctl_home: object) -> None:
    web = ("starlette", "uvicorn", "runctl.dashboard.server")
    for args in (["--help"], ["runs", "list", "-o", "json"], ["local", "train", "--help"], ["dashboard", "--help"]):
        assert loaded_modules(*args, watched=web) == set(), args


LAZY_PROBE = """
import sys
sys.argv = ["runctl", *sys.argv[1:]]
from runctl import providers
providers.register("counted", "tests.support.counted_provider:CountedProvider")
from runctl.cli.main import app
try:
    app(prog_name="runctl")
except SystemExit:
    pass
watched = ("tests.support.counted_provider", "runctl.providers.ssh")
print(",".join(m for m in watched if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["ssh", "--help"], ["runs", "list", "--output", "json"]])
def test_a_provider_registered_by_import_string_is_not_imported_until_used(
    runctl_home: object, args: list[str]
) -> None:
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run(
        [sys.executable, "-c", LAZY_PROBE, *args], capture_output=True, text=True, timeout=60, cwd=repo
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    loaded = set(filter(None, lines[-1].split(","))) if lines else set()
    assert "tests.support.counted_provider" not in loaded
    assert args[0] == "ssh" or "runctl.providers.ssh" not in loaded
