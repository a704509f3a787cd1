"""Remote runs over SSH, end to end, against real OpenSSH test hosts (tests/support/sshhosts.py).

Every test starts `python -m runctl` as a user would, with an ssh config file (RUNCTL_SSH_CONFIG)
naming the test key and known_hosts, and looks at what a user would see: exit codes, stdout and
stderr, `runs ... -o json`, files on the host's disk and checkpoints pulled back to the project.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.runs import RUN_ID, poll
from tests.support.sshhosts import SshHosts, SshTestHost, start_hosts

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
RUNCTL = [sys.executable, "-m", "runctl"]
STUB_QUICK = ["--epochs", "2", "--steps-per-epoch", "3", "--delay", "0.02"]


# ---- helpers shared with test_ssh_faults.py ------------------------------------------------------


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float = 0.0

    @property
    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def _proc_alive(pid: int) -> bool:
    try:
        stat = Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path("/proc/%d/cmdline" % pid).read_bytes()
    except OSError:
        return []
    return raw.decode("utf-8", "replace").rstrip("\0").split("\0")


@dataclasses.dataclass
class SshEnv:
    """A user's side of things: a RUNCTL_HOME, an ssh config file, and the runctl CLI."""

    hosts: list[SshTestHost]
    home: Path
    config: Path
    known_hosts: Path

    @classmethod
    def create(
        cls,
        hosts: list[SshTestHost],
        base: Path,
        identities: list[Path],
        known_hosts_text: str,
        tag: str = "main",
        user: str = "root",
    ) -> SshEnv:
        """Short RUNCTL_HOME (so the control sockets sit in <home>/ssh) and a `Host *` config."""
        base.mkdir(parents=True, exist_ok=True)
        home = Path(tempfile.mkdtemp(prefix="rch-", dir="/tmp"))
        known_hosts = base / ("known_hosts-%s" % tag)
        known_hosts.write_text(known_hosts_text)
        config = base / ("ssh_config-%s" % tag)
        lines = ["Host *", "  UserKnownHostsFile %s" % known_hosts, "  User %s" % user]
        lines += ["  IdentityFile %s" % key for key in identities]
        config.write_text("\n".join(lines) + "\n")
        return cls(hosts, home, config, known_hosts)

    # -- the CLI ------------------------------------------------------------------------------

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "RUNCTL_DEBUG")}
        env.update(RUNCTL_HOME=str(self.home), RUNCTL_SSH_CONFIG=str(self.config))
        env.update(extra or {})
        return env

    def cli(self, *args: str, cwd: Path, timeout: float = 90, env: dict[str, str] | None = None) -> Result:
        started = time.monotonic()
        proc = subprocess.run(
            [*RUNCTL, *args],
            cwd=str(cwd),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environ(env),
            stdin=subprocess.DEVNULL,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
        assert "Traceback" not in result.err, result.err
        return result

    def popen(self, *args: str, cwd: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*RUNCTL, *args],
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.environ(),
        )

    def shell_command(self) -> str:
        return shlex.join(RUNCTL)

    @staticmethod
    def dest(host: SshTestHost) -> str:
        return host.address + (":%d" % host.port if host.port != 22 else "")

    def start(self, host: SshTestHost, script: str, *args: str, cwd: Path) -> str:
        """`ssh train DEST SCRIPT -- ARGS` without --wait: the run id it prints."""
        started = self.cli("ssh", "train", self.dest(host), script, "--", *args, cwd=cwd)
        assert started.code == 0, started.err
        return started.out.strip()

    def status(self, run_id: str, cwd: Path) -> dict[str, Any]:
        result = self.cli("runs", "status", run_id, "-o", "json", cwd=cwd)
        assert result.code == 0, result.err
        return result.json  # type: ignore[no-any-return]

    def runs(self, cwd: Path, include_all: bool = True) -> list[dict[str, Any]]:
        result = self.cli("runs", "list", "-o", "json", *(["--all"] if include_all else []), cwd=cwd)
        assert result.code == 0, result.err
        return result.json  # type: ignore[no-any-return]

    def run_named(self, name: str, cwd: Path) -> dict[str, Any] | None:
        found = [run for run in self.runs(cwd) if run["name"] == name]
        return found[0] if found else None

    # -- the ssh processes runctl started for this home ----------------------------------------

    @property
    def control_dir(self) -> Path:
        return self.home / "ssh"

    def ssh_processes(self, masters_only: bool = False) -> list[int]:
        """Live ssh clients started with this home's ControlPath (`-N` ones: master connections)."""
        marker = "ControlPath=%s/" % self.control_dir
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            argv = _cmdline(int(entry))
            if not argv or Path(argv[0]).name != "ssh" or not any(a.startswith(marker) for a in argv):
                continue
            if masters_only and "-N" not in argv:
                continue
            if _proc_alive(int(entry)):
                found.append(int(entry))
        return found

    def kill_masters(self, host: SshTestHost | None = None) -> list[int]:
        """SIGKILL the master connections (to `host` only, if given), as a dropped link would."""
        pids = [
            pid
            for pid in self.ssh_processes(masters_only=True)
            if host is None or (_cmdline(pid) or [""])[-1].split("@")[-1] == host.address
        ]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        poll(lambda: not any(_proc_alive(p) for p in pids), 5, "ssh masters to die")
        return pids

    def cleanup(self) -> None:
        for pid in self.ssh_processes():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.home, ignore_errors=True)


