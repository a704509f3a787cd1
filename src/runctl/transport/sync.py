"""Code, data and checkpoint transfer with rsync over the transport's ssh settings.

Code sync honours .gitignore files at every level and a .runctlignore (rsync dir-merge rules), with
--include overrides first. It deletes remotely what was deleted locally, but never anything under
the run outputs: those paths are excluded, which also protects them from --delete.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..core import layout
from ..core.errors import HostError
from . import ignore
from .ssh import SshTransport, classify_ssh_error

WARN_BYTES = 500 * 1024 * 1024
ALWAYS_EXCLUDED = (".git/", "__pycache__/", ".venv/", "*.pyc")
# Outputs of runs on the host, and the project-dir mirrors of the latest run: never sent, never deleted.
REMOTE_OUTPUTS = (
    *("/%s/" % p for p in layout.PROTECTED_OUTPUTS),
    "/data/",
    *("/%s" % name for name in (*layout.MIRRORED, layout.MARKER)),
)


@dataclass
class SyncResult:
    files_sent: int
    bytes_total: int
    seconds: float
    warning: str | None = None


def mkdir_then_rsync(remote_dir: str) -> str:
    """Create the target dir in the same round trip as the transfer (older rsyncs lack --mkpath)."""
    return "--rsync-path=mkdir -p %s && rsync" % shlex.quote(remote_dir)


def code_filters(includes: list[str], rules_file: str, protect: tuple[str, ...] = ()) -> list[str]:
    """--include overrides first, then the run outputs, then the project's ignore files, then the usual junk.

    `protect` names more project-relative paths the host owns (a custom checkpoint dir, a resume file).
    """
    rules = ["--include=%s" % pattern for pattern in includes]
    rules += ["--exclude=%s" % pattern for pattern in REMOTE_OUTPUTS]
    rules += ["--exclude=/%s" % path.strip("/") for path in protect]
    rules += ["--filter=. %s" % rules_file]
    rules += ["--exclude=%s" % pattern for pattern in ALWAYS_EXCLUDED]
    return rules


def remote_disk_full(transport: SshTransport, path: str) -> bool:
    """rsync's I/O errors do not always say why; ask the host whether the target's disk is full."""
    try:
        proc = transport.run("df -Pk %s | awk 'NR==2 {print $4}'" % shlex.quote(path), check=False, timeout=15)
    except HostError:
        return False
    text = proc.stdout.decode().strip()
    return text.isdigit() and int(text) < 1024


def _rsync(
    transport: SshTransport, args: list[str], what: str, target_dir: str = "/"
) -> subprocess.CompletedProcess[str]:
    transport.ensure_master()
    proc = subprocess.run(
        ["rsync", "-e", transport.rsync_rsh(), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if proc.returncode == 0:
        return proc
    err = proc.stderr.strip()
    if "No space left on device" in err or "Disk quota exceeded" in err:
        raise HostError(
            "%s failed: the disk on %s is full" % (what, transport.dest),
            "free space there (runctl ssh exec %s -- df -h) or use --remote-dir on a bigger disk" % transport.dest,
        )
    if proc.returncode in (11, 12) and remote_disk_full(transport, target_dir):
        raise HostError(
            "%s failed: the disk on %s is full" % (what, transport.dest),
            "free space there (runctl ssh exec %s -- df -h) or use --remote-dir on a bigger disk" % transport.dest,
        )
    if proc.returncode == 255 or "connection unexpectedly closed" in err:
        raise classify_ssh_error(str(transport.dest), err)
    last = err.splitlines()[-1] if err else "exit %d" % proc.returncode
    raise HostError("%s to %s failed: %s" % (what, transport.dest, last))


_TOTAL = re.compile(r"Total file size: ([\d,.]+) bytes")
_SENT = re.compile(r"Number of regular files transferred: ([\d,.]+)")


def _stat(pattern: re.Pattern[str], text: str) -> int:
    match = pattern.search(text)
    return int(match.group(1).replace(",", "").replace(".", "")) if match else 0


def sync_code(
    transport: SshTransport, local_root: Path, remote_dir: str, includes: list[str], protect: tuple[str, ...] = ()
) -> SyncResult:
    started = time.monotonic()
    with tempfile.NamedTemporaryFile("w", prefix="runctl-ignore-", suffix=".rules") as rules_file:
        rules_file.write("".join(rule + "\n" for rule in ignore.collect(local_root)))
        rules_file.flush()
        filters = code_filters(includes, rules_file.name, protect)
        return _sync_with(transport, local_root, remote_dir, filters, started)


def _sync_with(
    transport: SshTransport, local_root: Path, remote_dir: str, filters: list[str], started: float
) -> SyncResult:
    proc = _rsync(
        transport,
        [
            "-az",
            "--delete",
            "--stats",
            mkdir_then_rsync(remote_dir),
            *filters,
            str(local_root) + "/",
            "%s:%s/" % (transport.dest.rsync_target, remote_dir),
        ],
        "code sync",
        remote_dir,
    )
    total = _stat(_TOTAL, proc.stdout)
    result = SyncResult(_stat(_SENT, proc.stdout), total, time.monotonic() - started)
    if total > WARN_BYTES:
        result.warning = "the code sync set is %d MB; biggest: %s. Add them to .runctlignore or .gitignore" % (
            total // (1024 * 1024),
            ", ".join(biggest_files(local_root, filters)),
        )
    return result


def biggest_files(local_root: Path, filters: list[str], count: int = 5) -> list[str]:
    """The largest files rsync would send, listed by a local dry run (only when the set is too big)."""
    proc = subprocess.run(
        ["rsync", "-an", "--out-format=%l %n", *filters, str(local_root) + "/", "/nonexistent-runctl-dry-run/"],
        capture_output=True,
        text=True,
    )
    sizes = []
    for line in proc.stdout.splitlines():
        size, _, name = line.partition(" ")
        if size.isdigit() and not name.endswith("/"):
            sizes.append((int(size), name))
    sizes.sort(reverse=True)
    return ["%s (%.1f MB)" % (name, size / 1e6) for size, name in sizes[:count]]


def stage_data(transport: SshTransport, local_paths: list[Path], remote_data_dir: str) -> None:
    """Each --data path goes to <remote>/data/<name>, incrementally; nothing remote is deleted."""
    for path in local_paths:
        source = str(path) + ("/" if path.is_dir() else "")
        target = "%s/%s%s" % (remote_data_dir, path.name, "/" if path.is_dir() else "")
        _rsync(
            transport,
            [
                "-az",
                "--partial",
                mkdir_then_rsync(remote_data_dir),
                source,
                "%s:%s" % (transport.dest.rsync_target, target),
            ],
            "data sync",
            remote_data_dir,
        )


def download(transport: SshTransport, remote_dir: str, files: list[str], local_dest: Path, progress: bool) -> None:
    """Resumable pull of `files` (relative to remote_dir) into local_dest."""
    local_dest.mkdir(parents=True, exist_ok=True)
    args = ["-a", "--partial", "--files-from=-", "--from0"]
    if progress:
        args.append("--info=progress2")
    transport.ensure_master()
    proc = subprocess.run(
        [
            "rsync",
            "-e",
            transport.rsync_rsh(),
            *args,
            "%s:%s/" % (transport.dest.rsync_target, remote_dir),
            str(local_dest) + "/",
        ],
        input="\0".join(files),
        text=True,
        stdout=None if progress else subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if proc.returncode == 255:
            raise classify_ssh_error(str(transport.dest), err)
        raise HostError(
            "checkpoint download from %s failed: %s" % (transport.dest, err.splitlines()[-1] if err else "")
        )
