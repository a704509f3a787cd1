"""The ssh transport: system OpenSSH and rsync, so ~/.ssh/config, agents, ProxyJump just work.

One multiplexed master connection per host (ControlMaster, sockets in a private directory) carries
every command. Log following runs as one long-lived agent command that streams frames; when the
link drops, it reconnects and resumes at the exact byte offset it had reached.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shlex
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import paths
from ..bundle import agent_artifact
from ..core.errors import HostError, UsageError, WriteFailed

if TYPE_CHECKING:
    from .base import CodeSync
    from .manifest import Plan
    from .sync import SyncResult

CONNECT_TIMEOUT = 10
FIRST_ROUND_TRIP = 4.0
STALL_SECONDS = 8.0
MIN_PYTHON = (3, 8)
_DEST = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d+))?$"
)


class HostTimeout(HostError):
    """A command over ssh got no answer in time."""


@dataclass(frozen=True)
class Dest:
    """`[user@]host[:port]` or an ssh_config alias."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Dest:
        match = _DEST.match(text.strip())
        if not match or text.startswith("-"):
            raise UsageError("invalid host %r" % text, "use [user@]host[:port] or a Host alias from ~/.ssh/config")
        port = int(match.group("port")) if match.group("port") else None
        if port is not None and not 0 < port < 65536:
            raise UsageError("invalid port in %r" % text, "ports are 1-65535")
        return cls(host=match.group("host").strip("[]"), user=match.group("user"), port=port)

    @property
    def target(self) -> str:
        return "%s@%s" % (self.user, self.host) if self.user else self.host

    @property
    def rsync_target(self) -> str:
        """rsync needs IPv6 addresses in brackets before the `:path`."""
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s@%s" % (self.user, host) if self.user else host

    def __str__(self) -> str:
        return self.target + (":%d" % self.port if self.port else "")


_CONTROL_DIRS: dict[str, Path] = {}
CONTROL_DIR_POINTER = "ssh-dir"  # in RUNCTL_HOME: the private /tmp directory made when the usual one was taken


def control_dir() -> Path:
    """A private directory for control sockets, short enough for the 108-byte socket path limit.

    It is `RUNCTL_HOME/ssh`, or for a long RUNCTL_HOME `/tmp/runctl-<uid>-<hash>`. A directory in
    /tmp is used only if it is verifiably ours (owned by us, 0700, not a symlink): another user may
    have created it first to catch our sockets and lock files. Otherwise a new one is made with
    mkdtemp and named in RUNCTL_HOME (private), so parallel runctl processes share it.
    """
    home = paths.home()
    found = _CONTROL_DIRS.get(str(home))
    if found is not None and _is_private_dir(found):
        return found
    preferred = home / "ssh"
    if len(str(preferred)) <= 60:
        found = _make_private(preferred) or _fallback_control_dir(home)
    else:
        digest = hashlib.sha256(str(home).encode()).hexdigest()[:10]
        found = _make_private(Path("/tmp") / ("runctl-%d-%s" % (os.getuid(), digest))) or _fallback_control_dir(home)
    _CONTROL_DIRS[str(home)] = found
    return found


def _is_private_dir(path: Path) -> bool:
    """Owned by us, mode 0700 or stricter, and a real directory (lstat: a symlink is never followed)."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def _make_private(path: Path) -> Path | None:
    """`path` created 0700, or found already ours and private; None when it exists as anything else."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    return path if _is_private_dir(path) else None


