"""Real OpenSSH test hosts for the test-suite.

runctl talks to remote machines only through ``ssh`` and ``rsync``; mocking those would hide exactly
the failures the tool exists to handle (lost links, dead daemons, strict host keys, missing
interpreters).  So tests get real ``sshd`` processes instead:

* Each host has its own directory (``root_dir``) standing in for its disk, its own host key,
  config, log and ``HOME`` (``root_dir/home``, set for every session with ``SetEnv``).
* As root, and when ``ip netns add`` works, each host lives in its own network namespace behind a
  veth pair with an address of its own (``10.231.K.2``, port 22), so a test can cut its link.
  Otherwise each host is an sshd on ``127.0.0.1`` with a free port.
* All hosts of one :func:`start_hosts` call share one client key pair.
* As root, each host also lets in a second, unprivileged Linux user (:data:`SECOND_USER`, made with
  ``useradd`` if missing) whose ``HOME`` is a directory of this host's own (``second_home``),
  holding canary files (:data:`SECOND_USER_CANARIES`) and a sibling runctl project ``~/runctl/other``.

Everything started here is torn down by :meth:`SshHosts.teardown`, by an ``atexit`` hook, and, for
namespaces left behind by a process that died, by the next :func:`start_hosts` call.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import fcntl
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

SSHD = "/usr/sbin/sshd"
APT_PACKAGES = ("openssh-server", "rsync")
NETNS_PREFIX = "rctest"
SUBNET_PREFIX = "10.231"
SSH_PORT_IN_NETNS = 22
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
LINK_UP_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1
# A second, unprivileged account every host (started as root) also accepts: runctl connects as it
# to prove it never touches what it did not create in a real user's home.
SECOND_USER = "rctest"

_NETNS_RE = re.compile(rf"^{NETNS_PREFIX}-(\d+)-(\w+)$")
# Host-side veth names: "rct<pid>h<index>" (at most 15 characters, the kernel's limit).
_VETH_RE = re.compile(r"^rct(\d+)h(\d+)$")


class SshHostError(RuntimeError):
    """A test host could not be set up, started or stopped."""


# --------------------------------------------------------------------------------------------------
# Packages


def _missing_packages() -> list[str]:
    missing = []
    if not os.access(SSHD, os.X_OK):
        missing.append("openssh-server")
    if shutil.which("rsync") is None:
        missing.append("rsync")
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        missing.append("openssh-client")
    return missing


def ensure_ssh_packages() -> None:
    """Make sure ``sshd``, ``ssh``, ``ssh-keygen`` and ``rsync`` are installed.

    The test command has to install what it needs itself (fresh CI machines have no sshd), so as
    root this runs ``apt-get update`` and ``apt-get install openssh-server rsync``.  Installing does
    not start the system sshd; every test host runs its own.  Raises :class:`SshHostError` when the
    tools are missing and cannot be installed.
    """
    missing = _missing_packages()
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SshHostError(
            f"missing {', '.join(missing)} and cannot install them (need root and apt-get); "
            f"run: apt-get update && apt-get install -y {' '.join(APT_PACKAGES)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Another test process may be installing at the same moment: wait for dpkg's lock, don't fail.
    lock_wait = ["-o", "DPkg::Lock::Timeout=300"]
    for cmd in (
        ["apt-get", "-qq", *lock_wait, "update"],
        ["apt-get", "-qq", "-y", *lock_wait, "install", *APT_PACKAGES],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            raise SshHostError(f"{shlex.join(cmd)} failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}")
    still_missing = _missing_packages()
    if still_missing:
        raise SshHostError(f"still missing after apt-get install: {', '.join(still_missing)}")


# --------------------------------------------------------------------------------------------------
# Small process helpers


def _run(cmd: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise SshHostError(f"{shlex.join(cmd)} failed with exit code {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie.

    Daemonised sshd processes are re-parented to PID 1; in a container PID 1 may never reap them,
    so a killed sshd can stay a zombie forever.  A zombie holds no port and runs nothing: count it
    as gone.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    # The state follows the command name, which is in parentheses and may itself contain them.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def _wait_gone(pids: Sequence[int], timeout: float, reaped: bool = False) -> bool:
    """Wait until no pid is alive (or, with ``reaped``, until none exists even as a zombie)."""
    deadline = time.monotonic() + timeout
    while True:
        if reaped:
            if not any(Path(f"/proc/{pid}").exists() for pid in pids):
                return True
        elif not any(_pid_alive(pid) for pid in pids):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _parents() -> dict[int, int]:
    """pid -> parent pid for every process (from /proc, no psutil needed)."""
    parents = {}
    for pid in _all_pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        parents[pid] = int(stat.rsplit(")", 1)[-1].split()[1])
    return parents


def _descendants(root_pid: int) -> list[int]:
    """All descendants of ``root_pid``."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    todo = [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _ssh_session_pids(home: str) -> list[int]:
    """Processes started by an ssh session (SSH_CONNECTION set) whose environment has HOME=home.

    /proc/PID/environ is the environment at exec time, so this finds a session's commands even
    after they were re-parented; local test processes lack SSH_CONNECTION and are never matched.
    """
    wanted = f"HOME={home}".encode()
    found = []
    for pid in _all_pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in environ and any(item.startswith(b"SSH_CONNECTION=") for item in environ):
            found.append(pid)
    return found


