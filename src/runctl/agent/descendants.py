"""Every process a run starts, found and stopped with it, even ones that left its session.

A child that calls setsid() leaves the process group, and one started with `env -i` carries no
RUNCTL_RUN_ID. Two mechanisms find it anyway:

- a cgroup (v2) of the run's own, where the agent may create one (root, or a delegated
  subtree): every process the run starts is put there and no descendant can leave it;
- else, and always as well, the process tree: the agent makes itself a *child subreaper*, so an
  orphaned descendant is re-parented to the agent (not to init) and its parent chain still leads
  here. The agent scans /proc as it polls and records each descendant (pid and kernel start time)
  the first time it is seen, so one that escapes anyway is still known by its recorded identity.

A pid is only ever signalled while its start time matches the record, so a reused pid is never
killed. `RUNCTL_CGROUP=off` in the agent's environment turns the cgroup off.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Set

from . import procs

PR_SET_CHILD_SUBREAPER = 36
COMMAND_CHARS = 200
CGROUP_PREFIX = "runctl-"
STALE_CGROUP_SECONDS = 600.0


class ProcInfo(NamedTuple):
    ppid: int
    pgrp: int
    state: str
    start: str


class Known(NamedTuple):
    pid: int
    start: str


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process instead of init (Linux >= 3.4)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _unescape(field: str) -> str:
    """Octal escapes of /proc/self/mountinfo (a space is \\040)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def own_cgroup_dir() -> Optional[str]:
    """The directory of this process's cgroup v2, or None (no cgroup2 mount, or not visible)."""
    try:
        with open("/proc/self/cgroup") as handle:
            lines = handle.read().splitlines()
        with open("/proc/self/mountinfo") as handle:
            mounts = handle.read().splitlines()
    except OSError:
        return None
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    if own is None:
        return None
    for line in mounts:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or not right.startswith("cgroup2 ") or len(fields) < 5:
            continue
        root, mount = _unescape(fields[3]), _unescape(fields[4])
        if own == root or own.startswith(root.rstrip("/") + "/"):
            return os.path.join(mount, own[len(root.rstrip("/")) :].lstrip("/"))
    return None


