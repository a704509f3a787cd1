"""The host-side sync target check (agent/synctarget.py) and the controller's shell fast path to it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from runctl.agent import synctarget
from runctl.agent.synctarget import HostProblem, Refused, claim, protect_rules, rsync_literal
from runctl.transport.ssh import SshTransport
from runctl.transport.sync import checked_target

HOSTILE = "p`touch${IFS}x`$(id) 'q\"\n-x"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    return path


def owner(directory: Path) -> dict[str, object]:
    return json.loads((directory / ".runctl" / "owner.json").read_text())  # type: ignore[no-any-return]


def test_a_new_dir_is_created_and_marked_for_the_project(tmp_path: Path) -> None:
    target = tmp_path / "new" / HOSTILE
    assert claim(str(target), "claim", HOSTILE) == []
    assert owner(target)["project"] == HOSTILE and owner(target)["adopted"] is False
    assert claim(str(target), "claim", HOSTILE) == [], "its own dir is used again"
    with pytest.raises(Refused, match="belongs to the runctl project"):
        claim(str(target), "claim", "another")


def test_a_foreign_dir_is_refused_unless_adopted_and_then_protected(tmp_path: Path) -> None:
    target = tmp_path / "theirs"
    target.mkdir()
    (target / "st*r").write_text("x")
    (target / "sub").mkdir()
    with pytest.raises(Refused, match="not empty and was not created by runctl"):
        claim(str(target), "claim", "p")
    assert not (target / ".runctl").exists()
    rules = claim(str(target), "adopt", "p")
    assert rules == ["P /st\\*r", "P /st\\*r/***", "P /sub", "P /sub/***"]
    assert claim(str(target), "claim", "p") == rules, "every later sync keeps protecting them"


def test_places_that_are_never_synced_into(tmp_path: Path, home: Path) -> None:
    (home / "runctl" / "other" / ".runctl").mkdir(parents=True)
    (home / "runctl" / "other" / ".runctl" / "owner.json").write_text('{"tool": "runctl", "project": "other"}\n')
    (home / "link").symlink_to(home)
    cases = {
        "/": "root directory",
        str(home): "home directory",
        str(home / "link"): "home directory",
        str(home.parent): "holds the home directory",
        str(home / "runctl"): "holds the runctl project",
        str(home / "runctl" / "other" / "deeper"): "inside the runctl project",
    }
    for path, needle in cases.items():
        for mode in ("claim", "adopt"):
            with pytest.raises(Refused, match=needle):
                claim(path, mode, "p")
    (tmp_path / "file").write_text("x")
    with pytest.raises(Refused, match="not a directory"):
        claim(str(tmp_path / "file"), "adopt", "p")


def test_os_problems_are_host_errors_naming_the_path(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "f").write_text("x")
    # Root ignores directory modes; a path below a regular file fails for everyone.
    with pytest.raises(HostProblem, match=r"cannot use .*proj"):
        claim(str(locked / "f" / "proj"), "mkdir", "-")


def test_rsync_literal_escapes_only_where_rsync_unescapes() -> None:
    assert rsync_literal("plain\\name") == "plain\\name"
    assert rsync_literal("a*b\\c") == "a\\*b\\\\c"
    assert rsync_literal("a\\b", wildcard=True) == "a\\\\b"
    assert protect_rules(["new\nline", "x"]) == ["P *"], "an entry no rule can name protects everything"


def _run_target(rsync_path: str) -> subprocess.CompletedProcess[str]:
    """Run the --rsync-path command as the remote shell would, with rsync's arguments appended."""
    command = rsync_path.split("=", 1)[1] + " --version"
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)


def test_fast_path_runs_rsync_only_for_a_dir_marked_for_the_project(tmp_path: Path) -> None:
    transport = SshTransport.from_dict({"host": "h", "agent_path": "/nonexistent/agent.pyz", "home": "/h"})
    owned = tmp_path / HOSTILE
    claim(str(owned), "claim", HOSTILE)
    assert "rsync" in _run_target(checked_target(transport, str(owned), "claim", HOSTILE)).stdout

    for directory, project in ((owned, "someone-else"), (tmp_path / "unmarked", HOSTILE)):
        slow = _run_target(checked_target(transport, str(directory), "claim", project))
        assert "/nonexistent/agent.pyz" in slow.stderr, "anything else goes to the full check"
    adopted = tmp_path / "adopted"
    adopted.mkdir()
    (adopted / "f").write_text("x")
    claim(str(adopted), "adopt", "p")
    assert "/nonexistent/agent.pyz" in _run_target(checked_target(transport, str(adopted), "claim", "p")).stderr
    assert synctarget.owner_fields("p")[1] in (adopted / ".runctl" / "owner.json").read_text()
