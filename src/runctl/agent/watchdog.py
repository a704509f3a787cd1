"""The host watchdog: a host runctl provisioned powers itself off when no run has been active for
`idle_stop`, so a forgotten cloud host ends its own bill with the laptop closed.

One small detached process per host (a lock file makes a second one exit), started or updated by
`watchdog ensure` with each run, so it comes back with the host's next run. Its directory
(default `~/.runctl/watchdog/`) holds:

  lock            held (flock) by the running watchdog for its whole life
  config.json     settings written by `ensure`: idle_stop, poweroff_cmd, poll, and a fresh token
  state.json      what it did, for the controller (`watchdog status`): settings, idle since,
                  active runs, the power-off it issued (time, command, result), errors, events
  runs/*.json     one file per registered run: its run dir, its agent's pid and that pid's start time
  watchdog.log    its stdout and stderr

A run is active while its agent process is alive (the agent exits once the run and its end-of-run
work are done; a pid reused by another process does not count, thanks to the start time). Each
`ensure`, and each run seen ending, restarts the idle window, measured on the monotonic clock from
the moment it is observed, so the host is never powered off within `idle_stop` of a run's end.
It is started only when asked: nothing in runctl starts it on local or plain SSH hosts by default.
"""

from __future__ import annotations

import argparse
import binascii
import errno
import fcntl
import json
import os
import signal
import stat
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from ..core.durations import duration_seconds, within_bounds
from ..core.fsutil import atomic_write_json, read_json
from . import detach

DEFAULT_DIR = "~/.runctl/watchdog"
DEFAULT_POLL = 5.0
MIN_POLL, MAX_POLL = 0.05, 300.0
# A failed (or unheeded) power-off is tried again after a window of this length at least.
MIN_RETRY = 60.0
POWEROFF_TIMEOUT = 60.0
HEARTBEAT = 60.0  # state.json is rewritten at least this often, so a reader sees the watchdog alive
MAX_EVENTS = 50
MAX_ERRORS = 20
LOCK_WAIT = 2.0  # a starting watchdog waits this long for a lock that a `status` reader holds briefly

LOCK = "lock"
CONFIG = "config.json"
STATE = "state.json"
RUNS = "runs"
LOG = "watchdog.log"


class WatchdogError(Exception):
    """Bad settings or an unusable watchdog directory; the message says what is wrong."""


def default_poweroff_cmd() -> List[str]:
    """`shutdown -h now`, through `sudo -n` when not root (cloud images give their user sudo).

    On EC2 the instance's shutdown behaviour turns this into a stop or a terminate.
    """
    cmd = ["/sbin/shutdown", "-h", "now"]
    return cmd if os.geteuid() == 0 else ["sudo", "-n", *cmd]


# ---- settings ------------------------------------------------------------------------------


def parse_idle_stop(text: Any) -> Optional[float]:
    """Seconds for an idle_stop value (`900`, `15m`, ...); None for `off`."""
    if isinstance(text, str) and text.strip().lower() == "off":
        return None
    seconds = duration_seconds(text)
    if seconds is None or not within_bounds(seconds) or seconds <= 0:
        raise WatchdogError("invalid idle_stop %r: use a positive duration like 900, 15m, 1h, or off" % (text,))
    return seconds