class RunCgroup:
    """A cgroup v2 holding every process of one run; processes inside cannot leave it by themselves."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls, run_id: str) -> "Optional[RunCgroup]":
        """A new cgroup next to the agent's own (its child), or None where that is not allowed."""
        if os.environ.get("RUNCTL_CGROUP", "").lower() in ("off", "0", "no"):
            return None
        parent = own_cgroup_dir()
        if parent is None or not os.path.isfile(os.path.join(parent, "cgroup.procs")):
            return None
        sweep_empty_cgroups(parent)
        path = os.path.join(parent, CGROUP_PREFIX + run_id)
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        except OSError:
            return None
        return cls(path)

    def add(self, pid: int) -> bool:
        try:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as handle:
                handle.write("%d\n" % pid)
            return True
        except OSError:
            return False

    def members(self) -> List[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as handle:
                return [int(line) for line in handle.read().split()]
        except (OSError, ValueError):
            return []

    def kill(self) -> bool:
        """SIGKILL every member at once, forks in flight included (Linux >= 5.14)."""
        try:
            with open(os.path.join(self.path, "cgroup.kill"), "w") as handle:
                handle.write("1\n")
            return True
        except OSError:
            return False

    def remove(self) -> bool:
        try:
            os.rmdir(self.path)
            return True
        except OSError:
            return False


def sweep_empty_cgroups(parent: str, older_than: float = STALE_CGROUP_SECONDS) -> None:
    """Remove runs' cgroups left empty by agents that were killed (an empty cgroup holds nothing:
    at worst a live agent's own goes early, and it then tracks its run by the process tree)."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(CGROUP_PREFIX)]
    except OSError:
        return
    now = time.time()
    for name in names:
        path = os.path.join(parent, name)
        try:
            if now - os.stat(path).st_ctime < older_than:
                continue
        except OSError:
            continue
        group = RunCgroup(path)
        if not group.members():
            group.remove()


def release_cgroup(path: Optional[str], run_id: str) -> bool:
    """Remove the run's cgroup left by an agent that died, once empty. Only ever a cgroup named
    for this run (what a status file says is not trusted further than that)."""
    if not path or os.path.basename(path) != CGROUP_PREFIX + run_id:
        return False
    if not os.path.isfile(os.path.join(path, "cgroup.procs")):
        return False
    return RunCgroup(path).remove()


def read_stat(pid: int) -> Optional[ProcInfo]:
    fields = procs.stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    try:
        return ProcInfo(int(fields[1]), int(fields[2]), fields[0], fields[19])
    except ValueError:
        return None


def snapshot() -> Dict[int, ProcInfo]:
    """Every process visible in /proc, by pid ({} where there is no /proc)."""
    found: Dict[int, ProcInfo] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if entry.isdigit():
            info = read_stat(int(entry))
            if info is not None:
                found[int(entry)] = info
    return found


def descendants_of(roots: Iterable[int], table: Dict[int, ProcInfo]) -> List[int]:
    """Pids whose parent chain leads to one of `roots` (not the roots themselves), from one snapshot."""
    children: Dict[int, List[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.ppid, []).append(pid)
    found: List[int] = []
    seen: Set[int] = set(roots)
    todo = [child for root in seen for child in children.get(root, [])]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def command_of(pid: int) -> str:
    """The process's command line (its name when that is unreadable), for the run's events."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            text = handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    if not text:
        try:
            with open("/proc/%d/comm" % pid, "rb") as handle:
                text = "[%s]" % handle.read().decode("utf-8", "replace").strip()
        except OSError:
            text = "?"
    return text[:COMMAND_CHARS]


class Tracker:
    """The descendants of one agent (the run's processes), recorded as they appear."""

    def __init__(self, root: int, run_id: str, on_new: Optional[Callable[[Known], None]] = None) -> None:
        self.root = root
        self.run_id = run_id
        self.known: Dict[int, Known] = {}
        self.groups: Set[int] = set()
        self.cgroup: Optional[RunCgroup] = None
        self.on_new = on_new
        self.last_table: Dict[int, ProcInfo] = {}
        self.exempt: Dict[int, str] = {}  # pid -> start time: the agent's own helpers, not the run's

    def exempt_process(self, pid: int) -> None:
        """A child of the agent that is not part of the run (the checkpoint uploader): never recorded,
        signalled or reaped with the run's processes, so it outlives the script's end."""
        start = procs.start_time(pid)
        if start is not None:
            self.exempt[pid] = start

    def _exempt_tree(self, table: Dict[int, ProcInfo]) -> Set[int]:
        """Exempt processes still running as recorded, and their descendants."""
        live = [pid for pid, start in self.exempt.items() if getattr(table.get(pid), "start", None) == start]
        return set(live) | set(descendants_of(live, table)) if live else set()

    @classmethod
    def from_records(cls, run_id: str, records: List[Dict[str, Any]], cgroup: Optional[str]) -> "Tracker":
        """What a dead agent knew of its run (its recorded descendants, its cgroup), to stop them."""
        tracker = cls(-1, run_id)
        for record in records:
            if isinstance(record.get("pid"), int) and record.get("start"):
                tracker.known[record["pid"]] = Known(record["pid"], str(record["start"]))
        if cgroup and os.path.basename(cgroup) == CGROUP_PREFIX + run_id and os.path.isdir(cgroup):
            tracker.cgroup = RunCgroup(cgroup)  # only the run's own: never another cgroup's members
        return tracker

    def use_cgroup(self) -> Optional[str]:
        """Put the run's processes in a cgroup of their own where allowed; its path, or None."""
        self.cgroup = RunCgroup.create(self.run_id)
        return self.cgroup.path if self.cgroup else None

    def preexec(self) -> "Optional[Callable[[], None]]":
        """For Popen: the child joins the run's cgroup itself, before exec, so nothing it forks in its
        first instants starts outside it (adopt() after the start would race with those forks)."""
        if self.cgroup is None:
            return None
        procs_file = os.path.join(self.cgroup.path, "cgroup.procs")

        def enter() -> None:
            try:
                fd = os.open(procs_file, os.O_WRONLY)
                try:
                    os.write(fd, b"%d\n" % os.getpid())
                finally:
                    os.close(fd)
            except OSError:
                pass  # adopt() after the start finds out and falls back to the process tree

        return enter

    def adopt(self, pid: int) -> None:
        """A process the agent just started: into the run's cgroup, and recorded."""
        if self.cgroup is not None and not self.cgroup.add(pid):
            self.cgroup.remove()
            self.cgroup = None  # not allowed after all: the process tree alone tracks the run
        start = procs.start_time(pid)
        if start is not None and pid not in self.known:
            self.known[pid] = Known(pid, start)
            if self.on_new is not None:
                self.on_new(self.known[pid])

    def close(self) -> None:
        """Remove the run's cgroup once it is empty (kept, harmlessly, if anything survived)."""
        if self.cgroup is not None and not self.cgroup.members():
            self.cgroup.remove()

    def watch_group(self, pgid: int) -> None:
        """Members of this process group belong to the run even if they were re-parented away."""
        self.groups.add(pgid)

    def scan(self) -> List[Known]:
        """Record descendants seen for the first time; returns them."""
        table = self.last_table = snapshot()
        new: List[Known] = []
        roots = [self.root] + [
            r.pid for r in self.known.values() if getattr(table.get(r.pid), "start", None) == r.start
        ]
        candidates = descendants_of(roots, table)
        candidates += [pid for pid, info in table.items() if info.pgrp in self.groups and pid != self.root]
        if self.cgroup is not None:
            candidates += self.cgroup.members()
        exempt = self._exempt_tree(table) if self.exempt else set()
        for pid in candidates:
            if pid in exempt:
                continue
            info = table.get(pid)
            if info is None or info.state == "Z":
                continue
            record = self.known.get(pid)
            if record is not None and record.start == info.start:
                continue
            record = Known(pid, info.start)
            self.known[pid] = record
            new.append(record)
            if self.on_new is not None:
                self.on_new(record)
        return new

    def reap(self, keep: Iterable[int] = (), fresh: bool = True) -> None:
        """Collect exited orphans re-parented to the agent; `keep` are children a Popen still waits for.

        With `fresh=False` the table of the last scan is used (one /proc pass per poll, not two).
        """
        kept = set(keep) | set(self.exempt)  # an exempt child's exit is collected by its own Popen
        for pid, info in (snapshot() if fresh else self.last_table).items():
            if info.ppid == self.root and info.state == "Z" and pid not in kept:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except OSError:
                    pass

    def alive(self) -> List[Known]:
        """Recorded descendants still running with the start time they were recorded with."""
        living = []
        for record in list(self.known.values()):
            info = read_stat(record.pid)
            if info is None or info.start != record.start or info.state == "Z":
                self.known.pop(record.pid, None)
                continue
            living.append(record)
        return living

    def signal_all(self, sig: int, group: int = 0) -> List[Dict[str, object]]:
        """Send `sig` to process group `group` (when given), then to every other live descendant and
        every RUNCTL_RUN_ID-tagged process. Each process gets the signal once.

        Returns what was signalled outside the group, with its command line, for the run's events.
        """
        if group:
            procs.signal_group(group, sig)
        self.scan()
        skip = {self.root, os.getpid()} | self._exempt_tree(self.last_table)
        targets = {r.pid: r.start for r in self.alive() if r.pid not in skip}
        for pid in procs.tagged_processes(self.run_id):
            if pid not in skip and pid not in targets:
                start = procs.start_time(pid)
                if start is not None:
                    targets[pid] = start
        sent: List[Dict[str, object]] = []
        for pid, start in sorted(targets.items()):
            info = read_stat(pid)
            if info is None or info.start != start:
                continue  # it exited (and its pid may be reused): not ours to signal
            if group and info.pgrp == group:
                continue  # the group signal reached it already
            command = command_of(pid)
            try:
                os.kill(pid, sig)
            except OSError:
                continue
            sent.append({"pid": pid, "command": command})
        if sig == signal.SIGKILL and self.cgroup is not None:
            self.cgroup.kill()  # and whatever was forked in between
        return sent

    def any_alive(self, group: int = 0) -> bool:
        """Whether any recorded process or member of `group` still runs (zombies do not count)."""
        if self.alive():
            return True
        return bool(group) and any(i.pgrp == group and i.state != "Z" for i in snapshot().values())

    def kill_all(self, grace: float, group: int = 0, keep: Iterable[int] = ()) -> List[Dict[str, object]]:
        """SIGTERM the run's group and every other process of the run, wait up to `grace`, SIGKILL
        what remains. Returns each process signalled outside the group, with the last signal it got.
        """
        kept = list(keep)
        result: Dict[int, Dict[str, object]] = {}
        for entry in self.signal_all(signal.SIGTERM, group):
            result[int(str(entry["pid"]))] = dict(entry, signal="SIGTERM")
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.reap(kept)
            if not self.any_alive(group) and not procs.tagged_processes(self.run_id):
                break
            time.sleep(0.02)
        else:
            for entry in self.signal_all(signal.SIGKILL, group):
                result[int(str(entry["pid"]))] = dict(entry, signal="SIGKILL")
        self.reap(kept)
        return [result[pid] for pid in sorted(result)]
