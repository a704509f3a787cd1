"""The host side of every rsync into a host: check the target, claim it, then become the rsync server.

The controller's `--rsync-path` runs `python3 -S AGENT sync-target DIR MODE PROJECT -- ARGS`, so
the checks cost no extra round trip: this runs in the same ssh session as the transfer, before
rsync starts, and `exec`s the real `rsync --server ...` when the target is safe. (A dir already
marked for the project, with nothing to protect, goes straight to rsync by a shell fast path.)

A code sync deletes what the local project no longer has, so it may only run in a directory runctl
made and marked as its own (`.runctl/owner.json`, naming the project). Modes:

- `claim`: a new or empty directory is created and marked; a directory marked for this project is
  used; anything else (`/`, a home directory or one holding it, a directory inside or around another
  runctl project, a non-empty directory runctl did not create, one marked for another project) is
  refused.
- `adopt`: like `claim`, but a non-empty unmarked directory is marked too, recording the entries
  already there; every later sync protects them from deletion (rsync `P` rules given to this server).
- `mkdir`: only create the directory (data staging); the server protects everything from deletion.

A refusal is one line on stderr, `RUNCTL-SYNC-REFUSED {json}` (exit 2) or `RUNCTL-SYNC-HOST-ERROR
{json}` (exit 4) for permission and disk problems, the JSON holding `path`, `problem` and `hint`;
the controller turns it into its own error, naming the host.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from ..core import layout
from ..core.fsutil import atomic_write_json, read_json

REFUSED = "RUNCTL-SYNC-REFUSED"
HOST_ERROR = "RUNCTL-SYNC-HOST-ERROR"
MODES = ("claim", "adopt", "mkdir")
OWNER_TOOL = "runctl"
# Looking for runctl projects below a target: bounded, and never inside what a sync cannot delete.
SCAN_MAX_DEPTH = 4
SCAN_MAX_DIRS = 5000
SCAN_SKIP = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", layout.RUNCTL_DIR})
_WILDCARDS = "*?["
PROTECT_ALL = "P *"


class Refused(Exception):
    """The target at `path` is not safe to sync into (`problem` says why); `hint` says what to do."""

    tag = REFUSED

    def __init__(self, path: str, problem: str, hint: str) -> None:
        super().__init__("the remote dir %s %s" % (path, problem))
        self.path = path
        self.problem = problem
        self.hint = hint


class HostProblem(Refused):
    """The host cannot give us `path`: "permission denied", "disk full" (the message reads PROBLEM at PATH)."""

    tag = HOST_ERROR

    def __init__(self, path: str, problem: str, hint: str) -> None:
        Exception.__init__(self, "%s at %s" % (problem, path))
        self.path = path
        self.problem = problem
        self.hint = hint


def rsync_literal(name: str, wildcard: bool = False) -> str:
    """`name` as an rsync filter pattern matching exactly itself.

    rsync treats a backslash as an escape only in patterns holding a wildcard, so the escaping is
    applied when `name` has one, or when the caller appends one (`wildcard`, e.g. for `NAME/***`).
    """
    if wildcard or any(c in name for c in _WILDCARDS):
        return "".join("\\" + c if c in "\\" + _WILDCARDS else c for c in name)
    return name


def protect_rules(entries: List[str]) -> List[str]:
    """`P` (protect from deletion) rules for top-level entries and everything below them."""
    if any("\n" in name or "\r" in name for name in entries):
        return [PROTECT_ALL]  # not expressible as a rule: protect everything rather than guess
    rules = []
    for name in entries:
        rules.append("P /" + rsync_literal(name))
        rules.append("P /" + rsync_literal(name, wildcard=True) + "/***")
    return rules


def owner_fields(project: str) -> Tuple[str, str]:
    """Two pieces of a marker's one JSON line that say "runctl's, for `project`, nothing to protect".

    The controller's shell fast path looks for them (so an ordinary sync starts no Python); they
    follow the writer below: json.dumps with sorted keys and the default separators.
    """
    return '"adopted": false', '"project": %s,' % json.dumps(project)


def owner_path(directory: str) -> str:
    return os.path.join(directory, layout.OWNER)


def read_owner(directory: str) -> Optional[Dict[str, Any]]:
    owner = read_json(owner_path(directory))
    return owner if owner and owner.get("tool") == OWNER_TOOL else None


def homes() -> List[str]:
    """The user's home as $HOME says and as the password database says, both resolved."""
    found = []
    if os.environ.get("HOME"):
        found.append(os.path.realpath(os.environ["HOME"]))
    try:
        import pwd

        found.append(os.path.realpath(pwd.getpwuid(os.getuid()).pw_dir))
    except (ImportError, KeyError):
        pass
    return [h for h in found if h != "/"] or found