def parse_poweroff_cmd(text: str) -> List[str]:
    """A power-off command given as a JSON list of arguments (no shell ever parses it)."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a and "\0" not in a for a in value):
        raise WatchdogError(
            'invalid power-off command %r: give a JSON list of arguments, e.g. ["sudo", "-n", "shutdown", "-h", "now"]'
            % (text[:80],)
        )
    return value


def parse_poll(value: Any) -> float:
    try:
        poll = float(value)
    except (TypeError, ValueError):
        poll = -1.0
    if not MIN_POLL <= poll <= MAX_POLL:
        raise WatchdogError("invalid poll %r: use seconds between %g and %g" % (value, MIN_POLL, MAX_POLL))
    return poll


def ensure_args(
    idle_stop: Optional[float], poweroff_cmd: Optional[List[str]] = None, poll: Optional[float] = None
) -> List[str]:
    """The agent arguments (after `python3 agent.pyz`) that start or update a watchdog."""
    args = ["watchdog", "ensure", "--idle-stop", "off" if idle_stop is None else repr(float(idle_stop))]
    if poweroff_cmd is not None:
        args += ["--poweroff-cmd", json.dumps(list(poweroff_cmd))]
    if poll is not None:
        args += ["--poll", repr(float(poll))]
    return args


# ---- the directory -------------------------------------------------------------------------


def watchdog_dir(directory: Optional[str] = None) -> str:
    return os.path.abspath(os.path.expanduser(directory or DEFAULT_DIR))


def _prepare_dir(directory: str) -> None:
    """Create the directory (0700); refuse a symlink or a non-directory in its place."""
    for path in (directory, os.path.join(directory, RUNS)):
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            info = os.lstat(path)
        except OSError as exc:
            raise WatchdogError("cannot use %s: %s" % (path, exc.strerror or exc)) from None
        if not stat.S_ISDIR(info.st_mode):
            raise WatchdogError("%s is not a directory (a symlink or a file is in the way)" % path)


def _open_lock(directory: str) -> int:
    try:
        return os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise WatchdogError("cannot open the watchdog lock in %s: %s" % (directory, exc.strerror or exc)) from None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def is_running(directory: Optional[str] = None) -> bool:
    """Whether a watchdog holds the lock of `directory` (tested without waiting)."""
    directory = watchdog_dir(directory)
    if not os.path.isdir(directory):
        return False
    fd = _open_lock(directory)
    try:
        if _try_lock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        return True
    finally:
        os.close(fd)


def _entry_path(directory: str, run_dir: str) -> str:
    import hashlib  # here, not at the top: every agent command imports this module for its parser

    name = hashlib.sha256(os.path.abspath(run_dir).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return os.path.join(directory, RUNS, name + ".json")


def process_start(pid: int) -> Optional[int]:
    """The start time of `pid` in clock ticks since boot (Linux), None where it cannot be read."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[-1].split()
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int, start: Optional[int] = None) -> bool:
    """True while `pid` exists, is not a zombie, and (when known) still started at `start`."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[-1].split()
    except OSError:
        return True  # no /proc (not Linux): os.kill is all we know
    if fields and fields[0] in (b"Z", b"X"):
        return False
    return start is None or process_start(pid) == start


def register_run(run_dir: str, pid: int, directory: Optional[str] = None) -> str:
    """Tell the watchdog that `run_dir` is active while `pid` (its agent) lives; returns the entry path.

    Agents call this at start when their spec enables the watchdog; the watchdog removes the entry
    once the pid is gone.
    """
    directory = watchdog_dir(directory)
    _prepare_dir(directory)
    path = _entry_path(directory, run_dir)
    entry = {
        "run_dir": os.path.abspath(run_dir),
        "pid": int(pid),
        "pid_start": process_start(int(pid)),
        "registered_at": time.time(),
    }
    atomic_write_json(path, entry, fsync=False, mode=0o600)
    return path


def unregister_run(run_dir: str, directory: Optional[str] = None) -> bool:
    try:
        os.unlink(_entry_path(watchdog_dir(directory), run_dir))
        return True
    except FileNotFoundError:
        return False


def write_config(
    directory: str, idle_stop: Optional[float], poweroff_cmd: List[str], poll: float, notify: Optional[List[str]] = None
) -> Dict[str, Any]:
    config = {
        "idle_stop": idle_stop,
        "poweroff_cmd": list(poweroff_cmd),
        "poll": poll,
        "notify": parse_notify(notify),
        "written_at": time.time(),
        # A fresh token per `ensure`: the watchdog takes any new one as activity (a run is starting).
        "token": binascii.hexlify(os.urandom(8)).decode(),
    }
    atomic_write_json(os.path.join(directory, CONFIG), config, fsync=False, mode=0o600)
    return config


def read_config(directory: str) -> Optional[Dict[str, Any]]:
    """The settings in config.json, validated; None when missing or invalid."""
    raw = read_json(os.path.join(directory, CONFIG))
    if raw is None:
        return None
    try:
        idle_stop = None if raw.get("idle_stop") is None else parse_idle_stop(raw["idle_stop"])
        cmd = raw.get("poweroff_cmd")
        poweroff_cmd = parse_poweroff_cmd(json.dumps(cmd)) if cmd is not None else default_poweroff_cmd()
        poll = parse_poll(raw.get("poll", DEFAULT_POLL))
    except WatchdogError:
        return None
    notify = parse_notify(raw.get("notify"))
    return {
        "idle_stop": idle_stop, "poweroff_cmd": poweroff_cmd, "poll": poll, "notify": notify,
        "token": str(raw.get("token")),
    }  # fmt: skip


def parse_notify(value: Any) -> List[str]:
    """Webhook URLs told of a `leak` before a power-off (http/https only); anything else is dropped."""
    if not isinstance(value, list):
        return []
    return [u for u in value if isinstance(u, str) and u.startswith(("http://", "https://"))]


def read_state(directory: Optional[str] = None) -> Dict[str, Any]:
    """What the controller reads: the state file, whether a watchdog runs, and its settings."""
    directory = watchdog_dir(directory)
    return {
        "dir": directory,
        "running": is_running(directory),
        "state": read_json(os.path.join(directory, STATE)),
        "config": read_json(os.path.join(directory, CONFIG)),
    }


# ---- the watchdog process ------------------------------------------------------------------


class Watchdog:
    """The loop: read settings, look at the registered runs, power off after a full idle window."""

    def __init__(self, directory: str, clock: Any = time.monotonic, wall: Any = time.time) -> None:
        self.dir = directory
        self.clock, self.wall = clock, wall
        self.stopping = False
        self.config: Optional[Dict[str, Any]] = None
        self.bad_config = False
        self.idle_from: Optional[float] = clock()  # monotonic; None while a run is active
        self.idle_since_wall: Optional[float] = wall()
        self.last_issue: Optional[float] = None
        self.last_write = 0.0
        self.written: Optional[Dict[str, Any]] = None
        self.state: Dict[str, Any] = {
            "pid": os.getpid(),
            "pid_start": process_start(os.getpid()),
            "started_at": wall(),
            "status": "watching",
            "settings": None,
            "idle_since": self.idle_since_wall,
            "poweroff_at": None,
            "active_runs": [],
            "poweroff": None,
            "errors": [],
            "events": [],
            "last_poll": None,
        }

    # -- records

    def event(self, kind: str, **data: Any) -> None:
        self.state["events"] = (self.state["events"] + [dict(t=self.wall(), kind=kind, **data)])[-MAX_EVENTS:]
        sys.stdout.write(json.dumps({"t": self.wall(), "kind": kind, **data}, sort_keys=True) + "\n")
        sys.stdout.flush()

    def error(self, message: str) -> None:
        self.state["errors"] = (self.state["errors"] + [{"t": self.wall(), "message": message}])[-MAX_ERRORS:]
        self.event("error", message=message)

    def save(self, force: bool = False, fsync: bool = False) -> None:
        """Rewrite state.json when something changed (or for the heartbeat)."""
        content = {k: v for k, v in self.state.items() if k != "last_poll"}
        if not force and content == self.written and self.clock() - self.last_write < HEARTBEAT:
            return
        try:
            atomic_write_json(os.path.join(self.dir, STATE), self.state, fsync=fsync, mode=0o644)
        except OSError as exc:
            sys.stderr.write("cannot write %s: %s\n" % (STATE, exc))
            return
        self.written = json.loads(json.dumps(content))
        self.last_write = self.clock()

    # -- one poll

    def activity(self) -> None:
        """Something happened that a power-off must wait a full window after."""
        now = self.clock()
        if self.idle_from is not None:
            self.idle_from = now
            self.idle_since_wall = self.wall()
        self.last_issue = None

    def read_settings(self) -> None:
        config = read_config(self.dir)
        if config is None:
            if self.config is None:
                raise WatchdogError("no valid %s in %s" % (CONFIG, self.dir))
            if not self.bad_config:
                self.error("%s is missing or invalid: keeping the previous settings" % CONFIG)
            self.bad_config = True
            return
        self.bad_config = False
        if self.config is None or config["token"] != self.config["token"]:
            settings = {k: config[k] for k in ("idle_stop", "poweroff_cmd", "poll")}
            if self.config is not None:
                self.activity()
            if settings != self.state["settings"]:
                self.event("settings", **settings)
            self.state["settings"] = settings
        self.config = config

    def scan(self) -> List[str]:
        """The active runs' dirs; entries of runs that ended are removed (and restart the window)."""
        runs_dir = os.path.join(self.dir, RUNS)
        active = []
        try:
            names = sorted(os.listdir(runs_dir))
        except FileNotFoundError:
            _prepare_dir(self.dir)  # removed by hand: no run is registered
            names = []
        except OSError as exc:
            self.error("cannot list %s: %s" % (runs_dir, exc))
            self.activity()  # unknown: the window starts again rather than assume idle
            return list(self.state["active_runs"])
        for name in names:
            if not name.endswith(".json"):
                continue
            path = os.path.join(runs_dir, name)
            entry = read_json(path) or {}
            pid = entry.get("pid")
            if not isinstance(pid, int) or isinstance(pid, bool):
                if os.path.exists(path):
                    self.error("unreadable run registration %s: removed" % name)
                self._remove(path)
                continue
            start = entry.get("pid_start")
            if process_alive(pid, start if isinstance(start, int) else None):
                active.append(str(entry.get("run_dir")))
                continue
            self._remove(path)
            self.event("run_ended", run_dir=str(entry.get("run_dir")), pid=pid)
            self.activity()
        return active

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass

    def poll(self) -> Optional[float]:
        """One look; returns seconds to sleep, or None when the watchdog should exit."""
        self.read_settings()
        assert self.config is not None
        idle_stop = self.config["idle_stop"]
        if idle_stop is None:
            self.event("disabled")
            return None
        active = self.scan()
        if active != self.state["active_runs"]:
            self.state["active_runs"] = active
        now = self.clock()
        if active:
            self.idle_from = None
            self.idle_since_wall = None
        elif self.idle_from is None:
            self.idle_from, self.idle_since_wall = now, self.wall()
        self.state["idle_since"] = self.idle_since_wall
        self.state["last_poll"] = self.wall()
        poll = self.config["poll"]
        if self.idle_from is None:
            self.state["poweroff_at"] = None
            return poll
        due = self.idle_from + idle_stop
        if self.last_issue is not None:
            due = max(due, self.last_issue + max(idle_stop, MIN_RETRY))
        self.state["poweroff_at"] = self.wall() + (due - now)
        if now >= due:
            self.power_off(idle_stop)
            return poll
        return max(MIN_POLL, min(poll, due - now))

    def power_off(self, idle_stop: float) -> None:
        assert self.config is not None
        cmd = self.config["poweroff_cmd"]
        idle_for = 0.0 if self.idle_from is None else self.clock() - self.idle_from
        record: Dict[str, Any] = {"issued_at": self.wall(), "cmd": cmd, "idle_for": round(idle_for, 3)}
        self.state["poweroff"] = record
        self.state["status"] = "powering_off"
        self.last_issue = self.clock()
        self.event("poweroff_issued", cmd=cmd, idle_for=record["idle_for"], idle_stop=idle_stop)
        self.save(force=True, fsync=True)  # the command may end this process before it returns
        self.tell_leak(idle_for, idle_stop)
        import subprocess  # already loaded by _serve_locked; lazy for the agent's other commands

        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=POWEROFF_TIMEOUT,
                close_fds=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            record.update(exit_code=None, error=str(exc))
            self.state["status"] = "watching"
            self.error("power-off command failed: %s" % exc)
        else:
            output = proc.stdout.decode("utf-8", "replace")[-2000:]
            record.update(exit_code=proc.returncode, output=output, returned_at=self.wall())
            if proc.returncode == 0:
                self.state["status"] = "poweroff_issued"
                self.event("poweroff_returned", exit_code=0)
            else:
                self.state["status"] = "watching"
                self.error("power-off command exited with %d: %s" % (proc.returncode, output.strip()[-300:]))
        self.save(force=True, fsync=True)

    def tell_leak(self, idle_for: float, idle_stop: float) -> None:
        """A `leak` event to the runs' webhooks before the power-off: a host was billing with no run."""
        urls = (self.config or {}).get("notify") or []
        if not urls:
            return
        import socket

        from .notify import Notifier

        host = socket.gethostname()
        notifier = Notifier(urls, lambda url, why: self.error("leak notification to %s failed: %s" % (url, why)))
        notifier.send(
            {
                "event": "leak",
                "host": host,
                "idle_for": round(idle_for, 1),
                "idle_stop": idle_stop,
                "message": "host %s had no run for %.0fs (idle-stop %gs): powering it off"
                % (host, idle_for, idle_stop),
            }
        )
        notifier.flush()  # bounded (the webhook timeout): the bill must end either way

    # -- the loop

    def serve(self) -> int:
        while not self.stopping:
            try:
                delay = self.poll()
            except Exception as exc:  # keep watching: a bad moment must not leave the host unwatched
                self.error("poll failed: %r" % (exc,))
                delay = self.config["poll"] if self.config else DEFAULT_POLL
            if delay is None:
                break
            self.save()
            deadline = self.clock() + delay
            while not self.stopping and self.clock() < deadline:
                time.sleep(min(0.5, max(0.0, deadline - self.clock())))
        if self.stopping:
            self.event("stopped", reason="signal")
        self.state["status"] = "stopped"
        self.state["poweroff_at"] = None
        self.save(force=True)
        return 0