def _netns_pids(netns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", netns], check=False)
    return [int(line) for line in proc.stdout.split() if line.isdigit()]


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, even by SIGKILL.

    Linux sends it when the creating *thread* exits, so start hosts from the main thread.
    """
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _tcp_banner_ok(address: str, port: int, timeout: float = 1.0) -> bool:
    """True when something at address:port accepts TCP and greets with an SSH banner."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def _free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path, comment: str) -> None:
    """Create an ed25519 key pair at ``path`` (private, mode 0600) and ``path.pub``."""
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def _config_value(value: str) -> str:
    """Quote a value for sshd_config, whose parser understands double quotes but no escapes we trust."""
    if any(ch in value for ch in '"\n\r\\'):
        raise SshHostError(f"unsupported character in sshd_config value: {value!r}")
    return f'"{value}"'


_SSHD_OPTION_SUPPORT: dict[str, bool] = {}


def _sshd_supports(option_line: str, scratch_dir: Path) -> bool:
    """Whether this sshd accepts a config line (options differ between OpenSSH releases)."""
    if option_line not in _SSHD_OPTION_SUPPORT:
        key = scratch_dir / "probe_host_key"
        if not key.exists():
            _keygen(key, "probe")
        cfg = scratch_dir / "probe_sshd_config"
        cfg.write_text(f"HostKey {key}\n{option_line}\n")
        ok = _run([SSHD, "-t", "-f", str(cfg)], check=False).returncode == 0
        _SSHD_OPTION_SUPPORT[option_line] = ok
    return _SSHD_OPTION_SUPPORT[option_line]


# --------------------------------------------------------------------------------------------------
# The second (unprivileged) user

# What a real user's home holds and a tool must never destroy; ~/.ssh/authorized_keys gets the
# test client's key, so losing it also locks the tests out, as it would lock out the user.
SECOND_USER_CANARIES = {
    ".bashrc": 'cd "$HOME" 2>/dev/null || true\n# canary: the user\'s own .bashrc\n',
    ".profile": "# canary: the user's own .profile\n",
    "notes.txt": "canary: a file of the user's in their home\n",
    "runctl/other/train.py": "print('the sibling project')\n",
    "runctl/other/.runctl/owner.json": '{"project": "other", "tool": "runctl", "version": 1}\n',
}


def ensure_second_user() -> tuple[int, int] | None:
    """(uid, gid) of :data:`SECOND_USER`, created with ``useradd`` if missing; None when not root."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        return None
    import pwd

    with _subnet_lock():  # another test process may be adding it at the same moment
        try:
            entry = pwd.getpwnam(SECOND_USER)
        except KeyError:
            # Password "*": none can be typed, but the account is not locked ("!"), which sshd
            # (without PAM) would refuse even for key logins.
            _run(["useradd", "--create-home", "--shell", "/bin/bash", "--password", "*", SECOND_USER])
            entry = pwd.getpwnam(SECOND_USER)
        if _shadow_password(SECOND_USER).startswith("!"):
            _run(["usermod", "--password", "*", SECOND_USER])
    return entry.pw_uid, entry.pw_gid


def _shadow_password(user: str) -> str:
    try:
        lines = Path("/etc/shadow").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        name, _, rest = line.partition(":")
        if name == user:
            return rest.split(":", 1)[0]
    return ""


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(base, name), uid, gid)


# --------------------------------------------------------------------------------------------------
# One host


@dataclasses.dataclass(eq=False)
class SshTestHost:
    """One real sshd standing in for a remote machine.

    Files live under ``root_dir``: ``home/`` is the host's ``HOME`` (and the working directory of
    every shell session), ``sshd/`` holds its key, config, pid file and log.  Build hosts with
    :func:`start_hosts`; it also calls :meth:`prepare`.
    """

    name: str
    address: str
    port: int
    root_dir: Path
    identity: Path
    user: str = "root"
    netns: str | None = None
    extra_env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    veth_host: str | None = None
    veth_ns: str | None = None
    gateway: str | None = None
    """The test machine's address as seen from inside the host (netns only): serve things here."""
    second_home: Path | None = None
    """HOME of :data:`SECOND_USER` on this host (outside the root-only temp dir), when root."""
    _proc: subprocess.Popen[bytes] | None = dataclasses.field(default=None, init=False, repr=False)
    poweroff_fake: Path | None = None
    """Set by :meth:`enable_poweroff_fake`: the fake bind-mounted over the power-off path."""

    @property
    def home(self) -> Path:
        return self.root_dir / "home"

    @property
    def sshd_dir(self) -> Path:
        return self.root_dir / "sshd"

    @property
    def config_path(self) -> Path:
        return self.sshd_dir / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.sshd_dir / "ssh_host_ed25519_key"

    @property
    def pid_file(self) -> Path:
        return self.sshd_dir / "sshd.pid"

    @property
    def log_file(self) -> Path:
        return self.sshd_dir / "sshd.log"

    @property
    def authorized_keys(self) -> Path:
        return self.sshd_dir / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        """A known_hosts file holding this host's key, for ``StrictHostKeyChecking=yes``."""
        return self.sshd_dir / "known_hosts"

    @property
    def dest(self) -> str:
        return f"{self.user}@{self.address}"

    @property
    def second_dest(self) -> str:
        """``rctest@ADDRESS``: the unprivileged user (needs root to have made it; see second_home)."""
        if self.second_home is None:
            raise SshHostError(f"{self.name}: no second user (hosts started as root have one)")
        return f"{SECOND_USER}@{self.address}"

    def second_canaries(self) -> dict[str, str]:
        """Files of the second user's home that must keep this content: path -> text."""
        assert self.second_home is not None
        return {rel: (self.second_home / rel).read_text() for rel in SECOND_USER_CANARIES} | {
            ".ssh/authorized_keys": (self.second_home / ".ssh" / "authorized_keys").read_text()
        }

    def _prepare_second_user(self, client_public_key: str) -> None:
        ids = ensure_second_user()
        if ids is None:
            return
        if self.second_home is None:
            # pytest's temp dirs are root-only (0700): the user's home must live where it can reach.
            self.second_home = Path(tempfile.mkdtemp(prefix=f"rctest-home-{self.name}-", dir="/tmp"))
        for rel, text in SECOND_USER_CANARIES.items():
            path = self.second_home / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        ssh_dir = self.second_home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(client_public_key.strip() + "\n")
        _chown_tree(self.second_home, *ids)
        self.second_home.chmod(0o755)

    # -- client side -------------------------------------------------------------------------------

    def known_hosts_line(self) -> str:
        """This host's known_hosts entry (``[addr]:port`` form when the port is not 22)."""
        key_type, key_b64 = self.host_key.with_name(self.host_key.name + ".pub").read_text().split()[:2]
        where = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{where} {key_type} {key_b64}\n"

    def ssh_args(self, connect_timeout: int = 5) -> list[str]:
        """Options for an ``ssh`` client: this key only, strict host key checking, never prompt."""
        return [
            "-i",
            str(self.identity),
            "-p",
            str(self.port),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={connect_timeout}",
        ]

    def ssh_command(self, cmd: str | None = None, extra_args: Sequence[str] = ()) -> list[str]:
        """argv for ``ssh`` to this host; ``cmd`` is one remote shell command line."""
        # extra_args first: ssh keeps the first value it sees for each option, so they can override.
        argv = ["ssh", *extra_args, *self.ssh_args(), self.dest]
        if cmd is not None:
            argv.append(cmd)
        return argv

    def rsync_rsh(self) -> str:
        """Value for ``rsync -e``: the ssh command with this host's options, safely quoted."""
        return shlex.join(["ssh", *self.ssh_args()])

    def run(
        self,
        cmd: str,
        *,
        timeout: float = 30.0,
        check: bool = False,
        input: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Run one remote shell command line over ssh (the remote shell parses ``cmd``).

        Quote anything variable in ``cmd`` with :func:`shlex.quote`.
        """
        return subprocess.run(
            self.ssh_command(cmd, extra_args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    # -- server side -------------------------------------------------------------------------------

    def prepare(self, client_public_key: str) -> None:
        """Create the host's directories, host key, authorized_keys, known_hosts and sshd_config."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.sshd_dir.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            _keygen(self.host_key, f"{self.name}-host-key")
        self.authorized_keys.write_text(client_public_key.strip() + "\n")
        self.known_hosts.write_text(self.known_hosts_line())
        bashrc = self.home / ".bashrc"
        if not bashrc.exists():
            # sshd starts sessions in the user's passwd home (/root, shared by every host and by the
            # test machine itself), whatever HOME says.  Debian's bash sources ~/.bashrc (found via
            # HOME) for commands run by sshd, so this puts relative paths (ssh, rsync, scp) under
            # this host's HOME, as on a real machine.  It prints nothing, so rsync keeps working.
            bashrc.write_text('cd "$HOME" 2>/dev/null || true\n')
        self._prepare_second_user(client_public_key)
        self.config_path.write_text(self._sshd_config())

    def _sshd_config(self) -> str:
        env = {"HOME": str(self.home), **self.extra_env}
        for key in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise SshHostError(f"bad environment variable name: {key!r}")
        set_env = " ".join(_config_value(f"{key}={value}") for key, value in env.items())
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.address}",
            "AddressFamily inet",
            f"HostKey {_config_value(str(self.host_key))}",
            f"PidFile {_config_value(str(self.pid_file))}",
            f"AuthorizedKeysFile {_config_value(str(self.authorized_keys))}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            # The host's files live in a pytest temp dir whose modes sshd's checks would reject.
            "StrictModes no",
            # Tests open many connections at once; the default 10:30:100 drops some at random.
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            # Matches no variable: clients can't override the environment (also sshd's default).
            "AcceptEnv none",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "LogLevel VERBOSE",
            # SetEnv wins over sshd's own HOME (checked on OpenSSH 9.2): sessions see this host's HOME.
            f"SetEnv {set_env}",
            # scp uses SFTP since OpenSSH 9.0; start it in this host's HOME too.
            f"Subsystem sftp internal-sftp -d {_config_value(str(self.home))}",
        ]
        # OpenSSH >= 9.8 penalises sources that connect without authenticating (our readiness probe
        # does exactly that) and would then refuse the test client; older sshd rejects the option.
        if _sshd_supports("PerSourcePenalties no", self.sshd_dir):
            lines.append("PerSourcePenalties no")
        if self.second_home is not None:
            # Last: a Match block runs to the end of the file. Its values override the ones above.
            lines += [
                f"Match User {SECOND_USER}",
                f"  SetEnv {_config_value(f'HOME={self.second_home}')}",
                f"  AuthorizedKeysFile {_config_value(str(self.second_home / '.ssh' / 'authorized_keys'))}",
            ]
        return "\n".join(lines) + "\n"

    def _netns_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def sshd_pid(self) -> int | None:
        """The listener's pid if it is running (checked against /proc, not just the pid file)."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        # The listener's process title still carries its argv, hence the config path.
        return pid if str(self.config_path).encode() in cmdline else None

    def is_reachable(self, timeout: float = 1.0) -> bool:
        """True when the host's sshd accepts TCP connections and sends its banner."""
        return _tcp_banner_ok(self.address, self.port, timeout)

    def wait_reachable(self, timeout: float) -> None:
        """Poll until sshd greets on its port; raise with the sshd log's tail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.is_reachable(timeout=min(1.0, max(0.1, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise SshHostError(
                    f"{self.name}: {self.address}:{self.port} not reachable after {timeout:.0f}s\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        """The end of this host's sshd log, for error messages."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no sshd log)"

    def start_sshd(self) -> None:
        """Start this host's sshd and return once it answers on its port (at most ~10 s).

        No-op if it is already running.  sshd runs in the foreground (``-D``) as our child rather
        than daemonising: PID 1 of a container often reaps nothing, so a daemonised sshd that is
        stopped stays a zombie; as our child it is reaped, and it gets SIGTERM should this process
        die without tearing down (parent-death signal), so no sshd outlives the test run.
        """
        if self.sshd_pid() is not None:
            return
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege separation dir
        # Absolute paths only: sshd re-executes itself per connection after chdir("/").
        cmd = [*self._netns_prefix(), *self._poweroff_fake_prefix(), SSHD, "-D", "-f", str(self.config_path)]
        cmd += ["-E", str(self.log_file)]
        with self.log_file.open("ab") as log:  # errors before sshd opens its log (bad config, ...)
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # a Ctrl-C to the test run must not hit sshd before teardown
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.is_reachable(timeout=0.5):
            if self._proc.poll() is not None:
                raise SshHostError(f"{self.name}: sshd exited with {self._proc.returncode}\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                self.kill_sshd()
                raise SshHostError(
                    f"{self.name}: sshd not answering on {self.address}:{self.port} after "
                    f"{START_TIMEOUT:.0f}s\n{self.log_tail()}"
                )
            time.sleep(0.02)

    # -- power-off fake ----------------------------------------------------------------------------

    @property
    def poweroff_record(self) -> Path:
        """One line per power-off the host's fake received: ``<unix time> <argv...>``."""
        return self.root_dir / "poweroff-calls.log"

    def enable_poweroff_fake(self) -> None:
        """Restart this host's sshd in a private mount namespace where a fake replaces the power-off.

        Every process started through this host then sees the fake over the files that
        ``systemctl``, ``shutdown``, ``poweroff``, ``halt`` and ``reboot`` lead to (all of them
        ``/usr/bin/systemctl`` on this image): called by any of those names, it records the call in
        :attr:`poweroff_record` and ends every process of this host (those sharing its mount
        namespace, the sshd listener included), as a real power-off would.
        The test machine outside keeps the real binary and is never touched; the fake also refuses
        to act when run outside its namespace.  Raises :class:`SshHostError` when this cannot be set
        up or checked (root is needed), so no test ever reaches the real power-off instead.
        """
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            raise SshHostError(f"{self.name}: the power-off fake needs root and unshare")
        outer = os.readlink("/proc/self/ns/mnt")
        fake = self.sshd_dir / "fake-poweroff"
        fake.write_text(_FAKE_POWEROFF.replace("@OUTER@", outer).replace("@RECORD@", str(self.poweroff_record)))
        fake.chmod(0o755)
        self.stop_sshd()
        self.poweroff_fake = fake
        self.start_sshd()
        self.check_poweroff_fake()

    def check_poweroff_fake(self) -> None:
        """Raise unless the listener sees the fake at the power-off path and this process does not."""
        pid = self.sshd_pid()
        if self.poweroff_fake is None or pid is None:
            raise SshHostError(f"{self.name}: no sshd running with the power-off fake")
        for path in _poweroff_paths():
            if _mounted_at(Path("/proc/self/mountinfo"), path):
                raise SshHostError(f"{path} is bind-mounted on the test machine itself: refusing")
            if not _mounted_at(Path(f"/proc/{pid}/mountinfo"), path):
                raise SshHostError(f"{self.name}: the power-off fake is not mounted at {path} for its sshd")
            # Through /proc/PID/root: this file as the sshd's namespace sees it.  (An absolute
            # symlink met on that walk would lead back to this machine's view, hence real paths.)
            with open(f"/proc/{pid}/root{path}", "rb") as seen:
                if _FAKE_MARKER.encode() not in seen.read(4096):
                    raise SshHostError(f"{self.name}: its sshd does not see the fake at {path}")

    def poweroff_calls(self) -> list[tuple[float, list[str]]]:
        """The calls the fake recorded: (time, argv), oldest first."""
        try:
            lines = self.poweroff_record.read_text().splitlines()
        except FileNotFoundError:
            return []
        calls = []
        for line in lines:
            t, _, argv = line.partition(" ")
            calls.append((float(t), argv.split()))
        return calls

    def _poweroff_fake_prefix(self) -> list[str]:
        if self.poweroff_fake is None:
            return []
        # "$0" is the fake and "$@" sshd's argv: no path is ever parsed by the shell.
        mounts = " && ".join(f'mount --bind "$0" {shlex.quote(path)}' for path in _poweroff_paths())
        script = f'{mounts} && exec "$@"'
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(self.poweroff_fake)]

    def stop_sshd(self) -> None:
        """Stop the listener (SIGTERM, SIGKILL after 5 s) and wait until it is gone.

        Like on a real machine, sessions already open keep running: each has its own sshd process,
        which the listener does not take down with it.  :meth:`teardown` ends those too.
        """
        self._end_listener(signal.SIGTERM)

    def kill_sshd(self) -> None:
        """SIGKILL the listener, as if sshd crashed; return once it is gone.

        New connections are refused at once (nothing listens on the port).  Open sessions survive:
        their per-connection sshd processes are separate and get re-parented, so commands already
        running go on and their output still arrives.  The stale pid file stays, as after a real
        crash; :meth:`start_sshd` replaces it.
        """
        self._end_listener(signal.SIGKILL)

    def _end_listener(self, sig: signal.Signals) -> None:
        pid = self.sshd_pid()
        if pid is not None:
            _kill(pid, sig)
            if not self._wait_listener_gone(pid) and sig != signal.SIGKILL:
                _kill(pid, signal.SIGKILL)
                self._wait_listener_gone(pid)
        if self._proc is not None and self._proc.poll() is None:
            # Our child but no longer the pid-file's listener: should not happen, but never leak it.
            self._proc.kill()
            self._proc.wait(STOP_TIMEOUT)
        self._proc = None

    def _wait_listener_gone(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(STOP_TIMEOUT)  # also reaps it
            except subprocess.TimeoutExpired:
                return False
            return True
        return _wait_gone([pid], STOP_TIMEOUT)

    def link_down(self) -> None:
        """Take the host's network link down (netns hosts only).

        New connections then time out (or get "No route to host" once ARP gives up); open TCP
        connections stall without being reset and resume if the link comes back in time.
        """
        self._set_link("down")

    def link_up(self) -> None:
        """Bring the link back and wait (at most ~5 s) until sshd is reachable again."""
        self._set_link("up")
        # A neighbour entry that failed while the link was down would answer "No route to host"
        # for a second or two; forget it so the next connection resolves afresh.
        if self.veth_host:
            _run(["ip", "neigh", "flush", "dev", self.veth_host], check=False)
        self.wait_reachable(LINK_UP_TIMEOUT)

    def _set_link(self, state: str) -> None:
        if not self.netns or not self.veth_ns:
            raise SshHostError(f"{self.name}: link_down/link_up need a network-namespace host")
        _run(["ip", "netns", "exec", self.netns, "ip", "link", "set", self.veth_ns, state])

    def _session_pids(self) -> list[int]:
        """Processes belonging to this host: its sshd tree and everything its sessions started."""
        pids: set[int] = set()
        listener = self.sshd_pid()
        if listener is not None:
            pids.add(listener)
            pids.update(_descendants(listener))
        # Session shells (and whatever they ran) carry this host's HOME, even once re-parented.
        pids.update(_ssh_session_pids(str(self.home)))
        if self.second_home is not None:
            pids.update(_ssh_session_pids(str(self.second_home)))
        if self.netns:
            pids.update(_netns_pids(self.netns))
        pids.discard(os.getpid())
        return sorted(pid for pid in pids if _pid_alive(pid))

    def _kill_processes(self, exclude: set[int]) -> list[int]:
        """SIGKILL this host's processes (see :meth:`_session_pids`); return any that survive.

        Leaves first, each wave reaped by its still-living parent before the parents go: a process
        orphaned here would be re-parented to PID 1, which in a container may leave it a zombie.
        """
        pids: list[int] = []
        for _ in range(20):
            pids = [pid for pid in self._session_pids() if pid not in exclude]
            if not pids:
                return []
            parents = _parents()
            has_child = {parents.get(pid) for pid in pids}
            leaves = [pid for pid in pids if pid not in has_child] or pids
            for pid in leaves:
                _kill(pid, signal.SIGKILL)
            if not _wait_gone(leaves, 0.5, reaped=True):
                _wait_gone(leaves, STOP_TIMEOUT)
        return [pid for pid in pids if _pid_alive(pid)]

    def power_off_now(self) -> None:
        """End every process of this host and take its sshd down, keeping its files and network.

        What a hypervisor's stop does to a machine: training dies at once, the disk stays.
        :meth:`start_sshd` boots it again (with the power-off fake still in place, if enabled).
        Safe to call when the host is already down.
        """
        errors = self._end_everything()
        if errors:
            raise SshHostError(f"{self.name}: power-off incomplete: {'; '.join(errors)}")

    def _end_everything(self) -> list[str]:
        """End the host's sessions and its sshd; the problems met, if any."""
        errors: list[str] = []
        listener = self.sshd_pid()
        # Sessions first, while the listener is alive to reap them (PID 1 here may never do it).
        self._kill_processes(exclude={listener} if listener else set())
        try:
            self.stop_sshd()
        except Exception as exc:
            errors.append(f"stop sshd: {exc}")
        left = self._kill_processes(exclude=set())  # re-parented sessions, anything in the netns
        if left:
            errors.append(f"processes still alive: {left}")
        return errors

    def teardown(self) -> None:
        """Stop sshd, end every process of this host and delete its namespace and veth pair."""
        errors = self._end_everything()
        if self.netns:
            proc = _run(["ip", "netns", "del", self.netns], check=False)
            if proc.returncode != 0 and "No such file" not in proc.stderr:
                errors.append(f"ip netns del: {proc.stderr.strip()}")
        if self.veth_host and Path(f"/sys/class/net/{self.veth_host}").exists():
            # Deleting the namespace destroys the pair; this only catches a half-built host.
            _run(["ip", "link", "del", self.veth_host], check=False)
        if self.second_home is not None:
            shutil.rmtree(self.second_home, ignore_errors=True)
        with contextlib.suppress(ValueError):
            _LIVE_HOSTS.remove(self)
        if errors:
            raise SshHostError(f"{self.name}: teardown incomplete: {'; '.join(errors)}")


# --------------------------------------------------------------------------------------------------
# The power-off fake


# Every name a power-off may be called by; on Debian 12 all of them lead to /usr/bin/systemctl.
_POWEROFF_NAMES = (
    "/usr/bin/systemctl",
    "/sbin/shutdown",
    "/sbin/poweroff",
    "/sbin/halt",
    "/sbin/reboot",
    "/usr/sbin/shutdown",
    "/usr/sbin/poweroff",
    "/usr/sbin/halt",
    "/usr/sbin/reboot",
)
_FAKE_MARKER = "RUNCTL-TEST-FAKE-POWEROFF"
# Plays the hypervisor for one test host: records the call, then ends the host's processes.
_FAKE_POWEROFF = f"""#!/bin/sh
# {_FAKE_MARKER}: stands in for systemctl (shutdown, poweroff, halt, reboot) inside one test host.
me=$(readlink /proc/self/ns/mnt)
if [ -z "$me" ] || [ "$me" = "@OUTER@" ]; then
  echo "fake power-off: not inside a test host's mount namespace, refusing" >&2
  exit 99
fi
printf '%s %s\n' "$(date +%s.%N)" "$0 $*" >> "@RECORD@"
for dir in /proc/[0-9]*; do
  pid=${{dir#/proc/}}
  [ "$pid" = "$$" ] && continue
  [ "$(readlink "$dir/ns/mnt" 2>/dev/null)" = "$me" ] && kill -9 "$pid" 2>/dev/null
done
exit 0
"""


def _poweroff_paths() -> list[str]:
    """The files behind the power-off names (symlinks resolved, each once): where the fake goes."""
    found = {os.path.realpath(name) for name in _POWEROFF_NAMES if os.path.exists(name)}
    if not found:
        raise SshHostError("no power-off command found on this machine to put a fake over")
    return sorted(found)


def _mounted_at(mountinfo: Path, path: str) -> bool:
    """Whether ``mountinfo`` (a /proc/PID/mountinfo) lists a mount at ``path``."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return False
    return any(len(fields) > 4 and fields[4] == path for fields in (line.split() for line in lines))


def start_hosts_with_poweroff_fake(n: int, base_dir: Path, prefer_netns: bool = True) -> SshHosts:
    """Like :func:`start_hosts`, each host with its power-off fake (see ``enable_poweroff_fake``)."""
    hosts = start_hosts(n, base_dir, prefer_netns=prefer_netns)
    try:
        for host in hosts:
            host.enable_poweroff_fake()
    except BaseException:
        with contextlib.suppress(Exception):
            hosts.teardown()
        raise
    return hosts


# --------------------------------------------------------------------------------------------------
# Groups of hosts


_LIVE_HOSTS: list[SshTestHost] = []
_OWNER_PID = os.getpid()
_host_counter = 0


def _next_index() -> int:
    global _host_counter
    index = _host_counter
    _host_counter += 1
    return index


def _teardown_all_at_exit() -> None:
    # A forked child (e.g. multiprocessing) inherits the registry; only the creator cleans up.
    if os.getpid() != _OWNER_PID:
        return
    for host in list(_LIVE_HOSTS):
        with contextlib.suppress(Exception):
            host.teardown()


atexit.register(_teardown_all_at_exit)


class SshHosts(list[SshTestHost]):
    """The hosts of one :func:`start_hosts` call: a list, and a context manager that tears down."""

    def __init__(self, hosts: Sequence[SshTestHost], base_dir: Path, client_key: Path) -> None:
        super().__init__(hosts)
        self.base_dir = base_dir
        self.client_key = client_key

    @property
    def use_netns(self) -> bool:
        return bool(self) and all(host.netns for host in self)

    @property
    def known_hosts(self) -> Path:
        """One known_hosts file listing every host of the group."""
        return self.base_dir / "known_hosts"

    def write_known_hosts(self) -> Path:
        self.known_hosts.write_text("".join(host.known_hosts_line() for host in self))
        return self.known_hosts

    def teardown(self) -> None:
        teardown(self)

    def __enter__(self) -> SshHosts:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()


def teardown(hosts: Sequence[SshTestHost]) -> None:
    """Tear down every host, even if some fail; raise afterwards if any did."""
    errors = []
    for host in hosts:
        try:
            host.teardown()
        except Exception as exc:
            errors.append(str(exc))
    if errors:
        raise SshHostError("; ".join(errors))


@contextlib.contextmanager
def _subnet_lock() -> Iterator[None]:
    """Serialise subnet allocation between test processes running at the same time."""
    lock_dir = Path("/run/lock") if Path("/run/lock").is_dir() else Path("/tmp")
    with (lock_dir / "rctest-sshhosts.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _used_subnets() -> set[int]:
    """Third octets of 10.231.X.0/24 already holding an address in the root namespace."""
    proc = _run(["ip", "-o", "-4", "addr", "show"], check=False)
    prefix = re.escape(SUBNET_PREFIX)
    return {int(m.group(1)) for m in re.finditer(rf"\binet {prefix}\.(\d+)\.\d+/", proc.stdout)}


def _pid_of_live_creator(pid: int) -> bool:
    return pid == os.getpid() or _pid_alive(pid)


def cleanup_stale_namespaces() -> list[str]:
    """Delete ``rctest-<pid>-<i>`` namespaces (and stray veths) whose creating process is dead.

    A test process killed hard (SIGKILL, OOM, CI timeout) runs no atexit hook; this reclaims what
    it left so the addresses and names can be reused.  Returns the namespaces removed.
    """
    removed = []
    listing = _run(["ip", "netns", "list"], check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NETNS_RE.match(name)
        if not match or _pid_of_live_creator(int(match.group(1))):
            continue
        pids = _netns_pids(name)
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        _wait_gone(pids, STOP_TIMEOUT)
        if _run(["ip", "netns", "del", name], check=False).returncode == 0:
            removed.append(name)
    for link in Path("/sys/class/net").iterdir():
        match = _VETH_RE.match(link.name)
        if match and not _pid_of_live_creator(int(match.group(1))):
            _run(["ip", "link", "del", link.name], check=False)
    return removed


def netns_available() -> bool:
    """Whether this process can create network namespaces (root, and the kernel allows it)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"{NETNS_PREFIX}-{os.getpid()}-probe{_next_index()}"
    if _run(["ip", "netns", "add", probe], check=False).returncode != 0:
        return False
    _run(["ip", "netns", "del", probe], check=False)
    return True


def _setup_netns(host: SshTestHost) -> None:
    """Create the host's namespace and veth pair and give both ends an address of a free /24."""
    assert host.netns and host.veth_host and host.veth_ns
    _run(["ip", "netns", "add", host.netns])
    ns = ["ip", "-n", host.netns]
    peer = ["peer", "name", host.veth_ns, "netns", host.netns]  # created right inside the namespace
    _run(["ip", "link", "add", host.veth_host, "type", "veth", *peer])
    with _subnet_lock():
        free = [k for k in range(256) if k not in _used_subnets()]
        if not free:
            raise SshHostError(f"no free /24 left in {SUBNET_PREFIX}.0.0/16")
        subnet = f"{SUBNET_PREFIX}.{free[0]}"
        _run(["ip", "addr", "add", f"{subnet}.1/24", "dev", host.veth_host])
    host.gateway = f"{subnet}.1"
    host.address = f"{subnet}.2"
    _run(["ip", "link", "set", host.veth_host, "up"])
    _run([*ns, "addr", "add", f"{subnet}.2/24", "dev", host.veth_ns])
    _run([*ns, "link", "set", "lo", "up"])
    _run([*ns, "link", "set", host.veth_ns, "up"])
    # Lets processes on the host reach servers of the test machine bound to its other addresses.
    _run([*ns, "route", "add", "default", "via", host.gateway])


def start_hosts(
    n: int,
    base_dir: Path,
    prefer_netns: bool = True,
    extra_env_per_host: Sequence[Mapping[str, str] | None] | None = None,
) -> SshHosts:
    """Create, start and return ``n`` test hosts under ``base_dir`` (``base_dir/host<i>``).

    With ``prefer_netns`` and root, each host gets a namespace ``rctest-<pid>-<i>`` and listens on
    its own 10.231.X.2:22; otherwise on 127.0.0.1 with a free port.  ``extra_env_per_host[i]`` is
    added to host i's session environment (e.g. ``{"PATH": "/nonexistent"}``).  The result is a
    list and a context manager; on any error, hosts already made are torn down before raising.
    """
    if extra_env_per_host is not None and len(extra_env_per_host) != n:
        raise ValueError("extra_env_per_host needs one entry (or None) per host")
    ensure_ssh_packages()
    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    use_netns = prefer_netns and netns_available()
    if use_netns:
        cleanup_stale_namespaces()

    client_dir = base_dir / "client"
    client_dir.mkdir(exist_ok=True)
    client_key = client_dir / "id_ed25519"
    if not client_key.exists():
        _keygen(client_key, "runctl-test-client")
    client_public_key = client_key.with_name("id_ed25519.pub").read_text()

    hosts = SshHosts([], base_dir, client_key)
    try:
        for i in range(n):
            index = _next_index()
            extra_env = dict((extra_env_per_host or [None] * n)[i] or {})
            host = SshTestHost(
                name=f"host{i}",
                address="127.0.0.1",
                port=SSH_PORT_IN_NETNS if use_netns else 0,
                root_dir=base_dir / f"host{i}",
                identity=client_key,
                extra_env=extra_env,
            )
            if use_netns:
                pid = os.getpid()
                host.netns = f"{NETNS_PREFIX}-{pid}-{index}"
                host.veth_host = f"rct{pid}h{index}"
                host.veth_ns = f"rct{pid}n{index}"
            hosts.append(host)
            _LIVE_HOSTS.append(host)
            if use_netns:
                _setup_netns(host)
                host.prepare(client_public_key)
                host.start_sshd()
            else:
                _start_on_free_port(host, client_public_key)
    except BaseException:
        with contextlib.suppress(Exception):
            teardown(hosts)
        raise
    hosts.write_known_hosts()
    return hosts


def _start_on_free_port(host: SshTestHost, client_public_key: str, attempts: int = 5) -> None:
    """Loopback fallback: pick a free port; retry if another process grabbed it meanwhile."""
    for attempt in range(attempts):
        host.port = _free_port(host.address)
        host.prepare(client_public_key)
        try:
            host.start_sshd()
            return
        except SshHostError:
            if attempt == attempts - 1:
                raise


def ssh_hosts_fixture(
    tmp_path_factory: pytest.TempPathFactory, n: int = 2, prefer_netns: bool = True
) -> Iterator[SshHosts]:
    """Generator for a pytest fixture yielding ``n`` started hosts, torn down afterwards.

    In a conftest: ``ssh_hosts = pytest.fixture(scope="session")(ssh_hosts_fixture)``.  pytest
    only injects parameters without defaults, so ``n`` and ``prefer_netns`` keep theirs; for other
    values wrap it, e.g. ``functools.partial`` inside a small fixture function.
    """
    base_dir = tmp_path_factory.mktemp("sshhosts")
    hosts = start_hosts(n, base_dir, prefer_netns=prefer_netns)
    try:
        yield hosts
    finally:
        hosts.teardown()
