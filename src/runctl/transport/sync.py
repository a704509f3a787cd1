"""Code, data and checkpoint transfer with rsync over the transport's ssh settings.

Code sync honours .gitignore files at every level and a .runctlignore (rsync dir-merge rules), with
--include overrides first. It deletes remotely what was deleted locally, but never anything under
the run outputs: those paths are excluded, which also protects them from --delete.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..agent import synctarget
from ..agent.synctarget import rsync_literal
from ..core import layout
from ..core.errors import HostError, RunctlError, UsageError
from . import ignore, manifest
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


def rsync_argv(transport: SshTransport) -> list[str]:
    """rsync over the transport's ssh, with protected arguments (`-s`, rsync >= 3.0 on both ends).

    With `-s` the file names travel inside rsync's protocol instead of the remote shell's command
    line, so no path (backticks, `$()`, quotes, newlines, leading dashes) is ever parsed by a shell.
    """
    return ["rsync", "-s", "-e", transport.rsync_rsh()]


def checked_target(transport: SshTransport, remote_dir: str, mode: str, project: str) -> str:
    """`--rsync-path` that checks (and for code, claims) the target on the host, then runs rsync.

    The check runs in the transfer's own ssh session (agent `sync-target`), so it costs no round
    trip. rsync appends its server arguments to this command, hence the shell function taking
    them as "$@". Its fast path, a dir already marked for this project with nothing to protect
    (or an existing data dir), reads the marker with shell builtins and starts no Python.
    """
    quote = shlex.quote
    if mode == "mkdir":
        fast = '[ -d %s ] && exec rsync %s "$@"' % (quote(remote_dir), quote("--filter=" + synctarget.PROTECT_ALL))
    else:
        adopted, owned = synctarget.owner_fields(project)
        fast = 'read -r c 2>/dev/null < %s && case "$c" in *%s*%s*) exec rsync "$@";; esac' % (
            quote(posixpath.join(remote_dir, layout.OWNER)),
            quote(adopted),
            quote(owned),
        )
    checked = transport.agent("sync-target", remote_dir, mode, project, "--")
    return '--rsync-path=runctl_sync() { %s; exec %s "$@"; }; runctl_sync' % (fast, checked)


def code_filters(includes: list[str], rules_file: str, protect: tuple[str, ...] = ()) -> list[str]:
    """--include overrides first, then the run outputs, then the project's ignore files, then the usual junk.

    `protect` names more project-relative paths the host owns (a custom checkpoint dir, a resume file).
    """
    rules = ["--include=%s" % pattern for pattern in includes]
    rules += ["--exclude=%s" % pattern for pattern in REMOTE_OUTPUTS]
    rules += ["--exclude=/%s" % rsync_literal(path.strip("/")) for path in protect]
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
    proc = subprocess.run([*rsync_argv(transport), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode == 0:
        return proc
    err = proc.stderr.strip()
    refusal = host_refusal(str(transport.dest), err)
    if refusal is not None:
        raise refusal
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


def host_refusal(dest: str, stderr: str) -> RunctlError | None:
    """The error the host-side target check reported (see agent/synctarget.py), if it refused."""
    for line in stderr.splitlines():
        tag, _, payload = line.strip().partition(" ")
        if tag not in (synctarget.REFUSED, synctarget.HOST_ERROR):
            continue
        try:
            info = json.loads(payload)
        except ValueError:
            continue
        path, problem, hint = info.get("path"), info.get("problem"), info.get("hint")
        if tag == synctarget.REFUSED:
            return UsageError("the remote dir %s on %s %s" % (path, dest, problem), hint)
        return HostError("%s at %s on %s" % (problem, path, dest), hint)
    return None


_TOTAL = re.compile(r"Total file size: ([\d,.]+) bytes")
_SENT = re.compile(r"Number of regular files transferred: ([\d,.]+)")


def _stat(pattern: re.Pattern[str], text: str) -> int:
    match = pattern.search(text)
    return int(match.group(1).replace(",", "").replace(".", "")) if match else 0


def sync_code(
    transport: SshTransport,
    local_root: Path,
    remote_dir: str,
    includes: list[str],
    protect: tuple[str, ...] = (),
    project: str | None = None,
    adopt: bool = False,
) -> SyncResult:
    """Mirror the project into `remote_dir`, which must be runctl's own for `project` (see synctarget).

    `adopt` marks an existing non-empty dir as runctl's, keeping (never deleting) what was there.
    """
    started = time.monotonic()
    with tempfile.NamedTemporaryFile("w", prefix="runctl-ignore-", suffix=".rules") as rules_file:
        rules_file.write("".join(rule + "\n" for rule in ignore.collect(local_root)))
        rules_file.flush()
        filters = code_filters(includes, rules_file.name, protect)
        target = checked_target(transport, remote_dir, "adopt" if adopt else "claim", project or local_root.name)
        return _sync_with(transport, local_root, remote_dir, target, filters, started)


def _sync_with(
    transport: SshTransport, local_root: Path, remote_dir: str, target: str, filters: list[str], started: float
) -> SyncResult:
    proc = _rsync(
        transport,
        [
            "-az",
            "--delete",
            "--stats",
            target,
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
                checked_target(transport, remote_data_dir, "mkdir", "-"),
                source,
                "%s:%s" % (transport.dest.rsync_target, target),
            ],
            "data sync",
            remote_data_dir,
        )


def download(
    transport: SshTransport, remote_dir: str, files: list[str], local_dest: Path, progress: bool
) -> manifest.Plan:
    """Resumable pull of `files` (relative to remote_dir) into local_dest; never deletes a local file.

    Files that exist locally and were not put there by runctl are skipped (returned in `skipped`).
    """
    # Absolute, so a dest holding ':' is never read by rsync as host:path.
    local_dest = Path(os.path.abspath(local_dest))
    if os.path.lexists(local_dest) and not local_dest.is_dir():
        raise UsageError("%s exists and is not a directory" % local_dest, "pass --dest a directory")
    todo = manifest.plan(local_dest, files)
    if not todo.allowed:
        return todo
    try:
        local_dest.mkdir(parents=True, exist_ok=True)
        manifest.mark_pending(local_dest, todo.allowed)
    except OSError as exc:
        raise UsageError(
            "cannot write to %s: %s" % (local_dest, exc.strerror or exc), "pass --dest a directory you can write"
        ) from None
    args = ["-a", "--partial", "--files-from=-", "--from0"]
    if progress:
        args.append("--info=progress2")
    transport.ensure_master()
    proc = subprocess.run(
        [*rsync_argv(transport), *args, "%s:%s/" % (transport.dest.rsync_target, remote_dir), str(local_dest) + "/"],
        input="\0".join(todo.allowed),
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
    manifest.record(local_dest, todo.allowed)
    return todo