def _fallback_control_dir(home: Path) -> Path:
    """The private directory named in RUNCTL_HOME, else a new one from mkdtemp (then named there)."""
    import fcntl
    import tempfile

    from ..core.fsutil import atomic_write, read_text

    pointer = home / CONTROL_DIR_POINTER
    fd = os.open(str(pointer) + ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        named = (read_text(str(pointer)) or "").strip()
        if named and len(named) <= 60 and _is_private_dir(Path(named)):
            return Path(named)
        made = Path(tempfile.mkdtemp(prefix="runctl-%d-" % os.getuid(), dir="/tmp"))
        atomic_write(str(pointer), (str(made) + "\n").encode())
        return made
    finally:
        os.close(fd)


def classify_ssh_error(dest: str, stderr: str) -> HostError:
    """One actionable line for the usual ways an ssh connection fails."""
    text = stderr.strip()
    last = text.splitlines()[-1] if text else "no error output"
    if "Could not resolve hostname" in text:
        return HostError("unknown host %s: %s" % (dest, last), "check the name, or add a Host entry to ~/.ssh/config")
    # ssh's own refusal reads "Permission denied (publickey,...)"; a remote command's EACCES is not one.
    if "Permission denied (" in text or "Too many authentication failures" in text:
        return HostError(
            "authentication failed for %s" % dest, "pass -i/--identity KEY, or load the key into ssh-agent"
        )
    if "Host key verification failed" in text or "IDENTIFICATION HAS CHANGED" in text:
        return HostError(
            "host key of %s does not match known_hosts" % dest,
            "if the host was rebuilt: ssh-keygen -R HOST; to skip the check: --insecure-host-key",
        )
    if any(s in text for s in ("timed out", "No route to host", "Network is unreachable", "Connection refused")):
        return HostError(
            "cannot reach %s: %s" % (dest, last), "check that the host is up and its address and port are right"
        )
    return HostError("ssh to %s failed: %s" % (dest, last), "try: ssh %s true" % dest)


@dataclass
class HostInfo:
    home: str
    python: str | None
    agent_present: bool
    has_uv: bool


@dataclass
class SshTransport:
    dest: Dest
    identity: str | None = None
    insecure_host_key: bool = False
    connect_timeout: int = CONNECT_TIMEOUT
    name: str = "ssh"
    # The name its host key is kept under in known_hosts (OpenSSH HostKeyAlias). Cloud hosts use
    # their instance id: a new instance reusing an address then never trips over the old key.
    host_key_alias: str | None = None
    _home: str | None = field(default=None, repr=False)
    _agent_path: str | None = field(default=None, repr=False)
    _master_ok: bool = field(default=False, repr=False)
    _user_strict: bool | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return str(self.dest)

    # ---- ssh plumbing --------------------------------------------------------------------

    @property
    def control_path(self) -> Path:
        """One socket per destination and credentials: a strict and an insecure session never share one."""
        key = "%s|%s|%s|%s" % (self.dest, self.identity, self.insecure_host_key, os.environ.get("RUNCTL_SSH_CONFIG"))
        if self.host_key_alias:  # another host key name: another connection (none of plain SSH changes)
            key += "|" + self.host_key_alias
        return control_dir() / hashlib.sha256(key.encode()).hexdigest()[:20]

    def user_sets_host_key_policy(self) -> bool:
        """Whether the user's ssh config chooses StrictHostKeyChecking for this host (then it is kept)."""
        if self._user_strict is None:
            argv = ["ssh", "-G", self.dest.target]
            config = os.environ.get("RUNCTL_SSH_CONFIG")
            if config:
                argv[1:1] = ["-F", config]
            proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            value = ""
            for line in proc.stdout.splitlines():
                if line.lower().startswith("stricthostkeychecking "):
                    value = line.split(None, 1)[1].strip().lower()
            # "ask" is OpenSSH's default, i.e. the user chose nothing; anything else is deliberate.
            self._user_strict = value not in ("", "ask")
        return self._user_strict

    def ssh_options(self) -> list[str]:
        opts: list[str] = []
        config = os.environ.get("RUNCTL_SSH_CONFIG")
        if config:
            opts += ["-F", config]
        opts += [
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=%d" % self.connect_timeout,
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
            "-o", "ControlPath=%s" % self.control_path,
        ]  # fmt: skip
        if self.insecure_host_key:
            opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
        elif not self.user_sets_host_key_policy():
            opts += ["-o", "StrictHostKeyChecking=accept-new"]
        if self.host_key_alias and not self.insecure_host_key:
            opts += ["-o", "HostKeyAlias=%s" % self.host_key_alias]
        if self.dest.port:
            opts += ["-p", str(self.dest.port)]
        if self.identity:
            opts += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        return opts

    def ssh_argv(self, command: str, master: str = "no") -> list[str]:
        # `--` ends ssh's options: a remote command starting with "-" is never read as one.
        return ["ssh", *self.ssh_options(), "-o", "ControlMaster=%s" % master, "--", self.dest.target, command]

    def rsync_rsh(self) -> str:
        return shlex.join(["ssh", *self.ssh_options(), "-o", "ControlMaster=no"])

    def ensure_master(self) -> None:
        """Start the shared connection if it is not up; its stdio never holds our pipes open.

        Checked once per transport; a command failing at the ssh level (exit 255) clears the mark.
        """
        if self._master_ok:
            return
        import fcntl

        # Parallel runctl processes to one host share a single master: whoever holds the lock
        # starts it, the others find it up when they get the lock.
        # O_NOFOLLOW: a symlink planted as the lock file is refused, never followed and truncated.
        lock = os.open(str(self.control_path) + ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.master_alive():
                self._master_ok = True
                return
            if self.control_path.exists():
                self.control_path.unlink()  # a master killed uncleanly leaves a dead socket behind
            try:
                proc = subprocess.run(
                    ["ssh", *self.ssh_options(), "-o", "ControlMaster=yes", "-o", "ControlPersist=300", "-f", "-N",
                     "--", self.dest.target],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    timeout=self.connect_timeout + 30,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                raise HostTimeout(
                    "connecting to %s timed out" % self.dest, "check that the host is up: ssh %s true" % self.dest
                ) from None
        finally:
            os.close(lock)
        if proc.returncode != 0:
            raise classify_ssh_error(str(self.dest), proc.stderr.decode("utf-8", "replace"))
        self._master_ok = True

    def responsive(self) -> bool:
        """A real round trip over the shared connection, bounded (a dead link still passes `-O check`)."""
        try:
            self.run("true", timeout=FIRST_ROUND_TRIP)
        except HostError:
            return False
        return True

    def master_alive(self) -> bool:
        if not self.control_path.exists():
            return False
        check = subprocess.run(
            ["ssh", *self.ssh_options(), "-O", "check", "--", self.dest.target],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return check.returncode == 0

    def drop_master(self) -> None:
        self._master_ok = False
        subprocess.run(
            ["ssh", *self.ssh_options(), "-O", "exit", "--", self.dest.target],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def run(
        self, command: str, input: bytes | None = None, timeout: float | None = 120, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a shell command on the host; ssh-level failures become HostError (exit 4)."""
        self.ensure_master()
        try:
            proc = subprocess.run(
                self.ssh_argv(command),
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise HostTimeout(
                "ssh to %s timed out after %gs" % (self.dest, timeout or 0),
                "check that the host is up: ssh %s true" % self.dest,
            ) from None
        if proc.returncode == 255:
            self._master_ok = False
            raise classify_ssh_error(str(self.dest), proc.stderr.decode("utf-8", "replace"))
        if check and proc.returncode != 0:
            raise HostError(
                "command failed on %s (exit %d): %s"
                % (self.dest, proc.returncode, proc.stderr.decode("utf-8", "replace").strip()[-400:])
            )
        return proc

    # ---- bootstrap -----------------------------------------------------------------------

    def connect(self) -> HostInfo:
        """One round trip: home, python3 version, whether this agent version is already there."""
        artifact = agent_artifact()
        script = (
            'printf "home=%s\\n" "$HOME"; '
            "if command -v python3 >/dev/null 2>&1; then "
            'python3 -c \'import sys; print("python=" + ".".join(map(str, sys.version_info[:3])))\'; '
            "else echo python=none; fi; "
            'test -f "$HOME/.runctl/agent/' + artifact.name + '" && echo agent=present; '
            "command -v uv >/dev/null 2>&1 && echo uv=yes; true"
        )
        try:
            # A master whose link died still answers `-O check`; a bounded first round trip finds out
            # in seconds instead of waiting for the keepalive to give up.
            proc = self.run(script, timeout=FIRST_ROUND_TRIP)
        except HostTimeout:
            self.drop_master()
            proc = self.run(script, timeout=self.connect_timeout + 30)
        out = proc.stdout.decode("utf-8", "replace")
        facts = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        home = facts.get("home", "").strip()
        if not home:
            raise HostError("could not read $HOME on %s" % self.dest)
        self._home = home
        python = facts.get("python", "none").strip()
        info = HostInfo(home, None if python == "none" else python, facts.get("agent") == "present", "uv" in facts)
        if info.python is None:
            raise HostError(
                "no python3 on %s" % self.dest,
                "install Python >= 3.8 there (e.g. apt-get install -y python3), then retry",
            )
        parsed = re.match(r"^(\d+)\.(\d+)(?:\.\d+)?$", info.python)
        if parsed is None:
            raise HostError(
                "cannot tell the python3 version on %s: it printed %r" % (self.dest, info.python[:200]),
                "check that `python3 -c 'import sys; print(sys.version)'` works there (no wrapper or shell "
                "profile printing to stdout)",
            )
        version = (int(parsed.group(1)), int(parsed.group(2)))
        if version < MIN_PYTHON:
            raise HostError(
                "python3 on %s is %s; runctl needs >= 3.8" % (self.dest, info.python),
                "install a newer python3 on the host",
            )
        self._agent_path = "%s/.runctl/agent/%s" % (home, artifact.name)
        if not info.agent_present:
            self.ship_agent(artifact)
        return info

    def ship_agent(self, artifact: Path) -> None:
        """Upload the agent zip once per version (content-hashed name; reused while unchanged)."""
        assert self._agent_path is not None
        target = shlex.quote(self._agent_path)
        tmp = shlex.quote(self._agent_path + ".tmp")
        proc = self.run(
            'mkdir -p "$HOME/.runctl/agent" && cat > %s && mv -f %s %s || { rm -f %s; exit 1; }'
            % (tmp, tmp, target, tmp),
            input=artifact.read_bytes(),
            check=False,
        )
        if proc.returncode != 0:
            error = proc.stderr.decode("utf-8", "replace")
            if "No space left on device" in error or "Disk quota exceeded" in error:
                raise WriteFailed("disk_full", os.path.dirname(self._agent_path), str(self.dest))
            if "Read-only file system" in error:
                raise WriteFailed("read_only", os.path.dirname(self._agent_path), str(self.dest))
            raise HostError("could not install the runctl agent on %s: %s" % (self.dest, error.strip()[-400:]))

    @property
    def home(self) -> str:
        if self._home is None:
            self.connect()
        assert self._home is not None
        return self._home

    def agent(self, *args: str) -> str:
        if self._agent_path is None:
            self.connect()
        assert self._agent_path is not None
        # -S: the agent needs only the standard library, so skip site-packages processing.
        return "python3 -S %s %s" % (shlex.quote(self._agent_path), shlex.join(args))

    def agent_json(self, *args: str, input: bytes | None = None, timeout: float = 120) -> dict[str, Any]:
        proc = self.run(self.agent(*args), input=input, timeout=timeout, check=False)
        lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
        try:
            result: dict[str, Any] = json.loads(lines[-1])
        except (ValueError, IndexError):
            raise HostError(
                "the runctl agent on %s failed: %s"
                % (self.dest, proc.stderr.decode("utf-8", "replace").strip()[-400:] or "no output")
            ) from None
        refused = result.get("write_error")
        if isinstance(refused, dict) and args[0] != "launch":
            # The host refused a write (disk full, read-only): a host error, never a run dir gone.
            raise WriteFailed(str(refused.get("kind")), str(refused.get("path")), str(self.dest))
        return result

    def expand(self, path: str) -> str:
        """A remote path with `~` resolved against the host's home."""
        if path == "~" or path.startswith("~/"):
            return self.home + path[1:]
        if not path.startswith("/"):
            return self.home + "/" + path
        return path

    # ---- Transport interface -------------------------------------------------------------

    def bootstrap(self, spec: dict[str, Any]) -> None:
        """Nothing beyond connect's agent install: the agent builds the project's env at launch."""

    def sync_code(self, job: CodeSync) -> SyncResult:
        from .sync import sync_code

        return sync_code(self, job.local_root, job.remote_dir, job.includes, job.protect, job.project, job.adopt)

    def stage_data(self, local_paths: list[Path], remote_data_dir: str) -> None:
        from .sync import stage_data

        stage_data(self, local_paths, remote_data_dir)

    def list_checkpoints(self, run_dir: str) -> dict[str, Any]:
        return self.agent_json("checkpoints", run_dir)

    def download(self, remote_dir: str, paths: list[str], target: Path, progress: bool) -> Plan:
        from .sync import download

        return download(self, remote_dir, paths, target, progress)

    def digests(self, run_dir: str, base: str, paths: list[str]) -> dict[str, Any]:
        return self.agent_json("digests", run_dir, "--base", base, input=json.dumps(paths).encode())

    def on_end_claim(self, run_dir: str) -> dict[str, Any]:
        return self.agent_json("on-end-claim", run_dir, "--by", "controller")

    def s3_proof(self, run_dir: str, wait: float) -> dict[str, Any]:
        return self.agent_json("s3-proof", run_dir, "--wait", repr(float(wait)), timeout=wait + 60)

    def on_end_result(self, run_dir: str, result: dict[str, Any]) -> dict[str, Any]:
        return self.agent_json("on-end-result", run_dir, "--json", json.dumps(result, sort_keys=True))

    def launch(self, run_dir: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.agent_json("launch", run_dir, "--spec-stdin", input=json.dumps(spec).encode(), timeout=3600)

    def probe(self, run_dir: str) -> dict[str, Any]:
        return self.agent_json("probe", run_dir)

    def request_stop(self, run_dir: str, grace: float | None, message: str) -> dict[str, Any]:
        args = ["stop", run_dir, "--message", message]
        if grace is not None:
            args += ["--grace", str(grace)]
        return self.agent_json(*args)

    def read_file(self, path: str, tail: int | None = None, start: int | None = None) -> bytes | None:
        command = "cat %s" % shlex.quote(path)
        if tail is not None:
            command = "tail -c %d %s" % (tail, shlex.quote(path))
        elif start:
            command = "tail -c +%d %s" % (int(start) + 1, shlex.quote(path))
        proc = self.run(command, check=False)
        return proc.stdout if proc.returncode == 0 else None

    def follow(self, run_dir: str, offset: int, seq: int) -> Iterator[tuple[str, Any]]:
        """Frames from the agent's `follow`; on a dropped link, reconnect and resume at `offset`."""
        if offset < 0:
            size = self.run("stat -c %%s %s 2>/dev/null || echo 0" % shlex.quote(run_dir + "/training.log"))
            offset = int(size.stdout.decode().strip() or 0)
        backoff = 0.5
        while True:
            try:
                self.ensure_master()
            except HostError as exc:
                yield "reconnecting", {"error": exc.message}
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            command = self.agent("follow", run_dir, "--offset", str(offset), "--seq", str(seq), "--heartbeat", "2")
            proc = subprocess.Popen(
                self.ssh_argv(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            assert proc.stdout is not None
            try:
                for kind, payload in _frames(proc.stdout.fileno(), offset):
                    backoff = 0.5
                    if kind == "log":
                        start, data = payload
                        offset = start + len(data)
                        yield "log", data
                    elif kind in ("status", "end", "gone"):
                        seq = max(seq, int(payload.get("seq", 0)))
                        yield kind, payload
                        if kind != "status":
                            return
                    else:
                        yield kind, payload
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            assert proc.stderr is not None
            error = proc.stderr.read().decode("utf-8", "replace").strip()
            proc.stderr.close()
            if proc.returncode not in (0, 255, -9):
                # The agent command itself failed on the host: retrying would only repeat it.
                raise HostError("following the run on %s failed: %s" % (self.dest, error[-400:] or proc.returncode))
            # The stream ended without an end frame: the link dropped, or the shared connection went
            # stale. Replace the connection only if it no longer answers; others may be using it.
            if not self.responsive():
                self.drop_master()
            yield "reconnecting", {"offset": offset}
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "ssh",
            "host": self.dest.host,
            "user": self.dest.user,
            "port": self.dest.port,
            "identity": self.identity,
            "insecure_host_key": self.insecure_host_key,
            "home": self._home,
            "agent_path": self._agent_path,
            "host_key_alias": self.host_key_alias,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SshTransport:
        transport = cls(
            Dest(host=data["host"], user=data.get("user"), port=data.get("port")),
            identity=data.get("identity"),
            insecure_host_key=bool(data.get("insecure_host_key")),
            host_key_alias=data.get("host_key_alias"),
        )
        transport._home = data.get("home")
        transport._agent_path = data.get("agent_path")
        return transport


def _frames(fd: int, offset: int) -> Iterator[tuple[str, Any]]:
    """Parse the agent's frames; overlapping log bytes (after a reconnect) are trimmed, not repeated.

    Stops (without an end frame) at EOF or when nothing, not even a heartbeat, arrived for
    STALL_SECONDS: a silent link is treated as a dropped one.
    """
    buffer = b""
    while True:
        newline = buffer.find(b"\n")
        if newline < 0:
            ready, _, _ = select.select([fd], [], [], STALL_SECONDS)
            if not ready:
                return
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            buffer += chunk
            continue
        header, rest = buffer[:newline], buffer[newline + 1 :]
        tag = header[:1]
        if tag == b"L":
            _, start_text, size_text = header.split(b" ")
            start, size = int(start_text), int(size_text)
            while len(rest) < size:
                ready, _, _ = select.select([fd], [], [], STALL_SECONDS)
                chunk = os.read(fd, 1 << 16) if ready else b""
                if not chunk:
                    return
                rest += chunk
            data, buffer = rest[:size], rest[size:]
            if start + size <= offset:
                continue
            if start < offset:
                data, start = data[offset - start :], offset
            offset = start + len(data)
            yield "log", (start, data)
        else:
            buffer = rest
            if tag == b"H":
                yield "heartbeat", None
            elif tag in (b"S", b"E", b"G"):
                payload = json.loads(header[2:].decode("utf-8", "replace"))
                yield {b"E": "end", b"S": "status", b"G": "gone"}[tag], payload