def make_project(parent: Path, name: str, files: dict[str, str] | None = None) -> Path:
    """A project root (pyproject.toml, no dependencies) holding train_stub.py and `files`."""
    root = parent / name
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = '%s'\nversion = '0'\n" % name)
    shutil.copy(REPO / "examples" / "train_stub.py", root / "train_stub.py")
    for rel, text in (files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def remote_project(host: SshTestHost, name: str) -> Path:
    """Where the default --remote-dir (~/runctl/<project-name>) lands on the host's disk."""
    return host.home / "runctl" / name


def read_run_id(proc: subprocess.Popen[str]) -> str:
    """The id from `ssh train --wait`'s "run ID (...) started on HOST" line (printed once launched)."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        match = re.match(r"run ([0-9a-f]{8}) \(", line)
        if match:
            return match.group(1)
    raise AssertionError("no run id in the output of ssh train:\n" + "".join(seen))


def kill_controller_once_logged(
    env: SshEnv, proc: subprocess.Popen[str], project: Path, needle: str, what: str
) -> dict[str, Any]:
    """SIGKILL `ssh train --wait` (`proc`) once its run's log on the host holds `needle`; the run's status
    as it was when the run was launched."""
    try:
        run = env.status(read_run_id(proc), project)
        log = Path(run["run_dir"]) / "training.log"
        poll(lambda: log.exists() and needle in log.read_text(), 20, what)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    return run


def numbered_lines(text: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r"(?m)^line (\d+)$", text)]


LINES_SCRIPT = """
import sys, time
n = int(sys.argv[1]); delay = float(sys.argv[2])
for i in range(1, n + 1):
    print("line %d" % i, flush=True)
    time.sleep(delay)
"""


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def fresh_env(ssh_hosts: SshHosts, tmp_path: Path) -> Iterator[Callable[..., SshEnv]]:
    """Factory for another user setup: new RUNCTL_HOME (no ssh master yet), own config."""
    made: list[SshEnv] = []

    def make(known_hosts_text: str | None = None, identities: list[Path] | None = None, tag: str = "x") -> SshEnv:
        env = SshEnv.create(
            list(ssh_hosts),
            tmp_path / "client",
            [ssh_hosts.client_key] if identities is None else identities,
            ssh_hosts.known_hosts.read_text() if known_hosts_text is None else known_hosts_text,
            tag="%s%d" % (tag, len(made)),
        )
        made.append(env)
        return env

    yield make
    for env in made:
        env.cleanup()


@pytest.fixture(scope="module")
def pathless_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshTestHost]:
    """A machine whose sessions find no programs at all (PATH=/nonexistent-bin): no python3."""
    with start_hosts(1, tmp_path_factory.mktemp("pathless"), extra_env_per_host=[{"PATH": "/nonexistent-bin"}]) as hs:
        yield hs[0]


# ---- train, follow, stop, checkpoints ------------------------------------------------------------


def test_train_wait_streams_log_and_downloads_checkpoints(sshenv: SshEnv, tmp_path: Path) -> None:
    host = sshenv.hosts[0]
    project = make_project(tmp_path, "s-wait")
    result = sshenv.cli("ssh", "train", sshenv.dest(host), "train_stub.py", "--wait", "--", *STUB_QUICK, cwd=project)
    assert result.code == 0, result.err
    assert "epoch 2/2 step 6 loss=" in result.out
    assert "Training complete: 2 epochs, 6 steps" in result.out
    assert "warning" not in result.err.lower()
    run_id = re.search(r"run ([0-9a-f]{8}) ", result.err).group(1)  # type: ignore[union-attr]
    assert "completed" in result.err_lines[-1]

    local = project / "checkpoints" / run_id
    assert sorted(p.name for p in local.iterdir()) == ["checkpoint_epoch_1.json", "checkpoint_epoch_2.json"]
    assert json.loads((local / "checkpoint_epoch_2.json").read_text())["step"] == 6

    run = sshenv.status(run_id, project)
    assert run["provider"] == "ssh"
    assert run["host"] == sshenv.dest(host)
    assert run["status"] == "completed" and run["exit_code"] == 0
    assert run["project_dir"] == str(remote_project(host, "s-wait"))
    assert (remote_project(host, "s-wait") / "checkpoints" / "checkpoint_epoch_2.json").is_file()


def test_detached_train_then_logs_wait_metrics_and_checkpoints(sshenv: SshEnv, tmp_path: Path) -> None:
    host = sshenv.hosts[1]
    project = make_project(tmp_path, "s-detached")
    args = ["--epochs", "2", "--steps-per-epoch", "5", "--delay", "0.1"]
    started = sshenv.cli("ssh", "train", sshenv.dest(host), "train_stub.py", "--", *args, cwd=project)
    assert started.code == 0, started.err
    run_id = started.out.strip()
    assert RUN_ID.match(run_id), started.out
    assert "runctl runs wait %s" % run_id in started.err
    assert sshenv.status(run_id, project)["status"] in ("running", "completed")

    logs = sshenv.cli("runs", "logs", run_id, "--follow", cwd=project)
    assert logs.code == 0, logs.err
    steps = [int(s) for s in re.findall(r"(?m)^epoch \d/2 step (\d+) loss=", logs.out)]
    assert steps == list(range(1, 11))
    assert logs.out.rstrip().endswith("final loss=0.100000")

    waited = sshenv.cli("runs", "wait", run_id, cwd=project)
    assert waited.code == 0, waited.err
    assert sorted(p.name for p in (project / "checkpoints" / run_id).iterdir()) == [
        "checkpoint_epoch_1.json",
        "checkpoint_epoch_2.json",
    ]

    metrics = sshenv.cli("runs", "metrics", run_id, "-o", "json", cwd=project)
    assert metrics.code == 0, metrics.err
    steps = [m["step"] for m in metrics.json]
    assert sorted(set(steps)) == list(range(1, 11))
    assert metrics.json[-1]["epoch"] == 2 and metrics.json[-1]["loss"] == pytest.approx(0.1)
    csv_out = sshenv.cli("runs", "metrics", run_id, "-o", "csv", cwd=project)
    assert csv_out.out.splitlines()[0].startswith("t,step,epoch,loss")
    assert len(csv_out.out.splitlines()) >= 11

    listing = sshenv.cli("checkpoint", "list", run_id, cwd=project)
    assert listing.code == 0, listing.err
    names = [line.split()[-1] for line in listing.out.splitlines()]
    assert set(names) == {"checkpoint_epoch_1.json", "checkpoint_epoch_2.json"}
    assert all(line.startswith("*") for line in listing.out.splitlines())
    as_json = sshenv.cli("checkpoint", "list", run_id, "-o", "json", cwd=project).json
    assert as_json["checkpoint_dir"] == str(remote_project(host, "s-detached") / "checkpoints")

    dest = tmp_path / "elsewhere"
    fetched = sshenv.cli("checkpoint", "download", run_id, "--dest", str(dest), cwd=project)
    assert fetched.code == 0, fetched.err
    assert fetched.out.strip() == str(dest)
    assert sorted(p.name for p in dest.iterdir()) == ["checkpoint_epoch_1.json", "checkpoint_epoch_2.json"]
    assert steps == list(range(1, 11)), "one metrics record per step (log-parsed and reported steps duplicate)"


def test_runs_stop_is_graceful_and_keeps_the_checkpoint(sshenv: SshEnv, tmp_path: Path) -> None:
    host = sshenv.hosts[0]
    project = make_project(tmp_path, "s-stop")
    args = ["--epochs", "3", "--steps-per-epoch", "50", "--delay", "0.05", "--checkpoint-interval", "10"]
    run_id = sshenv.start(host, "train_stub.py", *args, cwd=project)
    poll(lambda: (sshenv.status(run_id, project)["step"] or 0) >= 5, 20, "a few steps")

    stopped = sshenv.cli("runs", "stop", run_id, cwd=project)
    assert stopped.code == 0, stopped.err
    run = sshenv.status(run_id, project)
    assert run["status"] == "stopped" and run["termination_status"] == "user_stop"
    assert run["exit_code"] == 0, "the stub saw STOP_TRAINING and exited by itself, no SIGTERM needed"
    log = sshenv.cli("runs", "logs", run_id, cwd=project).out
    saved = re.search(r"Stop requested: saved checkpoint \S*/(checkpoint_epoch_\d+\.json)", log)
    assert saved, log[-500:]
    listing = sshenv.cli("checkpoint", "list", run_id, "-o", "json", cwd=project).json
    assert [f["path"] for f in listing["files"]] == [saved.group(1)]
    # The run has ended: like every end of a remote run, its checkpoints come home.
    local = project / "checkpoints" / run_id / saved.group(1)
    assert local.is_file(), "runs stop waited for the end but did not download the checkpoint"


# ---- host keys ---------------------------------------------------------------------------------------


def test_unknown_host_key_is_accepted_once_and_then_used(fresh_env: Callable[..., SshEnv], tmp_path: Path) -> None:
    first = fresh_env(known_hosts_text="")
    host = first.hosts[0]
    project = make_project(tmp_path, "s-hostkey")
    status = first.cli("ssh", "status", first.dest(host), cwd=project)
    assert status.code == 0, status.err
    host_key = host.known_hosts_line().split()[2]
    lines = first.known_hosts.read_text().splitlines()
    assert len(lines) == 1 and host_key in lines[0]

    # A later connection (new controller home: no master to reuse) checks against the stored key.
    second = dataclasses.replace(fresh_env(known_hosts_text=""), config=first.config, known_hosts=first.known_hosts)
    result = second.cli("ssh", "train", second.dest(host), "train_stub.py", "--wait", "--", *STUB_QUICK, cwd=project)
    assert result.code == 0, result.err
    assert first.known_hosts.read_text().splitlines() == lines


def test_wrong_host_key_is_refused_unless_insecure(
    ssh_hosts: SshHosts, fresh_env: Callable[..., SshEnv], tmp_path: Path
) -> None:
    host = ssh_hosts[1]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "imposter")], check=True)
    imposter = (tmp_path / "imposter.pub").read_text().split()[:2]
    where = host.known_hosts_line().split()[0]
    wrong = "%s %s %s\n" % (where, imposter[0], imposter[1])
    env = fresh_env(known_hosts_text=wrong)
    project = make_project(tmp_path, "s-wrongkey")

    refused = env.cli("ssh", "train", env.dest(host), "train_stub.py", "--wait", "--", *STUB_QUICK, cwd=project)
    assert refused.code == 4, refused.err
    assert "host key" in refused.err
    assert "ssh-keygen -R" in refused.err and "--insecure-host-key" in refused.err
    assert len(refused.err_lines) <= 2, refused.err
    assert env.runs(project) == []

    insecure = env.cli(
        "ssh", "train", env.dest(host), "train_stub.py", "--wait", "--insecure-host-key", "--", *STUB_QUICK,
        cwd=project,
    )  # fmt: skip
    assert insecure.code == 0, insecure.err
    assert "Training complete" in insecure.out
    assert env.known_hosts.read_text() == wrong, "--insecure-host-key must not touch known_hosts"


# ---- code sync -----------------------------------------------------------------------------------------


def _tree(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not str(p.relative_to(root)).startswith(".runctl")
    }


def test_code_sync_honours_ignore_files_and_includes(sshenv: SshEnv, tmp_path: Path) -> None:
    host = sshenv.hosts[1]
    files = {
        "ok.py": "print('ok')\n",
        ".gitignore": "*.log\nbuild/\n/rootonly.txt\n*.ckpt\n!important.log\n",
        "a.log": "ignored\n",
        "important.log": "re-included by the .gitignore negation\n",
        "build/out.bin": "ignored dir\n",
        "rootonly.txt": "anchored ignore\n",
        "sub/rootonly.txt": "not the anchored one\n",
        "sub/.gitignore": "secret.txt\n",
        "sub/secret.txt": "ignored by the subdir .gitignore\n",
        "sub/deep/secret.txt": "also ignored (pattern applies below sub/)\n",
        "sub/keep.txt": "kept\n",
        "secret.txt": "the subdir rule does not apply at the root\n",
        ".runctlignore": "notes/\n*.tmp\n",
        "notes/n.txt": "ignored by .runctlignore\n",
        "x.tmp": "ignored by .runctlignore\n",
        "weights.ckpt": "ignored, but --include'd\n",
        ".git/HEAD": "ref: refs/heads/main\n",
        "pkg/__pycache__/m.cpython-311.pyc": "bytecode\n",
    }
    project = make_project(tmp_path, "s-sync", files)
    result = sshenv.cli("ssh", "train", sshenv.dest(host), "ok.py", "--wait", "--include", "weights.ckpt", cwd=project)
    assert result.code == 0, result.err
    assert "synced" in result.err

    remote = _tree(remote_project(host, "s-sync"))
    for present in ("ok.py", "train_stub.py", "sub/keep.txt", "sub/rootonly.txt", "secret.txt", "weights.ckpt"):
        assert present in remote, present
    for absent in (
        "a.log", "build/out.bin", "rootonly.txt", "sub/secret.txt", "sub/deep/secret.txt", "notes/n.txt",
        "x.tmp", ".git/HEAD", "pkg/__pycache__/m.cpython-311.pyc",
    ):  # fmt: skip
        assert absent not in remote, absent
    # git semantics: `!important.log` re-includes a file an earlier pattern excluded.
    assert "important.log" in remote, ".gitignore negation (!pattern) is not honoured"


def test_resync_deletes_removed_files_but_never_remote_outputs(sshenv: SshEnv, tmp_path: Path) -> None:
    host = sshenv.hosts[0]
    agent_dir = host.home / ".runctl" / "agent"
    shutil.rmtree(agent_dir, ignore_errors=True)
    project = make_project(tmp_path, "s-resync", {"ok.py": "print('ok')\n", "old.py": "x = 1\n", "lib/u.py": ""})
    dest = sshenv.dest(host)

    first = sshenv.cli("ssh", "train", dest, "ok.py", "--wait", cwd=project)
    assert first.code == 0, first.err
    agents = list(agent_dir.glob("*.pyz"))
    assert len(agents) == 1, "the agent is shipped to ~/.runctl/agent/ on first use"
    shipped_at = agents[0].stat().st_mtime_ns

    remote = remote_project(host, "s-resync")
    assert (remote / "old.py").is_file()
    outputs = {
        "checkpoints/remote_only.pt": "written by a run on the host",
        "training_output/metrics.txt": "also written on the host",
        "data/shard0.bin": "staged data",
    }
    for rel, text in outputs.items():
        (remote / rel).parent.mkdir(parents=True, exist_ok=True)
        (remote / rel).write_text(text)
    (project / "old.py").unlink()
    shutil.rmtree(project / "lib")
    assert not (project / "checkpoints").exists() and not (project / "training_output").exists()

    second = sshenv.cli("ssh", "train", dest, "ok.py", "--wait", cwd=project)
    assert second.code == 0, second.err
    assert not (remote / "old.py").exists(), "a file deleted locally is deleted on the host"
    assert not (remote / "lib").exists()
    for rel, text in outputs.items():
        assert (remote / rel).read_text() == text, "%s was destroyed by the re-sync" % rel
    assert [p.stat().st_mtime_ns for p in agent_dir.glob("*.pyz")] == [shipped_at], "agent re-uploaded"


def test_big_sync_set_warns_naming_the_biggest_files(sshenv: SshEnv, tmp_path: Path) -> None:
    host = sshenv.hosts[1]
    project = make_project(tmp_path, "s-big", {"ok.py": "print('ok')\n"})
    subprocess.run(["truncate", "-s", "600M", str(project / "huge_dataset.bin")], check=True)
    subprocess.run(["truncate", "-s", "20M", str(project / "medium.bin")], check=True)
    try:
        result = sshenv.cli("ssh", "train", sshenv.dest(host), "ok.py", "--wait", cwd=project, timeout=120)
        assert result.code == 0, result.err
        warning = [line for line in result.err_lines if "warning" in line.lower()]
        assert len(warning) == 1, result.err
        assert "huge_dataset.bin" in warning[0] and "MB" in warning[0]
        assert warning[0].index("huge_dataset.bin") < warning[0].index("medium.bin")
        assert ".runctlignore" in warning[0]
    finally:
        shutil.rmtree(remote_project(host, "s-big"), ignore_errors=True)


# ---- environment setup, --setup, --data -------------------------------------------------------------


def build_wheel(directory: Path, version_value: str) -> Path:
    """A minimal pure-Python wheel `tinypkg` 0.1 (a zip with METADATA, WHEEL and RECORD)."""
    files = {
        "tinypkg/__init__.py": "VALUE = %r\n" % version_value,
        "tinypkg-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n",
        "tinypkg-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (name, digest, len(text.encode())))
    record.append("tinypkg-0.1.dist-info/RECORD,,")
    files["tinypkg-0.1.dist-info/RECORD"] = "\n".join(record) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / "tinypkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def _events(run: dict[str, Any]) -> list[str]:
    lines = (Path(run["run_dir"]) / "events.jsonl").read_text().splitlines()
    return [json.loads(line)["event"] for line in lines]


def test_requirements_venv_is_built_then_reused(sshenv: SshEnv, tmp_path: Path) -> None:
    host = sshenv.hosts[0]
    wheel = build_wheel(tmp_path / "wheels", "tiny-ok")
    project = make_project(
        tmp_path,
        "s-venv",
        {
            "requirements.txt": "tinypkg @ %s\n" % wheel.as_uri(),
            "use_tiny.py": "import tinypkg, sys\nprint('tinypkg says', tinypkg.VALUE, 'from', sys.prefix)\n",
        },
    )
    dest = sshenv.dest(host)
    started = time.monotonic()
    proc = sshenv.popen("ssh", "train", dest, "use_tiny.py", "--wait", "--name", "venv-first", cwd=project)

    def phase() -> str | None:
        if proc.poll() is not None:
            return "exited"
        run = sshenv.run_named("venv-first", project)
        return "setting_up" if run and run["status"] == "setting_up" else None

    runs_dir = remote_project(host, "s-venv") / ".runctl" / "runs"
    try:
        # Asked from another terminal once the agent has the run (its run dir exists on the host).
        poll(lambda: list(runs_dir.glob("*/status.json")) or proc.poll() is not None, 60, "the launch")
        seen = poll(phase, 60, "the run to show setting_up", interval=0.2)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    first_seconds = time.monotonic() - started
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert seen == "setting_up", "`runs list` never showed setting_up while the venv was built"
    assert sshenv.run_named("venv-first", project)["status"] == "completed"  # type: ignore[index]
    assert "building environment" in out and "requirements.txt" in out
    assert "Successfully installed tinypkg-0.1" in out
    assert out.index("Successfully installed") < out.index("tinypkg says tiny-ok")
    run = sshenv.run_named("venv-first", project)
    assert run is not None
    kinds = _events(run)
    assert "env_setup_started" in kinds and "env_setup_finished" in kinds
    assert kinds.index("env_setup_finished") < kinds.index("started")

    second = sshenv.cli("ssh", "train", dest, "use_tiny.py", "--wait", cwd=project)
    assert second.code == 0, second.err
    assert "reusing environment" in second.out
    assert "building environment" not in second.out
    assert "tinypkg says tiny-ok" in second.out
    assert second.seconds < first_seconds / 2, (second.seconds, first_seconds)


def test_setup_output_streams_while_it_runs(sshenv: SshEnv, tmp_path: Path) -> None:
    """A user following with --wait sees setup output as it happens, not all at once at the end."""
    host = sshenv.hosts[1]
    project = make_project(tmp_path, "s-setupstream", {"go.py": "print('script-started', flush=True)\n"})
    setup = "for i in 1 2 3 4 5; do echo setup-tick $i; sleep 0.5; done"
    proc = sshenv.popen("ssh", "train", sshenv.dest(host), "go.py", "--wait", "--setup", setup, cwd=project)
    arrivals: dict[str, float] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            arrivals.setdefault(line.strip(), time.monotonic())
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "setup-tick 1" in arrivals and "script-started" in arrivals, arrivals
    lead = arrivals["script-started"] - arrivals["setup-tick 1"]
    assert lead >= 1.0, "setup output reached the controller only when the script started (%.2fs early)" % lead


def test_stop_during_setup_never_starts_the_script(sshenv: SshEnv, tmp_path: Path) -> None:
    """A run stopped while its setup is still running ends stopped, and its script never runs."""
    host = sshenv.hosts[1]
    project = make_project(tmp_path, "s-stopsetup", {"go.py": "open('started.txt', 'w').write('x')\n"})
    started_run = sshenv.cli("ssh", "train", sshenv.dest(host), "go.py", "--setup", "sleep 60", cwd=project)
    assert started_run.code == 0, started_run.err
    run_id = started_run.out.strip()
    poll(lambda: sshenv.status(run_id, project)["status"] == "setting_up", 20, "the run to be setting up")
    started = time.monotonic()
    stopped = sshenv.cli("runs", "stop", run_id, cwd=project)
    assert stopped.code == 0, stopped.err  # the stop took effect
    assert time.monotonic() - started < 15, "the stop waited for the setup to finish"
    run = sshenv.status(run_id, project)
    assert run["status"] == "stopped" and run["termination_status"] == "user_stop"
    assert "not started" in run["termination_message"]
    assert not (remote_project(host, "s-stopsetup") / "started.txt").exists()


@pytest.mark.slow
def test_failing_requirement_fails_the_run_with_a_clear_message(sshenv: SshEnv, tmp_path: Path) -> None:
    host = sshenv.hosts[1]
    missing = tmp_path / "nowhere" / "tinypkg-0.1-py3-none-any.whl"
    project = make_project(
        tmp_path,
        "s-badreq",
        {"requirements.txt": "tinypkg @ %s\n" % missing.as_uri(), "use_tiny.py": "print('should not run')\n"},
    )
    result = sshenv.cli("ssh", "train", sshenv.dest(host), "use_tiny.py", "--wait", cwd=project)
    assert result.code == 1, result.err
    assert "should not run" not in result.out
    assert "tinypkg-0.1-py3-none-any.whl" in result.out, "pip's own error is in the log"
    assert "environment setup failed" in result.err_lines[-1]
    run_id = re.search(r"run ([0-9a-f]{8}) ", result.err).group(1)  # type: ignore[union-attr]
    run = sshenv.status(run_id, project)
    assert run["status"] == "failed"
    assert "environment setup failed" in run["termination_message"]
    assert "pip install" in run["termination_message"]


def test_data_is_staged_and_setup_output_is_logged(sshenv: SshEnv, tmp_path: Path) -> None:
    host = sshenv.hosts[0]
    dataset = tmp_path / "mnist_small"
    (dataset / "train").mkdir(parents=True)
    (dataset / "train" / "x.csv").write_text("1,2,3\n")
    (dataset / "labels.txt").write_text("cat\ndog\n")
    project = make_project(
        tmp_path,
        "s-data",
        {
            "read_data.py": """
            import os
            root = os.environ["RUNCTL_DATA_DIR"]
            print("DATA_DIR", root)
            print("labels", open(os.path.join(root, "mnist_small", "labels.txt")).read().split())
            print("x", open(os.path.join(root, "mnist_small", "train", "x.csv")).read().strip())
            """
        },
    )
    result = sshenv.cli(
        "ssh", "train", sshenv.dest(host), "read_data.py", "--wait", "--data", str(dataset),
        "--setup", "echo hello-setup", cwd=project,
    )  # fmt: skip
    assert result.code == 0, result.err
    remote = remote_project(host, "s-data")
    assert (remote / "data" / "mnist_small" / "train" / "x.csv").read_text() == "1,2,3\n"
    assert "DATA_DIR %s" % (remote / "data") in result.out
    assert "labels ['cat', 'dog']" in result.out and "x 1,2,3" in result.out
    assert "hello-setup" in result.out
    assert result.out.index("hello-setup") < result.out.index("DATA_DIR")


# ---- detached runs ---------------------------------------------------------------------------------------


def test_run_survives_killed_ssh_masters(fresh_env: Callable[..., SshEnv], tmp_path: Path) -> None:
    sshenv = fresh_env()
    host = sshenv.hosts[1]
    project = make_project(tmp_path, "s-masters", {"lines.py": LINES_SCRIPT})
    run_id = sshenv.start(host, "lines.py", "30", "0.1", cwd=project)
    assert sshenv.kill_masters(), "runctl keeps a master connection to the host"

    waited = sshenv.cli("runs", "wait", run_id, cwd=project)
    assert waited.code == 0, waited.err
    assert numbered_lines(sshenv.cli("runs", "logs", run_id, cwd=project).out) == list(range(1, 31))
    # A master that died leaves its socket behind; runctl must recover cleanly from that.
    assert "Control socket" not in waited.err, waited.err
    before = len(sshenv.ssh_processes(masters_only=True))
    for _ in range(3):
        assert sshenv.cli("ssh", "status", sshenv.dest(host), cwd=project).code == 0
    after = len(sshenv.ssh_processes(masters_only=True))
    assert after == before <= len(sshenv.hosts), "background ssh connections pile up: %d -> %d" % (before, after)


def test_controller_killed_mid_wait_then_runs_wait_reports_failure(sshenv: SshEnv, tmp_path: Path) -> None:
    host = sshenv.hosts[0]
    project = make_project(tmp_path, "s-ctlkill")
    args = ["--epochs", "1", "--steps-per-epoch", "40", "--delay", "0.1", "--fail-at-step", "25"]
    proc = sshenv.popen(
        "ssh", "train", sshenv.dest(host), "train_stub.py", "--wait", "--name", "ctlkill", "--", *args, cwd=project
    )
    run = kill_controller_once_logged(sshenv, proc, project, "step 5 ", "step 5")
    assert sshenv.status(run["run_id"], project)["status"] == "running"

    waited = sshenv.cli("runs", "wait", run["run_id"], cwd=project)
    assert waited.code == 1, waited.err
    final = sshenv.status(run["run_id"], project)
    assert final["status"] == "failed" and final["exit_code"] == 1
    assert "Simulated failure at step 25" in sshenv.cli("runs", "logs", run["run_id"], cwd=project).out


def test_runs_list_while_the_code_syncs_does_not_lose_the_run(sshenv: SshEnv, tmp_path: Path) -> None:
    """Another terminal asking `runs list` while `ssh train` is still syncing must not end the run."""
    host = sshenv.hosts[1]
    project = make_project(tmp_path, "s-synclist")
    (project / "model_init.bin").write_bytes(os.urandom(60 * 1024 * 1024))  # a sync that takes a moment
    proc = sshenv.popen(
        "ssh", "train", sshenv.dest(host), "train_stub.py", "--wait", "--name", "synclist", "--", *STUB_QUICK,
        cwd=project,
    )  # fmt: skip
    seen: list[str] = []
    try:

        def syncing_seen() -> bool:
            run = sshenv.run_named("synclist", project)
            if run:
                seen.append(run["status"])
            return bool(run) or proc.poll() is not None

        poll(syncing_seen, 30, "the run to be recorded")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        shutil.rmtree(remote_project(host, "s-synclist"), ignore_errors=True)
    assert seen, "the run was never listed"
    assert "lost" not in seen, "`runs list` during the code sync marked the run lost: %s" % seen
    assert proc.returncode == 0, err
    assert "Training complete" in out
    assert sshenv.run_named("synclist", project)["status"] == "completed"  # type: ignore[index]


def test_parallel_runs_on_two_hosts_from_a_shell_loop(fresh_env: Callable[..., SshEnv], tmp_path: Path) -> None:
    env = fresh_env()
    project = make_project(tmp_path, "s-parallel")
    outdir = tmp_path / "out"
    outdir.mkdir()
    first, second = env.hosts[0], env.hosts[1]
    script = textwrap.dedent(
        """
        for h in "$H0" "$H1"; do
          for i in 1 2 3; do
            $RUNCTL ssh train "$h" train_stub.py --name "par-$i" -- --epochs 1 --steps-per-epoch 8 --delay 0.05 \
              > "$OUT/$h-$i.id" 2> "$OUT/$h-$i.err" &
          done
        done
        wait
        """
    )
    extra = {"H0": env.dest(first), "H1": env.dest(second), "OUT": str(outdir), "RUNCTL": env.shell_command()}
    subprocess.run(["bash", "-c", script], cwd=project, env=env.environ(extra), timeout=90, check=True)

    expected_host: dict[str, str] = {}
    for host in (first, second):
        for i in (1, 2, 3):
            out = (outdir / ("%s-%d.id" % (env.dest(host), i))).read_text().strip()
            err = (outdir / ("%s-%d.err" % (env.dest(host), i))).read_text()
            assert RUN_ID.match(out), err
            assert "Traceback" not in err and "Control" not in err, err
            expected_host[out] = env.dest(host)
    assert len(expected_host) == 6, "run ids are distinct"

    def all_ended() -> dict[str, dict[str, Any]] | None:
        runs = {run["run_id"]: run for run in env.runs(project, include_all=False)}
        done = all(run["status"] in ("completed", "failed", "stopped", "lost") for run in runs.values())
        return runs if done else None

    listed = poll(all_ended, 60, "all six runs to end", interval=0.3)
    assert set(listed) == set(expected_host)
    for run_id, dest in expected_host.items():
        assert listed[run_id]["host"] == dest and listed[run_id]["status"] == "completed"
        log = (Path(listed[run_id]["run_dir"]) / "training.log").read_text()
        assert log.count("Training complete") == 1
    masters = env.ssh_processes(masters_only=True)
    assert len(masters) <= 2, "%d background ssh connections for 2 hosts: %s" % (
        len(masters),
        [" ".join(_cmdline(p)[-3:]) for p in masters],
    )


# ---- ssh exec / ssh status ----------------------------------------------------------------------------------


def test_ssh_exec_keeps_arguments_and_exit_code(sshenv: SshEnv, tmp_path: Path) -> None:
    dest = sshenv.dest(sshenv.hosts[0])
    echoed = sshenv.cli("ssh", "exec", dest, "--", "echo", "a b", "$(x)", cwd=tmp_path)
    assert (echoed.code, echoed.out) == (0, "a b $(x)\n"), echoed.err
    failed = sshenv.cli("ssh", "exec", dest, "--", "sh", "-c", "exit 7", cwd=tmp_path)
    assert failed.code == 7, failed.err
    home = sshenv.cli("ssh", "exec", dest, "--", "sh", "-c", 'echo "$HOME"; echo oops >&2', cwd=tmp_path)
    assert (home.code, home.out, home.err) == (0, "%s\n" % sshenv.hosts[0].home, "oops\n")


def test_ssh_status_reports_resources_and_active_runs(sshenv: SshEnv, tmp_path: Path) -> None:
    host = sshenv.hosts[1]
    project = make_project(tmp_path, "s-hoststatus")
    args = ["--epochs", "1", "--steps-per-epoch", "30", "--delay", "0.1"]
    run_id = sshenv.start(host, "train_stub.py", *args, cwd=project)
    try:
        text = sshenv.cli("ssh", "status", sshenv.dest(host), cwd=project)
        assert text.code == 0, text.err
        assert re.search(r"(?m)^cpu\s+\d+ cores", text.out)
        assert re.search(r"(?m)^memory\s+[\d.]+ GiB used of [\d.]+ GiB", text.out)
        assert re.search(r"(?m)^disk\s+[\d.]+ GiB free", text.out)
        assert "gpus" in text.out
        assert re.search(r"(?m)^%s\s.*running" % run_id, text.out), text.out

        facts = sshenv.cli("ssh", "status", sshenv.dest(host), "-o", "json", cwd=project).json
        assert int(facts["cores"]) >= 1
        assert int(facts["memtotal_kb"]) > 0 and int(facts["disk_avail_kb"]) > 0
        assert facts["gpus"] == []
        listed = {run["run_id"]: run for run in facts["runs"]}
        assert listed[run_id]["status"] == "running"
        assert all(run["host"] == sshenv.dest(host) for run in facts["runs"])
        other = sshenv.cli("ssh", "status", sshenv.dest(sshenv.hosts[0]), "-o", "json", cwd=project).json
        assert run_id not in [run["run_id"] for run in other["runs"]]
    finally:
        assert sshenv.cli("runs", "wait", run_id, cwd=project).code == 0


# ---- bad input -------------------------------------------------------------------------------------------


def _assert_short_error(result: Result, code: int, *needles: str) -> None:
    assert result.code == code, (result.code, result.err)
    assert 1 <= len(result.err_lines) <= 2, result.err
    for needle in needles:
        assert needle in result.err, (needle, result.err)


def test_unknown_host_name(sshenv: SshEnv, tmp_path: Path) -> None:
    project = make_project(tmp_path, "s-unknown")
    before = sshenv.runs(project)
    result = sshenv.cli("ssh", "train", "no-such-host.invalid", "train_stub.py", cwd=project, timeout=30)
    _assert_short_error(result, 4, "unknown host", "no-such-host.invalid")
    assert sshenv.runs(project) == before


def test_authentication_failure(fresh_env: Callable[..., SshEnv], tmp_path: Path) -> None:
    env = fresh_env(identities=[])
    key = tmp_path / "not_authorised"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    project = make_project(tmp_path, "s-auth")
    result = env.cli("ssh", "train", env.dest(env.hosts[0]), "train_stub.py", "-i", str(key), cwd=project)
    _assert_short_error(result, 4, "authentication")
    assert env.runs(project) == []


def test_host_without_python3(sshenv: SshEnv, pathless_host: SshTestHost, tmp_path: Path) -> None:
    project = make_project(tmp_path, "s-nopython")
    before = sshenv.runs(project)
    result = sshenv.cli(
        "ssh", "train", sshenv.dest(pathless_host), "train_stub.py", "-i", str(pathless_host.identity), cwd=project
    )
    _assert_short_error(result, 4, "no python3", "install Python")
    assert sshenv.runs(project) == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["{outside}"], "outside the project"),
        (["missing.py"], "does not exist"),
        (["train_stub.py", "-i", "/nonexistent/id_ed25519"], "identity file"),
    ],
)
def test_bad_script_or_key_is_a_usage_error(sshenv: SshEnv, tmp_path: Path, args: list[str], needle: str) -> None:
    project = make_project(tmp_path, "s-badinput")
    outside = tmp_path / "outside.py"
    outside.write_text("print('not in the project')\n")
    before = sshenv.runs(project)
    args = [arg.format(outside=outside) for arg in args]
    result = sshenv.cli("ssh", "train", sshenv.dest(sshenv.hosts[0]), *args, cwd=project)
    _assert_short_error(result, 2, needle)
    assert sshenv.runs(project) == before


@pytest.mark.parametrize("dest", ["-oProxyCommand=touch {marker}", "a b", "host:99999", "user@"])
def test_malformed_destination_is_a_usage_error(sshenv: SshEnv, tmp_path: Path, dest: str) -> None:
    project = make_project(tmp_path, "s-baddest")
    marker = tmp_path / "proxycommand-ran"
    dest = dest.format(marker=marker)
    train = sshenv.cli("ssh", "train", "--", dest, "train_stub.py", cwd=project)
    _assert_short_error(train, 2, "invalid")
    status = sshenv.cli("ssh", "status", "--", dest, cwd=project)
    _assert_short_error(status, 2, "invalid")
    assert not marker.exists(), "a DEST was passed to ssh as an option"


def test_remote_disk_full(sshenv: SshEnv, tmp_path: Path) -> None:
    host = sshenv.hosts[1]
    tiny = host.home / "tiny-disk"
    quoted = shlex.quote(str(tiny))
    mounted = host.run("mkdir -p %s && mount -t tmpfs -o size=1m tmpfs %s" % (quoted, quoted))
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs on the host: %s" % mounted.stderr.strip())
    try:
        project = make_project(tmp_path, "s-diskfull", {"ok.py": "print('ok')\n"})
        (project / "weights.bin").write_bytes(os.urandom(2 * 1024 * 1024))
        before = sshenv.runs(project)
        result = sshenv.cli("ssh", "train", sshenv.dest(host), "ok.py", "--remote-dir", str(tiny / "proj"), cwd=project)
        _assert_short_error(result, 4, "full")
        assert "disk" in result.err
        assert sshenv.runs(project) == before
    finally:
        host.run("umount %s" % shlex.quote(str(tiny)))