def _serve_locked(directory: str, ready_fd: Optional[int]) -> int:
    """Take the lock (or report who has it), then watch until told to stop."""

    def ready(message: Dict[str, Any]) -> None:
        if ready_fd is not None:
            os.write(ready_fd, json.dumps(message).encode())
            os.close(ready_fd)

    import subprocess  # noqa: F401 - loaded now, while the agent zip it comes from is surely in place

    lock_fd = _open_lock(directory)
    deadline = time.monotonic() + LOCK_WAIT
    while not _try_lock(lock_fd):
        if time.monotonic() >= deadline:
            state = read_json(os.path.join(directory, STATE)) or {}
            ready({"ok": True, "started": False, "pid": state.get("pid")})
            return 0
        time.sleep(0.05)
    watchdog = Watchdog(directory)

    def stop(signum: int, frame: Any) -> None:
        watchdog.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        watchdog.read_settings()
    except WatchdogError as exc:
        ready({"ok": False, "error": str(exc)})
        return 1
    watchdog.event("started", pid=os.getpid())
    watchdog.save(force=True)
    ready({"ok": True, "started": True, "pid": os.getpid()})
    while True:
        watchdog.serve()
        if watchdog.stopping:
            return 0
        # Disabled: let go of the lock, then look at the settings once more. An `ensure` that wrote
        # new ones meanwhile either saw the lock held (so this process must carry on) or saw it
        # free and started another watchdog (then taking the lock again fails and this one exits).
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        config = read_config(directory)
        if config is None or config["idle_stop"] is None or not _try_lock(lock_fd):
            return 0
        watchdog.state["status"] = "watching"
        watchdog.event("enabled_again")


