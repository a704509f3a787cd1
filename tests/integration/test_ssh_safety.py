"""A sync never deletes what runctl did not create, and no path is ever run by a shell: reproductions.

runctl connects as a second, unprivileged user of the test hosts (tests/support/sshhosts.py) whose
home holds canary files (.bashrc, .profile, .ssh/authorized_keys, a sibling project ~/runctl/other).
Each test plays a hostile or careless user and checks what a user would notice afterwards: the exit
code and message, that the canaries and foreign directories are untouched, that no run was
recorded, that no command hidden in a path ran anywhere, and that such paths exist literally.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_ssh import SshEnv, make_project
from tests.support.sshhosts import SECOND_USER, SECOND_USER_CANARIES, SshHosts, SshTestHost

pytestmark = pytest.mark.timeout(120)

# Where an injected `touch` could land: the shells involved run in these places.
SEARCH_ROOTS = ("/tmp", "/root", "/home/" + SECOND_USER, "/")


@pytest.fixture(scope="module")
def env(ssh_hosts: SshHosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshEnv]:
    """The user's side, connecting to every host as the unprivileged user."""
    if any(host.second_home is None for host in ssh_hosts):
        pytest.skip("the test hosts have no second user (they need root to create one)")
    base = tmp_path_factory.mktemp("sshsafety")
    made = SshEnv.create(
        list(ssh_hosts), base, [ssh_hosts.client_key], ssh_hosts.known_hosts.read_text(), "safety", SECOND_USER
    )
    yield made
    made.cleanup()


@pytest.fixture
def host(env: SshEnv) -> Iterator[SshTestHost]:
    """Host 0, its canaries checked intact after the test."""
    chosen = env.hosts[0]
    assert chosen.second_home is not None
    expected = chosen.second_canaries()
    yield chosen
    assert chosen.second_canaries() == expected, "a file in the user's home was changed or deleted"


@pytest.fixture
def scratch(host: SshTestHost) -> Iterator[Path]:
    """A directory in /tmp the unprivileged user can write, removed afterwards."""
    path = Path("/tmp") / ("rctest-safety-%s" % secrets.token_hex(4))
    path.mkdir()
    os.chown(path, *_ids(host))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _ids(host: SshTestHost) -> tuple[int, int]:
    assert host.second_home is not None
    info = host.second_home.stat()
    return info.st_uid, info.st_gid


def _home(host: SshTestHost) -> Path:
    assert host.second_home is not None
    return host.second_home


def _as_user(host: SshTestHost, path: Path) -> None:
    """Give a tree made by the test (as root) to the unprivileged user, as if they had made it."""
    uid, gid = _ids(host)
    for base, _dirs, files in os.walk(path):
        os.chown(base, uid, gid)
        for name in files:
            os.lchown(os.path.join(base, name), uid, gid)


