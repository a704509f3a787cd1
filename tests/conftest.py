"""Shared fixtures: an isolated RUNCTL_HOME per test, a throwaway project, and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
RUNCTL = [sys.executable, "-m", "runctl"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self):  # type: ignore[no-untyped-def]
        import json

        return json.loads(self.out)


@pytest.fixture
def runctl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "runctl-home"
    home.mkdir()
    monkeypatch.setenv("RUNCTL_HOME", str(home))
    monkeypatch.delenv("RUNCTL_DEBUG", raising=False)
    return home


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project dir (with pyproject.toml, so it is its own root) holding copies of the examples."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'proj'\nversion = '0'\n")
    for name in ("train_stub.py", "train_mnist.py"):
        shutil.copy(EXAMPLES / name, root / name)
    return root


@pytest.fixture
def cli(runctl_home: Path, project: Path):  # type: ignore[no-untyped-def]
    """Run `runctl ARGS...` as a user would (a real process), in the project dir by default."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 120, env: dict[str, str] | None = None) -> Result:
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = subprocess.run(
            [*RUNCTL, *args],
            cwd=str(cwd or project),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture(scope="session")
def ssh_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tests.support.sshhosts import ssh_hosts_fixture

    yield from ssh_hosts_fixture(tmp_path_factory, n=2)