def _spawn(directory: str) -> Dict[str, Any]:
    """Start the watchdog detached (double fork + setsid, as the agent's launch does)."""
    message = detach.spawn(os.path.join(directory, LOG), lambda ready: _serve_locked(directory, ready), chdir="/")
    if message is None:
        message = {"ok": False, "error": "the watchdog exited before starting (see %s)" % os.path.join(directory, LOG)}
    return message


def ensure(
    idle_stop: Optional[float],
    poweroff_cmd: Optional[List[str]] = None,
    poll: float = DEFAULT_POLL,
    directory: Optional[str] = None,
    notify: Optional[List[str]] = None,
) -> Dict[str, Any]:
    """Start the watchdog if none runs, and (re)write its settings; a running one picks them up
    at its next poll. Each call restarts the idle window. `idle_stop=None` (off) starts nothing and
    makes a running watchdog exit."""
    directory = watchdog_dir(directory)
    _prepare_dir(directory)
    cmd = list(poweroff_cmd) if poweroff_cmd is not None else default_poweroff_cmd()
    config = write_config(directory, idle_stop, cmd, poll, notify)
    settings = {k: config[k] for k in ("idle_stop", "poweroff_cmd", "poll")}
    if is_running(directory):
        state = read_json(os.path.join(directory, STATE)) or {}
        return {"ok": True, "started": False, "running": True, "pid": state.get("pid"), "settings": settings}
    if idle_stop is None:
        return {"ok": True, "started": False, "running": False, "pid": None, "settings": settings}
    message = _spawn(directory)
    message.setdefault("running", bool(message.get("ok")))
    message["settings"] = settings
    return message