def _short_error(result, code: int, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert result.code == code, (result.code, result.err)
    assert 1 <= len(result.err_lines) <= 2, result.err
    for needle in needles:
        assert needle in result.err, (needle, result.err)


def _tree(root: Path) -> dict[str, str]:
    """Every file and dir below root (symlinks not followed): relative path -> content or '<dir>'."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "<dir>" if path.is_dir() and not path.is_symlink() else path.read_bytes().decode("latin-1")
    return out


def _marker() -> str:
    return "rctest-pwned-%s" % secrets.token_hex(4)


def _found_anywhere(name: str) -> list[str]:
    found = []
    for root in SEARCH_ROOTS:
        depth = ["-maxdepth", "1"] if root == "/" else []
        proc = subprocess.run(
            ["find", root, "-xdev", *depth, "-name", name], capture_output=True, text=True, check=False
        )
        found += proc.stdout.split("\n")
    return sorted({f for f in found if f})


# ---- project names and remote dirs that are not runctl's ---------------------------------------------


@pytest.mark.parametrize("name", [".", "..", "-x", ".hidden", "a/b", "../x", ""])
def test_bad_project_name_is_refused_before_anything_happens(
    env: SshEnv, host: SshTestHost, tmp_path: Path, name: str
) -> None:
    project = make_project(tmp_path, "p-name", {"ok.py": "print('ok')\n"})
    before = env.runs(project)
    result = env.cli("ssh", "train", env.dest(host), "ok.py", "--project-name", name, cwd=project)
    _short_error(result, 2, "invalid --project-name")
    assert env.runs(project) == before
    assert sorted(p.name for p in (_home(host) / "runctl").iterdir()) == ["other"]


def test_home_root_and_their_parents_are_refused(env: SshEnv, host: SshTestHost, tmp_path: Path) -> None:
    project = make_project(tmp_path, "p-home", {"ok.py": "print('ok')\n"})
    home = _home(host)
    (home / "link-to-home").symlink_to(home)
    try:
        before = env.runs(project)
        cases = {
            "~": "home directory",
            "~/": "home directory",
            "~/runctl/..": "home directory",
            str(home): "home directory",
            "/": "root directory",
            "/tmp/..": "root directory",
            str(home.parent): "holds your home directory",
            "~/link-to-home": "is the home directory",  # only the host sees through the symlink
        }
        for remote_dir, needle in cases.items():
            result = env.cli("ssh", "train", env.dest(host), "ok.py", "--remote-dir", remote_dir, cwd=project)
            _short_error(result, 2, needle, "--remote-dir")
            adopted = env.cli(
                "ssh", "train", env.dest(host), "ok.py", "--remote-dir", remote_dir, "--adopt-remote-dir", cwd=project
            )
            _short_error(adopted, 2, needle)
        assert env.runs(project) == before
        assert not (home / ".runctl" / "owner.json").exists()
        assert not (home / "ok.py").exists(), "the project was synced into the home directory"
    finally:
        (home / "link-to-home").unlink()


def test_foreign_non_empty_dir_is_refused_and_left_untouched(
    env: SshEnv, host: SshTestHost, tmp_path: Path, scratch: Path
) -> None:
    foreign = scratch / "their-work"
    for rel, text in {"results.csv": "1,2\n", "notes/todo.txt": "keep me\n", ".hidden": "x"}.items():
        (foreign / rel).parent.mkdir(parents=True, exist_ok=True)
        (foreign / rel).write_text(text)
    _as_user(host, scratch)
    before_tree = _tree(foreign)
    project = make_project(tmp_path, "p-foreign", {"ok.py": "print('ok')\n"})
    before = env.runs(project)

    result = env.cli("ssh", "train", env.dest(host), "ok.py", "--remote-dir", str(foreign), cwd=project)
    _short_error(result, 2, "not empty and was not created by runctl", "--adopt-remote-dir", "--remote-dir")
    assert _tree(foreign) == before_tree, "the foreign dir was changed"
    assert env.runs(project) == before, "a refused start left a record"

    # A file where the dir should be is refused too.
    result = env.cli("ssh", "train", env.dest(host), "ok.py", "--remote-dir", str(foreign / "results.csv"), cwd=project)
    _short_error(result, 2, "not a directory")
    assert _tree(foreign) == before_tree


def test_empty_dir_is_claimed_and_later_syncs_delete_only_what_runctl_sent(
    env: SshEnv, host: SshTestHost, tmp_path: Path, scratch: Path
) -> None:
    target = scratch / "empty"
    target.mkdir()
    _as_user(host, scratch)
    project = make_project(tmp_path, "p-empty", {"ok.py": "print('ok')\n", "old.py": "x = 1\n"})
    first = env.cli("ssh", "train", env.dest(host), "ok.py", "--wait", "--remote-dir", str(target), cwd=project)
    assert first.code == 0, first.err
    owner = json.loads((target / ".runctl" / "owner.json").read_text())
    assert owner["tool"] == "runctl" and owner["project"] == "p-empty" and owner["adopted"] is False
    (project / "old.py").unlink()
    second = env.cli("ssh", "train", env.dest(host), "ok.py", "--wait", "--remote-dir", str(target), cwd=project)
    assert second.code == 0, second.err
    assert not (target / "old.py").exists(), "runctl's own dir is mirrored, deletions included"

    # Another project may not take it over (its sync would delete p-empty's files).
    before_tree = _tree(target)
    other = make_project(tmp_path, "p-intruder", {"ok.py": "print('ok')\n"})
    result = env.cli("ssh", "train", env.dest(host), "ok.py", "--remote-dir", str(target), cwd=other)
    _short_error(result, 2, "belongs to the runctl project 'p-empty'", "--project-name p-empty")
    assert _tree(target) == before_tree


def test_adopted_dir_keeps_everything_that_was_there(
    env: SshEnv, host: SshTestHost, tmp_path: Path, scratch: Path
) -> None:
    adopted = scratch / "shared"
    existing = {
        "results.csv": "1,2\n",
        "notes/todo.txt": "keep me\n",
        "st*r [x].txt": "wildcards in a name\n",
        "back\\slash": "a backslash\n",
        "-dash": "leading dash\n",
    }
    for rel, text in existing.items():
        (adopted / rel).parent.mkdir(parents=True, exist_ok=True)
        (adopted / rel).write_text(text)
    _as_user(host, scratch)
    project = make_project(tmp_path, "p-adopt", {"ok.py": "print('ok')\n", "old.py": "x = 1\n"})
    argv = ["ssh", "train", env.dest(host), "ok.py", "--wait", "--remote-dir", str(adopted), "--adopt-remote-dir"]
    first = env.cli(*argv, cwd=project)
    assert first.code == 0, first.err
    owner = json.loads((adopted / ".runctl" / "owner.json").read_text())
    assert owner["adopted"] is True
    assert sorted(owner["preexisting"]) == sorted({rel.split("/")[0] for rel in existing})
    assert (adopted / "ok.py").is_file()

    (project / "old.py").unlink()
    (adopted / "notes" / "later.txt").write_text("added on the host after adoption\n")
    second = env.cli(*argv[:-1], cwd=project)  # later syncs need no flag: the marker remembers
    assert second.code == 0, second.err
    assert not (adopted / "old.py").exists(), "files runctl sent are still mirrored"
    for rel, text in existing.items():
        assert (adopted / rel).read_text() == text, "%s, there before adoption, was destroyed" % rel
    assert (adopted / "notes" / "later.txt").is_file()


def test_sibling_and_enclosing_projects_are_refused(env: SshEnv, host: SshTestHost, tmp_path: Path) -> None:
    other = _home(host) / "runctl" / "other"
    before_tree = _tree(other)
    project = make_project(tmp_path, "p-sibling", {"ok.py": "print('ok')\n"})
    before = env.runs(project)
    cases = [
        (["--remote-dir", "~/runctl/other"], "belongs to the runctl project 'other'"),
        (["--remote-dir", "~/runctl", "--adopt-remote-dir"], "holds the runctl project"),
        (["--remote-dir", "~/runctl/other/sub"], "inside the runctl project"),
        (["--remote-dir", "~/runctl/other/sub", "--adopt-remote-dir"], "inside the runctl project"),
    ]
    for args, needle in cases:
        result = env.cli("ssh", "train", env.dest(host), "ok.py", *args, cwd=project)
        _short_error(result, 2, needle)
    assert _tree(other) == before_tree
    assert env.runs(project) == before


def test_remote_mkdir_permission_error_names_the_path(
    env: SshEnv, host: SshTestHost, tmp_path: Path, scratch: Path
) -> None:
    locked = scratch / "root-only"
    locked.mkdir(mode=0o755)  # owned by root: the user cannot create anything inside
    project = make_project(tmp_path, "p-perm", {"ok.py": "print('ok')\n"})
    before = env.runs(project)
    result = env.cli("ssh", "train", env.dest(host), "ok.py", "--remote-dir", str(locked / "proj"), cwd=project)
    _short_error(result, 4, "permission denied at %s" % (locked / "proj"))
    assert "authentication" not in result.err
    assert env.runs(project) == before


# ---- no path is ever run by a shell ------------------------------------------------------------------


def _hostile(marker: str, slashes: bool = True) -> str:
    """A path component holding backticks, $(), quotes, a space, a newline and a leading dash."""
    where = "/tmp/" + marker if slashes else marker
    return "-w`touch${IFS}%s`$(touch${IFS}%s) 'q\"\nx" % (where, where)


def test_hostile_paths_round_trip_literally_and_run_nothing(
    env: SshEnv, host: SshTestHost, tmp_path: Path, scratch: Path
) -> None:
    marker = _marker()
    bad = _hostile(marker)
    bad_name = _hostile(marker, slashes=False)
    _as_user(host, scratch)
    remote_dir = scratch / ("rd " + bad)
    checkpoint_dir = scratch / ("ck " + bad)
    data = tmp_path / ("data " + bad)
    (data / "inner").mkdir(parents=True)
    (data / "inner" / "x.csv").write_text("1,2,3\n")
    script = bad_name + ".py"  # starts with "-": never an option to python3
    resume = "res " + bad_name + "/ck.json"
    project = make_project(
        tmp_path,
        "p-inject",
        {
            script: """
            import os
            print("RESUME=" + repr(os.environ["RUNCTL_RESUME_FROM"]))
            print("DATA=" + repr(sorted(os.listdir(os.environ["RUNCTL_DATA_DIR"]))))
            with open(os.path.join(os.environ["RUNCTL_CHECKPOINT_DIR"], "c.json"), "w") as out:
                out.write('{"step": 1}')
            """,
        },
    )
    result = env.cli(
        "ssh", "train", env.dest(host), "./" + script, "--wait", "--remote-dir", str(remote_dir), "--data", str(data),
        "--checkpoint-dir", str(checkpoint_dir), "--resume-from", resume, cwd=project,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "RESUME=%r" % resume in result.out
    assert "DATA=[%r]" % data.name in result.out
    assert (remote_dir / script).is_file(), "the remote dir does not exist literally"
    assert (remote_dir / "data" / data.name / "inner" / "x.csv").read_text() == "1,2,3\n"
    assert (checkpoint_dir / "c.json").is_file()
    run_id = next(line.split()[1] for line in result.err_lines if line.startswith("run "))
    assert (project / "checkpoints" / run_id / "c.json").read_text() == '{"step": 1}'

    dest = tmp_path / ("dl:" + bad)
    fetched = env.cli("checkpoint", "download", run_id, "--dest", str(dest), cwd=project)
    assert fetched.code == 0, fetched.err
    assert (dest / "c.json").is_file()
    assert _found_anywhere(marker) == [], "a command hidden in a path ran"


def test_hostile_local_project_dir_name_becomes_a_literal_remote_dir(
    env: SshEnv, host: SshTestHost, tmp_path: Path
) -> None:
    marker = _marker()
    name = "p" + _hostile(marker, slashes=False)
    project = make_project(tmp_path, name, {"ok.py": "print('ran')\n"})
    remote = _home(host) / "runctl" / name
    try:
        result = env.cli("ssh", "train", env.dest(host), "ok.py", "--wait", cwd=project)
        assert result.code == 0, result.err
        assert "ran" in result.out
        assert (remote / "ok.py").is_file(), "the default remote dir does not exist literally"
        assert json.loads((remote / ".runctl" / "owner.json").read_text())["project"] == name
        assert _found_anywhere(marker) == [], "a command hidden in the project dir name ran"
    finally:
        shutil.rmtree(remote, ignore_errors=True)


# ---- checkpoint downloads ----------------------------------------------------------------------------


def test_download_never_overwrites_a_local_file_runctl_did_not_download(
    env: SshEnv, host: SshTestHost, tmp_path: Path
) -> None:
    project = make_project(tmp_path, "p-download")
    stub = ["--epochs", "2", "--steps-per-epoch", "2", "--delay", "0.01"]
    result = env.cli(
        "ssh", "train", env.dest(host), "train_stub.py", "--wait", "--no-download-checkpoints", "--", *stub,
        cwd=project,
    )  # fmt: skip
    assert result.code == 0, result.err
    run_id = next(line.split()[1] for line in result.err_lines if line.startswith("run "))
    dest = project / "checkpoints" / run_id
    dest.mkdir(parents=True)
    mine = dest / "checkpoint_epoch_1.json"
    mine.write_text("the user's own file\n")

    fetched = env.cli("checkpoint", "download", run_id, cwd=project)
    assert fetched.code == 0, fetched.err
    assert mine.read_text() == "the user's own file\n"
    assert json.loads((dest / "checkpoint_epoch_2.json").read_text())["step"] == 4
    assert "checkpoint_epoch_1.json" in fetched.err and "not overwritten" in fetched.err

    # A file runctl downloaded may be refreshed; once the user edits it, it is theirs.
    again = env.cli("checkpoint", "download", run_id, cwd=project)
    assert again.code == 0, again.err
    assert "checkpoint_epoch_2.json" not in again.err
    (dest / "checkpoint_epoch_2.json").write_text("edited by the user\n")
    third = env.cli("checkpoint", "download", run_id, cwd=project)
    assert third.code == 0, third.err
    assert (dest / "checkpoint_epoch_2.json").read_text() == "edited by the user\n"
    assert "checkpoint_epoch_2.json" in third.err
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == [
        "checkpoint_epoch_1.json",
        "checkpoint_epoch_2.json",
    ], "a download deleted or added something unexpected"


def test_canaries_are_what_the_host_set_up(host: SshTestHost) -> None:
    """The canaries the other tests guard are really there (and the user really logs in with the key)."""
    home = _home(host)
    for rel, text in SECOND_USER_CANARIES.items():
        assert (home / rel).read_text() == text
    proc = subprocess.run(
        ["ssh", *host.ssh_args(), host.second_dest, 'id -un; printf %s "$HOME"'], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n", 1) == [SECOND_USER, str(home)]