def check_place(real: str) -> None:
    """Refuse `/`, a home directory or any directory holding one, and any dir inside a runctl project."""
    hint = "pass --remote-dir a directory of its own, e.g. ~/runctl/NAME"
    if real == "/":
        raise Refused(real, "is the root directory", hint)
    for home in homes():
        if real == home:
            raise Refused(real, "is the home directory", hint)
        if home.startswith(real.rstrip("/") + "/"):
            raise Refused(real, "holds the home directory %s" % home, hint)
    parent = os.path.dirname(real)
    while True:
        if read_owner(parent):
            raise Refused(real, "is inside the runctl project %s" % parent, hint)
        if parent == os.path.dirname(parent):
            break
        parent = os.path.dirname(parent)


def nested_project(real: str) -> Optional[str]:
    """A runctl project below `real` (which a sync with deletion could destroy), if one is found."""
    todo = [(real, 0)]
    visited = 0
    while todo and visited < SCAN_MAX_DIRS:
        directory, depth = todo.pop()
        visited += 1
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if not is_dir or entry.name in SCAN_SKIP:
                continue
            if depth == 0 and entry.name in (*layout.PROTECTED_OUTPUTS, "data"):
                continue  # a code sync never deletes there
            if read_owner(entry.path):
                return entry.path
            if depth + 1 < SCAN_MAX_DEPTH:
                todo.append((entry.path, depth + 1))
    return None


def _os_problem(exc: OSError, what: str) -> HostProblem:
    where = exc.filename or what
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return HostProblem(
            where, "permission denied", "pass --remote-dir a directory this user can write, e.g. ~/runctl/NAME"
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return HostProblem(where, "disk full", "free space there or pass --remote-dir on a bigger disk")
    return HostProblem(where, "cannot use it (%s)" % (exc.strerror or exc), "check the path on the host")


def claim(directory: str, mode: str, project: str) -> List[str]:
    """Check and mark `directory` for `project`; the protect rules the rsync server must apply."""
    real = os.path.realpath(directory)
    if mode == "mkdir":
        try:
            os.makedirs(real, exist_ok=True)
        except OSError as exc:
            raise _os_problem(exc, real) from None
        return [PROTECT_ALL]
    check_place(real)
    if os.path.lexists(real) and not os.path.isdir(real):
        raise Refused(real, "exists and is not a directory", "pass --remote-dir a new or empty dir")
    owner = read_owner(real) if os.path.isdir(real) else None
    nested = nested_project(real) if os.path.isdir(real) else None
    if nested:
        raise Refused(
            real, "holds the runctl project %s" % nested, "pass --remote-dir a directory of its own, e.g. ~/runctl/NAME"
        )
    if owner is not None:
        if owner.get("project") != project:
            raise Refused(
                real,
                "belongs to the runctl project %r" % owner.get("project"),
                "pass --project-name %s to sync that project there, or --remote-dir a new or empty dir"
                % owner.get("project"),
            )
        return protect_rules(list(owner.get("preexisting") or []))
    try:
        existing = sorted(os.listdir(real)) if os.path.isdir(real) else []
    except OSError as exc:
        raise _os_problem(exc, real) from None
    # A run started with --no-sync-code leaves only runctl's own files behind.
    foreign = [name for name in existing if name != layout.RUNCTL_DIR]
    if foreign and mode != "adopt":
        raise Refused(
            real,
            "is not empty and was not created by runctl",
            "a sync there would delete its files: pass --remote-dir a new or empty dir, "
            "or --adopt-remote-dir to use it and keep every file already in it",
        )
    record = {
        "tool": OWNER_TOOL,
        "version": 1,
        "project": project,
        "created_at": time.time(),
        "adopted": bool(foreign),
        "preexisting": foreign,
    }
    try:
        os.makedirs(os.path.join(real, layout.RUNCTL_DIR), exist_ok=True)
        atomic_write_json(owner_path(real), record)  # sort_keys, one line: see owner_fields
    except OSError as exc:
        raise _os_problem(exc, real) from None
    return protect_rules(foreign)


def main(argv: List[str]) -> int:
    """`sync-target DIR MODE PROJECT -- RSYNC-SERVER-ARGS...`: check, claim, then exec rsync."""
    if len(argv) < 4 or argv[1] not in MODES or argv[3] != "--":
        sys.stderr.write("usage: sync-target DIR {claim|adopt|mkdir} PROJECT -- RSYNC-ARGS...\n")
        return 2
    directory, mode, project = argv[0], argv[1], argv[2]
    try:
        rules = claim(directory, mode, project)
    except Refused as exc:
        report = {"path": exc.path, "problem": exc.problem, "hint": exc.hint}
        sys.stderr.write("%s %s\n" % (exc.tag, json.dumps(report)))
        sys.stderr.flush()
        return 4 if isinstance(exc, HostProblem) else 2
    sys.stderr.flush()
    args = ["rsync", *("--filter=" + rule for rule in rules), *argv[4:]]
    try:
        os.execvp("rsync", args)
    except OSError as exc:
        report = {"path": "rsync", "problem": "cannot start (%s)" % exc, "hint": "install rsync on the host"}
        sys.stderr.write("%s %s\n" % (HOST_ERROR, json.dumps(report)))
        return 4
    return 0  # pragma: no cover - exec does not return