def before_launch(settings: Any) -> Dict[str, Any]:
    """The agent's first hook for a run whose spec carries a `watchdog` block, before the run
    starts: start or update the watchdog, which also restarts its idle window, so no power-off can
    fall between the run's start and its registration (`after_launch`). Never raises: the run goes
    on either way, and the answer (`ok` false with the error) tells the controller what happened.

    `settings`: {"idle_stop": 900 | "15m" | "off", "poweroff_cmd": [...] (optional),
    "poll": 5 (optional), "dir": "~/.runctl/watchdog" (optional)}.
    """
    try:
        if not isinstance(settings, dict) or "idle_stop" not in settings:
            raise WatchdogError("the spec's watchdog block needs idle_stop")
        idle_stop = parse_idle_stop(settings["idle_stop"])
        cmd = settings.get("poweroff_cmd")
        poweroff_cmd = None if cmd is None else parse_poweroff_cmd(json.dumps(cmd))
        poll = parse_poll(settings.get("poll", DEFAULT_POLL))
        directory = settings.get("dir")
        if directory is not None and not isinstance(directory, str):
            raise WatchdogError("the watchdog dir must be a path")
        return ensure(idle_stop, poweroff_cmd, poll, directory, parse_notify(settings.get("notify")))
    except (WatchdogError, OSError) as exc:
        return {"ok": False, "error": str(exc)}


def after_launch(settings: Any, answer: Dict[str, Any], run_dir: str, agent_pid: int) -> Dict[str, Any]:
    """The second hook, once the run's agent is up: register the run (while `agent_pid` lives)."""
    if not answer.get("ok") or answer.get("settings", {}).get("idle_stop") is None:
        return answer
    try:
        directory = settings.get("dir") if isinstance(settings, dict) else None
        return dict(answer, registered=register_run(run_dir, agent_pid, directory))
    except (WatchdogError, OSError) as exc:
        return {"ok": False, "error": str(exc)}


def stop(directory: Optional[str] = None, timeout: float = 10.0) -> Dict[str, Any]:
    """SIGTERM the running watchdog and wait until it has let go of its lock."""
    directory = watchdog_dir(directory)
    if not is_running(directory):
        return {"ok": True, "stopped": False, "running": False}
    state = read_json(os.path.join(directory, STATE)) or {}
    pid, start = state.get("pid"), state.get("pid_start")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return {"ok": False, "error": "a watchdog holds the lock but %s names no pid" % STATE}
    # The pid and its start time, as the watchdog wrote them: a stale file never gets another
    # process signalled.
    if not process_alive(pid, start if isinstance(start, int) else None):
        return {"ok": False, "error": "a watchdog holds the lock but pid %d in %s is not it" % (pid, STATE)}
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while is_running(directory):
        if time.monotonic() >= deadline:
            return {"ok": False, "error": "the watchdog (pid %d) did not stop within %gs" % (pid, timeout)}
        time.sleep(0.05)
    return {"ok": True, "stopped": True, "running": False, "pid": pid}


# ---- command line (`python3 agent.pyz watchdog ...`) ----------------------------------------


def add_parser(sub: Any) -> None:
    """Register `watchdog` and its subcommands on the agent's argparse subparsers."""
    parser = sub.add_parser("watchdog", help="the host watchdog: power off after idle_stop with no active run")
    commands = parser.add_subparsers(dest="watchdog_command", required=True)
    p = commands.add_parser("ensure", help="start it if not running and (re)write its settings")
    p.add_argument("--idle-stop", required=True, help="a duration (900, 15m, 1h) or off")
    p.add_argument("--poweroff-cmd", default=None, help="JSON list of arguments (default: shutdown -h now)")
    p.add_argument("--poll", default=str(DEFAULT_POLL), help="seconds between looks (default 5)")
    p.add_argument("--notify", action="append", default=None, help="webhook told of a leak before a power-off")
    p.add_argument("--dir", default=None, help="its directory (default %s)" % DEFAULT_DIR)
    p = commands.add_parser("status", help="its state file, settings and whether it runs")
    p.add_argument("--dir", default=None)
    p = commands.add_parser("stop", help="stop it (the host stays up)")
    p.add_argument("--dir", default=None)
    p = commands.add_parser("register", help="mark a run active while its agent pid lives")
    p.add_argument("run_dir")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--dir", default=None)
    p = commands.add_parser("unregister")
    p.add_argument("run_dir")
    p.add_argument("--dir", default=None)


def run_command(args: argparse.Namespace) -> Tuple[Dict[str, Any], int]:
    """Run one parsed `watchdog` subcommand: (JSON result, exit code); bad input is exit 2."""
    try:
        if args.watchdog_command == "ensure":
            idle_stop = parse_idle_stop(args.idle_stop)
            cmd = parse_poweroff_cmd(args.poweroff_cmd) if args.poweroff_cmd is not None else None
            result = ensure(idle_stop, cmd, parse_poll(args.poll), args.dir, parse_notify(args.notify))
        elif args.watchdog_command == "status":
            result = {"ok": True, **read_state(args.dir)}
        elif args.watchdog_command == "stop":
            result = stop(args.dir)
        elif args.watchdog_command == "register":
            if args.pid <= 0:
                raise WatchdogError("invalid pid %d" % args.pid)
            result = {"ok": True, "entry": register_run(args.run_dir, args.pid, args.dir)}
        else:
            result = {"ok": True, "removed": unregister_run(args.run_dir, args.dir)}
    except WatchdogError as exc:
        return {"ok": False, "error": str(exc)}, 2
    return result, 0 if result.get("ok") else 1
