"""The supervisor of one run: starts the script, owns its run directory, enforces policies.

It runs detached from the controller (own session, stdio on files), so killing or closing the
terminal of the `runctl` that started it changes nothing. Everything it knows is written to the
run directory, which stays the source of truth.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..core import checkpoints, completion, failure, layout, metrics, policies, stopping
from ..core import status as st
from ..core.fsutil import (
    PRIVATE_FILE,
    append_json,
    atomic_write,
    atomic_write_json,
    disk_full,
    read_json,
    read_text,
    release_space,
    write_failed,
)
from . import descendants, ops, procs, pyenv
from .logtail import LogTail
from .notify import Notifier

if TYPE_CHECKING:
    from .ttylog import PtyLog

TICK_SECONDS = 0.1
# A live metric reaches status.json within about 0.3 s of its line being printed.
STATUS_MIN_INTERVAL = 0.15
DRAIN_SECONDS = 2.0
LEFTOVER_GRACE = 5.0
SCAN_SECONDS = 1.0  # how often the run's process tree is scanned for new descendants
TAIL_BYTES = 1 << 16
LOG_METRIC_DELAY = 0.08
PTY_INTERVAL = 0.01
READ_BYTES = 1 << 18


def artifact_root() -> Optional[str]:
    """The agent zip this code runs from, if any: put on the script's path for runctl.training."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return root if os.path.isfile(root) else None


class Supervisor:
    def __init__(self, run_dir: str, ready_fd: Optional[int] = None) -> None:
        self.run_dir = os.path.abspath(run_dir)
        spec = read_json(os.path.join(self.run_dir, layout.SPEC))
        if spec is None:
            raise RuntimeError("no readable %s in %s" % (layout.SPEC, self.run_dir))
        self.spec: Dict[str, Any] = spec
        self.run_id: str = spec["run_id"]
        self.project_dir: str = spec["project_dir"]
        self.ready_fd = ready_fd
        self.state: Dict[str, Any] = read_json(self.path(layout.STATUS)) or {}
        self.state.setdefault("seq", 0)
        self.state.update(
            {
                "run_id": self.run_id,
                "name": spec.get("name"),
                "agent_pid": os.getpid(),
                "agent_start": procs.start_time(os.getpid()),
            }
        )
        self.proc: Optional[subprocess.Popen] = None
        self.pgid = 0
        self.log_fd = -1
        self.tail_fd = -1
        self.pty: Optional["PtyLog"] = None
        self.metrics_offset = 0
        self.helper_reports = False
        self.log_records: List[Dict[str, Any]] = []
        custom = spec.get("metrics_regex")
        self.logtail = LogTail(re.compile(custom) if custom else None)
        self.stop_reason: Optional[policies.Decision] = None
        self.stop_seq: Optional[stopping.Sequence] = None
        self.stop_request_seen: Any = None
        self.tracker = descendants.Tracker(os.getpid(), self.run_id, on_new=self.record_descendant)
        self.next_scan = 0.0
        self.subreaper = False
        self.status_stamp: Any = None
        self.signal_stop = ""
        self.signal_at: Optional[float] = None
        self.exited_at: Optional[float] = None
        self.last_status_write = 0.0
        self.dirty = False
        self.losses: List[float] = []
        self.first_metric: Optional[Dict[str, Any]] = None
        self.training_log_mtime: Optional[float] = None
        self.engine: Optional[policies.PolicyEngine] = None
        self.notifier = Notifier(spec.get("notify") or [], self._notify_failed)
        self.marker_path = os.path.join(self.project_dir, layout.MARKER)
        self.stop_file = self.path(layout.STOP_FILE)
        self.original_stop_file = os.path.join(self.project_dir, layout.ORIGINAL_STOP_FILE)

    # ---- small helpers -------------------------------------------------------------------

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    @property
    def term_sent(self) -> bool:
        return self.stop_seq is not None and self.stop_seq.term_sent_at is not None

    def event(self, name: str, **data: Any) -> None:
        data.update({"t": time.time(), "event": name})
        append_json(self.path(layout.EVENTS), data)

    def write_status(self, fsync: bool = False, **changes: Any) -> None:
        new = changes.get("status")
        if new is not None and new != self.state.get("status"):
            if not st.can_advance(self.state.get("status", st.PENDING), new):
                changes.pop("status")
        self.state.update(changes)
        self.state["seq"] = int(self.state.get("seq", 0)) + 1
        self.state["updated_at"] = time.time()
        atomic_write_json(self.path(layout.STATUS), self.state, fsync=fsync)
        self.status_stamp = _stamp(self.path(layout.STATUS))
        self.last_status_write = time.monotonic()
        self.dirty = False

    def guard_status(self) -> None:
        """Rewrite status.json if anything but this agent changed it (a corrupted or truncated file):
        the run dir must keep telling the truth while the run lives."""
        path = self.path(layout.STATUS)
        if _stamp(path) == self.status_stamp:
            return
        current = read_json(path)
        if current is not None and current.get("seq") == self.state.get("seq"):
            self.status_stamp = _stamp(path)
            return
        self.event("status_repaired", reason="unreadable" if current is None else "changed by another writer")
        self.write_status(fsync=True)

    def record_descendant(self, found: descendants.Known) -> None:
        """On disk too, so the run's processes can be stopped even after this agent died."""
        try:
            append_json(self.path(layout.DESCENDANTS), {"pid": found.pid, "start": found.start, "t": time.time()})
        except OSError:
            pass  # (a full disk) the agent still knows it: only a stop after the agent's death would miss it

    def write_identity(self) -> None:
        """Who supervises the run and which process is its script, in a file written once per change.

        It lets a reader decide the run's liveness from the agent and the process even when
        status.json cannot be read.
        """
        keys = ("run_id", "agent_pid", "agent_start", "pid", "pid_start", "started_at", "cgroup")
        atomic_write_json(self.path(layout.IDENTITY), {k: self.state.get(k) for k in keys if k in self.state})

    def _notify_failed(self, url: str, error: str) -> None:
        self.event("notify_failed", url=url, error=error)

    def notify(self, event: str) -> None:
        payload = {
            k: self.state.get(k)
            for k in ("run_id", "name", "status", "termination_status", "termination_message", "step", "loss")
        }
        payload.update({"event": event, "host": self.spec.get("host"), "project_dir": self.project_dir})
        self.notifier.send(payload)

    def ready(self, message: Dict[str, Any]) -> None:
        if self.ready_fd is None:
            return
        try:
            os.write(self.ready_fd, json.dumps(message).encode())
        except OSError:
            pass  # the launcher is gone (its controller was killed): the run goes on regardless
        finally:
            os.close(self.ready_fd)
            self.ready_fd = None

    # ---- start ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Clear what an earlier run left that could end this one, and name this run the latest."""
        os.makedirs(os.path.join(self.project_dir, layout.RUNCTL_DIR), exist_ok=True)
        if os.path.exists(self.marker_path):
            os.replace(self.marker_path, self.path(layout.STALE_MARKER))
            self.event("stale_marker_moved", to=layout.STALE_MARKER)
        if os.path.exists(self.original_stop_file):
            os.replace(self.original_stop_file, self.path("stale_STOP_TRAINING"))
            self.event("stale_stop_file_moved")
        atomic_write(os.path.join(self.project_dir, layout.LATEST_RUN), (self.run_id + "\n").encode())
        self.state["cgroup"] = self.tracker.use_cgroup()
        self.write_identity()
        os.makedirs(self.spec_checkpoint_dir(), exist_ok=True)
        self.log_fd = os.open(self.path(layout.LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
        self.tail_fd = os.open(self.path(layout.LOG), os.O_RDONLY)
        self._mirror_log()

    def spec_checkpoint_dir(self) -> str:
        return layout.checkpoint_dir(self.project_dir, self.spec.get("checkpoint_dir"))

    def _mirror_log(self) -> None:
        """The project's training.log always shows the latest run: a symlink costs no extra I/O."""
        link = os.path.join(self.project_dir, layout.LOG)
        tmp = link + ".tmp-%d" % os.getpid()
        try:
            os.symlink(os.path.relpath(self.path(layout.LOG), self.project_dir), tmp)
            os.replace(tmp, link)
        except OSError as exc:
            self.event("mirror_failed", file=layout.LOG, error=str(exc))

    def _mirror(self, name: str, data: bytes) -> None:
        atomic_write(self.path(name), data)
        try:
            atomic_write(os.path.join(self.project_dir, name), data)
        except OSError as exc:
            self.event("mirror_failed", file=name, error=str(exc))

    def environment(self) -> Dict[str, str]:
        env = dict(os.environ)
        # Unbuffered output so the log is live; a user may opt out with --env PYTHONUNBUFFERED=
        env["PYTHONUNBUFFERED"] = "1"
        env.update({str(k): str(v) for k, v in (self.spec.get("env") or {}).items()})
        if env.get("PYTHONUNBUFFERED") == "":
            del env["PYTHONUNBUFFERED"]
        env.update(
            {
                "RUNCTL_RUN_ID": self.run_id,
                "RUNCTL_RUN_DIR": self.run_dir,
                "RUNCTL_PROJECT_DIR": self.project_dir,
                "RUNCTL_CHECKPOINT_DIR": self.spec_checkpoint_dir(),
                "RUNCTL_STOP_FILE": self.stop_file,
                "RUNCTL_METRICS_FILE": self.path(layout.METRICS),
            }
        )
        if self.spec.get("resume_from"):
            env["RUNCTL_RESUME_FROM"] = str(self.spec["resume_from"])
        if self.spec.get("data_dir"):
            env["RUNCTL_DATA_DIR"] = str(self.spec["data_dir"])
        root = artifact_root()
        if root:
            # First on the path, so runctl.training always matches the agent supervising it.
            current = env.get("PYTHONPATH")
            env["PYTHONPATH"] = root + os.pathsep + current if current else root
        return env

    def run_setup(self, env: Dict[str, str]) -> Optional[int]:
        """The project's setup command, its output streamed into the run log under `setting_up`."""
        setup = self.spec.get("setup")
        if not setup:
            return None
        self.write_status(status=st.SETTING_UP)
        self.event("setup_started")
        os.write(self.log_fd, b"[runctl] setting up: " + setup.encode() + b"\n")
        code = self.run_setup_step(["/bin/sh", "-c", setup], env)
        self.event("setup_finished", exit_code=code)
        return code

    def start_logged(self, argv: List[str], env: Dict[str, str]) -> "subprocess.Popen[bytes]":
        """A process in the project dir and its own session, its stdout and stderr appended to the run log.

        Writing straight into the append-only log, a script runs as fast as into any file and keeps
        running even if this supervisor is killed (a pipe would break on its next print).
        """
        proc = subprocess.Popen(
            argv,
            cwd=self.project_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.tracker.adopt(proc.pid)
        self.tracker.watch_group(proc.pid)
        return proc

    def run_setup_step(self, argv: List[str], env: Dict[str, str]) -> int:
        return self.wait_setup(self.start_logged(argv, env))

    def wait_setup(self, proc: "subprocess.Popen[bytes]") -> int:
        """Wait for a setup step, but honour a stop asked for meanwhile: the script then never starts."""
        while True:
            try:
                return proc.wait(timeout=TICK_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            self.track(time.monotonic(), keep=(proc.pid,))
            reason, _ = self.stop_asked()
            if reason:
                self.kill_everything(5.0, proc.pid, keep=(proc.pid,))
                proc.wait()
                raise StoppedDuringSetup(reason)

    def stop_asked(self) -> "tuple[str, Optional[float]]":
        """Why the user asked for a stop (controller request, signal, a STOP_TRAINING file) and its grace.

        Only meaningful before the agent stops the run itself: it writes STOP_TRAINING only then.
        """
        request = read_json(self.path(layout.STOP_REQUEST))
        if request is not None:
            self.stop_request_seen = request_key(request)
            grace = policies.finite(request.get("grace"))
            return str(request.get("message") or "stopped by the user"), grace
        if self.signal_stop:
            return "the agent received %s" % self.signal_stop, None
        if os.path.exists(self.stop_file):
            return "STOP_TRAINING file created", None
        if os.path.exists(self.original_stop_file):
            return "%s file created" % layout.ORIGINAL_STOP_FILE, None
        return "", None

    def python_env(self, env: Dict[str, str]) -> None:
        """Build or reuse the project's venv; its python then runs the .py script."""
        spec_env = self.spec.get("python_env")
        if not spec_env:
            return
        self.write_status(status=st.SETTING_UP)
        self.event("env_setup_started", kind=spec_env.get("kind"))
        python = pyenv.ensure_venv(spec_env, self.project_dir, self.log_fd, lambda argv: self.run_setup_step(argv, env))
        self.event("env_setup_finished", python=python)
        if self.spec.get("python_script"):
            self.spec["command"] = [python, *self.spec["command"][1:]]
        env["VIRTUAL_ENV"] = os.path.dirname(os.path.dirname(python))
        env["PATH"] = os.path.dirname(python) + os.pathsep + env.get("PATH", "")

    def spawn(self) -> None:
        env = self.environment()
        try:
            self.python_env(env)
        except pyenv.EnvSetupFailed as exc:
            raise SetupFailed(1, str(exc)) from None
        setup_code = self.run_setup(env)
        if setup_code:
            raise SetupFailed(setup_code, "setup command exited with code %d" % setup_code)
        os.lseek(self.tail_fd, 0, os.SEEK_END)  # setup output is not the script's: no metrics from it
        started = time.time()
        if self.spec.get("tty"):
            from .ttylog import PtyLog  # only --tty runs need pty and termios

            self.pty = PtyLog(self.log_fd, self.path(layout.RAW_LOG))
            self.proc = self.pty.start(self.spec["command"], env, self.project_dir)
        else:
            self.proc = self.start_logged(self.spec["command"], env)
        self.pgid = self.proc.pid
        self.engine = policies.PolicyEngine(self.spec.get("policies"), started)
        self._mirror(layout.PID, ("%d\n" % self.proc.pid).encode())
        self.write_status(
            fsync=True,
            status=st.RUNNING,
            started_at=started,
            pid=self.proc.pid,
            pid_start=procs.start_time(self.proc.pid),
            host=self.spec.get("host"),
        )
        # How the run's processes are tracked: its cgroup (None: the process tree alone), the subreaper.
        self.state["cgroup"] = self.tracker.cgroup.path if self.tracker.cgroup else None
        self.write_identity()
        tracking = {"cgroup": self.state["cgroup"], "subreaper": self.subreaper}
        self.event("started", pid=self.proc.pid, command=self.spec["command"], **tracking)
        self.notify("started")

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        try:
            return self.supervise()
        finally:
            self.tracker.close()  # the run's cgroup goes with it

    def supervise(self) -> int:
        # Orphaned descendants come to this agent, not init, so none escapes the run's tree.
        self.subreaper = descendants.become_subreaper()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self.prepare()
            if self.spec.get("python_env") or self.spec.get("setup"):
                # Answer the launcher now, so the controller follows the setup output as it happens.
                self.write_status(status=st.SETTING_UP)
                self.ready({"ok": True, "run_id": self.run_id, "agent_pid": os.getpid(), "state": self.state})
            self.spawn()
        except SetupFailed as exc:
            return self.fail_before_start(exc.message, started_setup=True)
        except StoppedDuringSetup as exc:
            self.event("stopped_during_setup", message=str(exc))
            self.write_end(st.STOPPED, st.T_USER_STOP, "%s during setup; the script was not started" % exc)
            self.ready({"ok": False, "error": str(exc), "setup_failed": True, "state": self.state})
            self.notify("ended")
            self.notifier.flush()
            return 0
        except Exception as exc:
            return self.fail_before_start(self.describe_spawn_error(exc), **failure_fields(exc))
        assert self.proc is not None
        self.ready(
            {"ok": True, "run_id": self.run_id, "pid": self.proc.pid, "agent_pid": os.getpid(), "state": self.state}
        )
        try:
            self.loop()
            return self.finish()
        except Exception as exc:
            return self.crashed(exc)

    def crashed(self, exc: Exception) -> int:
        """The supervisor itself failed (e.g. its disk is full): stop the run and say why, never `lost`."""
        import traceback

        try:
            traceback.print_exc()
        except OSError:
            pass  # agent.log is on the same full disk
        if self.proc is not None:
            self.kill_everything(LEFTOVER_GRACE, self.pgid)
        failure = write_failed(exc)
        message = failure.message if failure else "the runctl agent failed: %s: %s" % (type(exc).__name__, exc)
        try:
            self.write_end(st.FAILED, st.T_FAILED, message, **failure_fields(exc))
        except OSError:
            pass
        return 1

    def write_end(self, status: str, termination_status: str, message: str, **extra: Any) -> None:
        """Record, durably, that the run ended now and why; on a full disk, with the space held for it."""
        changes = dict(
            status=status, termination_status=termination_status, termination_message=message, ended_at=time.time()
        )
        changes.update(extra)
        try:
            self.write_status(fsync=True, **changes)
        except OSError as exc:
            if not disk_full(exc) or not release_space(self.path(layout.SPACE_RESERVE)):
                raise
            self.write_status(fsync=True, **changes)
        release_space(self.path(layout.SPACE_RESERVE))

    def describe_spawn_error(self, exc: Exception) -> str:
        failure = write_failed(exc)
        if failure is not None and failure.kind in ("disk_full", "read_only"):
            return failure.message
        if isinstance(exc, FileNotFoundError):
            return "cannot start %r: no such file or program" % self.spec["command"][0]
        if isinstance(exc, PermissionError):
            return "cannot start %r: permission denied (is it executable?)" % self.spec["command"][0]
        return "cannot start the training command: %s" % exc

    def fail_before_start(self, message: str, started_setup: bool = False, **extra: Any) -> int:
        """The script never ran. A failed setup is a real (failed) run; a command that can't start is not."""
        try:
            self.event("start_failed", error=message)
        except OSError:
            pass  # a full disk: status.json below is what must be written
        self.write_end(st.FAILED, st.T_FAILED, message, **extra)
        self.ready({"ok": False, "error": message, "setup_failed": started_setup, "state": self.state, **extra})
        self.notify("ended")
        self.notifier.flush()
        return 1

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signal_stop = signal.Signals(signum).name
        self.signal_at = time.time()

    def loop(self) -> None:
        """Until the script exits: tail its log, check controls and policies every tick.

        SIGCHLD wakes the loop at once, so an exit is seen in milliseconds, not at the next tick.
        """
        assert self.proc is not None and self.engine is not None
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        next_poll = time.monotonic() + float(self.engine.cfg["poll_interval"])
        while self.proc.poll() is None:
            if self.wait_tick(wake_r):
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
                if self.proc.poll() is not None:
                    break
            mono = time.monotonic()
            now = time.time()
            if self.pty is not None:
                self.pty.pump()
            self.tail_log(now)
            self.check_controls()
            self.flush_log_metrics(now)
            marker_ready = self.marker_ready(now)
            if marker_ready and not st.is_terminal(self.state.get("status", "")) and self.stop_reason is None:
                self.complete_by_marker(now)
            self.apply(self.engine.on_tick(now, marker_ready))
            if mono >= next_poll:
                next_poll = mono + float(self.engine.cfg["poll_interval"])
                self.read_training_log(now)
                self.scan_checkpoints()
                self.apply(self.engine.on_poll())
            self.advance_stop(mono)
            self.track(mono, keep=(self.proc.pid,))
            if self.dirty and mono - self.last_status_write >= STATUS_MIN_INTERVAL:
                self.write_status()
            else:
                self.guard_status()
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)

    def wait_tick(self, wake_r: int) -> bool:
        """Sleep until the next tick; True when a signal woke us. With --tty, copy the terminal meanwhile.

        The terminal is read at most every PTY_INTERVAL, so a bar redrawn 10,000 times a second costs
        a hundred reads, and the script never blocks on a full terminal buffer.
        """
        deadline = time.monotonic() + TICK_SECONDS
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            watched = [wake_r]
            if self.pty is not None and not self.pty.closed:
                watched.append(self.pty.master)
            ready, _, _ = select.select(watched, [], [], remaining)
            if wake_r in ready:
                return True
            if self.pty is not None and ready:
                self.pty.pump()
                time.sleep(max(0.0, min(PTY_INTERVAL, deadline - time.monotonic())))

    def tail_log(self, now: float) -> bool:
        """Read what the script appended to its log since the last tick; False when nothing was new.

        Only progress (a new line, a bar whose counter moved) counts against --hang-timeout.
        """
        got = False
        while True:
            data = os.read(self.tail_fd, READ_BYTES)
            if not data:
                return got
            got = True
            moved, found = self.logtail.feed(data, parse=not self.helper_reports)
            if moved:
                if self.engine is not None:
                    self.engine.on_output(now)
                self.state["last_output_at"] = now
            self.queue_log_records(found, now)

    def queue_log_records(self, found: List[Dict[str, Any]], now: float) -> None:
        for record in found:
            record.update({"t": now, "source": "log"})
            self.log_records.append(record)

    def flush_log_metrics(self, now: float, final: bool = False) -> None:
        """Publish metrics parsed from the log, unless the script reports through runctl.training.

        Parsed records wait LOG_METRIC_DELAY first: a script that both prints and reports its loss
        must not have each value counted twice, and its first report may land just after the line.
        """
        self.read_metrics(now)
        if self.helper_reports:
            self.log_records = []
            return
        ready = [r for r in self.log_records if final or now - r["t"] >= LOG_METRIC_DELAY]
        if not ready:
            return
        self.log_records = self.log_records[len(ready) :]
        for record in ready:
            append_json(self.path(layout.METRICS), record)
        self.read_metrics(now)

    # ---- observations --------------------------------------------------------------------

    def read_metrics(self, now: float) -> None:
        path = self.path(layout.METRICS)
        try:
            with open(path, "rb") as handle:
                handle.seek(self.metrics_offset)
                data = handle.read()
        except OSError:
            return
        cut = data.rfind(b"\n")
        if cut < 0:
            return
        self.metrics_offset += cut + 1
        for line in data[: cut + 1].splitlines():
            try:
                record = json.loads(line.decode("utf-8", "replace"))
            except ValueError:
                continue
            if isinstance(record, dict):
                self.on_metric(record, now)

    def on_metric(self, record: Dict[str, Any], now: float) -> None:
        assert self.engine is not None
        if record.get("source") == "report":
            self.helper_reports = True
        t = float(record.get("t") or now)
        update: Dict[str, Any] = {"last_metric_at": t}
        for key in ("step", "epoch", "total_epochs", "loss", "total_steps", "val_loss", "eval_loss"):
            if key in record and record[key] is not None:
                update[key] = record[key]
        if policies.is_finite(record.get("loss")):
            self.losses.append(float(record["loss"]))
            current = self.state.get("min_loss")
            loss = float(record["loss"])
            update["min_loss"] = loss if current is None else min(float(current), loss)
        if record.get("checkpoint"):
            update["last_checkpoint"] = record["checkpoint"]
        self.state.update(update)
        self.update_rates(record, t)
        self.dirty = True
        self.apply(self.engine.on_metric(record, now))

    def update_rates(self, record: Dict[str, Any], t: float) -> None:
        """Steps per second since the first report, and an ETA when the total is known."""
        if not policies.is_finite(record.get("step")):
            return
        step = float(record["step"])
        if self.first_metric is None:
            self.first_metric = {"t": t, "step": step}
            return
        elapsed = t - self.first_metric["t"]
        done = step - self.first_metric["step"]
        if elapsed <= 0 or done <= 0:
            return
        rate = done / elapsed
        self.state["steps_per_sec"] = round(rate, 4)
        total = policies.finite(self.state.get("total_steps"))
        epochs, epoch = policies.finite(self.state.get("total_epochs")), policies.finite(self.state.get("epoch"))
        if total is None and epochs is not None and epoch is not None and epoch >= 1:
            # Rough: assume the epoch in progress is half done.
            total = step * epochs / max(epoch - 0.5, 0.5)
        if total is not None:
            self.state["eta_seconds"] = round(max(0.0, total - step) / rate, 1)

    def read_training_log(self, now: float) -> None:
        """Metrics from an openadapt-style training_output/training_log.json, when the script writes one."""
        path = os.path.join(self.project_dir, layout.ORIGINAL_SUMMARY)
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            return
        if mtime == self.training_log_mtime or mtime < float(self.state.get("started_at") or 0):
            return
        self.training_log_mtime = mtime
        data = read_json(path)
        record = metrics.from_training_log(data) if data else None
        if record and not self.helper_reports:
            record.update({"t": now, "source": "training_log"})
            append_json(self.path(layout.METRICS), record)
            self.read_metrics(now)

    def scan_checkpoints(self) -> None:
        """The newest finished checkpoint written during this run (see core.checkpoints)."""
        directory = self.spec_checkpoint_dir()
        started = float(self.state.get("started_at") or 0)
        files = checkpoints.find(self.project_dir, directory, self.spec.get("checkpoint_globs") or None)
        found = checkpoints.newest(files, started)
        newest = checkpoints.absolute(found, self.project_dir, directory) if found else None
        if newest and newest != self.state.get("last_checkpoint"):
            self.state["last_checkpoint"] = newest
            self.dirty = True

    def marker_info(self) -> Dict[str, Any]:
        return ops.marker_info(self.run_dir, self.project_dir, self.run_id)

    def marker_ready(self, now: float) -> bool:
        info = self.marker_info()
        return (
            completion.marker_state(info.get("size"), info.get("mtime"), self.state.get("started_at"), now)
            == completion.MARKER_READY
        )

    def complete_by_marker(self, now: float) -> None:
        """A stable marker proves the work is done: the run is completed now, not when the process exits."""
        assert self.engine is not None
        grace = float(self.engine.cfg["exit_grace"])
        message = "completion marker written; the process gets %gs to exit before it is stopped" % grace
        self.event("marker_complete", exit_grace=grace)
        self.write_status(
            fsync=True,
            status=st.COMPLETED,
            termination_status=st.T_AUTO_COMPLETE,
            termination_message=message,
            ended_at=now,
        )
        self.notify("ended")

    def check_controls(self) -> None:
        """Stop requests from the controller, the user's STOP_TRAINING files, and signals to the agent.

        Once stopping, a newer request from the controller (`runctl runs stop --grace N` or `--now`)
        can still hurry the sequence: the earliest deadline wins.
        """
        if self.stop_reason is not None:
            self.check_hurry()
            return
        reason, grace = self.stop_asked()
        if reason:
            self.initiate(policies.Decision(st.T_USER_STOP, reason), grace=grace)

    def check_hurry(self) -> None:
        request = read_json(self.path(layout.STOP_REQUEST))
        if request is None or self.stop_seq is None or request_key(request) == self.stop_request_seen:
            return
        self.stop_request_seen = request_key(request)
        assert self.engine is not None
        grace = stopping.clamp_grace(request.get("grace"), float(self.engine.cfg["stop_grace"]))
        hurried = self.stop_seq.add(time.monotonic(), grace)
        self.event("stop_requested_again", grace=grace, hurried=hurried, message=request.get("message"))

    # ---- stopping ------------------------------------------------------------------------

    def apply(self, decision: Optional[policies.Decision]) -> None:
        if decision is None:
            return
        if decision.action == policies.NOTIFY:
            self.event("policy_notice", termination_status=decision.termination_status, message=decision.message)
            self.write_status(notice=decision.message)
            self.notify("policy")
            return
        self.initiate(decision, grace=0.0 if decision.action == policies.STOP_NOW else None)

    def initiate(self, decision: policies.Decision, grace: Optional[float] = None) -> None:
        """Graceful first: STOP_TRAINING for the script, then SIGTERM to the group, then SIGKILL."""
        if self.stop_reason is not None or self.engine is None:
            return
        if self.exited_at is not None:
            self.event(
                "policy_after_exit",
                termination_status=decision.termination_status,
                message=decision.message,
                exited_at=self.exited_at,
                note="fired on output read after the process had exited: not the end reason",
            )
            return
        self.stop_reason = decision
        grace = stopping.clamp_grace(grace, float(self.engine.cfg["stop_grace"]))
        if not os.path.exists(self.stop_file):
            atomic_write(self.stop_file, (decision.message + "\n").encode())
        self.stop_seq = stopping.Sequence(float(self.engine.cfg["term_grace"]))
        self.stop_seq.add(time.monotonic(), grace)
        self.event(
            "stop_initiated",
            termination_status=decision.termination_status,
            message=decision.message,
            grace=grace,
        )
        if st.is_terminal(self.state.get("status", "")):
            return
        self.write_status(
            fsync=True,
            status=st.STOPPING,
            termination_status=decision.termination_status,
            termination_message=decision.message,
        )
        self.notify("policy")

    def advance_stop(self, mono: float) -> None:
        """Send the signal the stop sequence says is due: to the group and every other descendant."""
        if self.stop_seq is None:
            return
        due = self.stop_seq.due(mono)
        if due is None:
            return
        self.stop_seq.sent(due, mono)
        others = self.tracker.signal_all(getattr(signal, due), self.pgid)
        self.event("signal", signal=due, target="process group %d" % self.pgid, processes=others)

    # ---- the run's processes -------------------------------------------------------------

    def track(self, mono: float, keep: "tuple[int, ...]" = ()) -> None:
        """Record descendants as they appear and collect exited orphans (the agent is their reaper)."""
        if mono < self.next_scan:
            return
        self.next_scan = mono + SCAN_SECONDS
        self.tracker.scan()
        self.tracker.reap(keep, fresh=False)

    def kill_everything(self, grace: float, group: int, keep: "tuple[int, ...]" = ()) -> List[Dict[str, object]]:
        """Stop every process of the run (group, descendants, RUNCTL_RUN_ID-tagged) and say which."""
        killed = self.tracker.kill_all(grace, group, keep)
        if killed:
            try:
                self.event("processes_killed", processes=killed)
            except OSError:
                pass  # (a full disk) they are stopped all the same
        return killed

    # ---- the end -------------------------------------------------------------------------

    def finish(self) -> int:
        assert self.proc is not None
        code = self.proc.returncode
        exit_code = code if code >= 0 else 128 - code
        exit_signal = signal.Signals(-code).name if code < 0 else None
        self._mirror(layout.EXIT_CODE, ("%d\n" % exit_code).encode())
        ended = time.time()
        self.event("exited", exit_code=exit_code, signal=exit_signal)
        self.tracker.scan()
        leftovers = self.tracker.any_alive(self.pgid) or bool(procs.tagged_processes(self.run_id))
        if leftovers:
            self.event("leftover_processes", action="SIGTERM then SIGKILL")
            self.kill_everything(LEFTOVER_GRACE, self.pgid)
        # From here on nothing can stop the process: a policy that fires on the last output is not why it ended.
        self.exited_at = ended
        self.drain()
        self.read_metrics(ended)
        self.flush_log_metrics(ended, final=True)
        self.scan_checkpoints()
        if self.stop_reason is None:
            self.stop_at_exit(ended)
        exit_info = {"exit_code": exit_code, "exit_signal": exit_signal, "exited_at": ended}
        if st.is_terminal(self.state.get("status", "")):
            # Completed by its marker earlier; a terminal status never changes, the exit is still recorded.
            if exit_code != 0 and not self.term_sent:
                exit_info["warning"] = "%s after writing its completion marker" % (completion.describe_exit(exit_code))
            self.write_status(fsync=True, **exit_info)
        else:
            status, termination, message = self.verdict(exit_code, ended)
            self.write_status(
                fsync=True,
                status=status,
                termination_status=termination,
                termination_message=message,
                ended_at=ended,
                duration=round(ended - float(self.state.get("started_at") or ended), 3),
                **exit_info,
            )
            self.notify("ended")
        self.write_summary()
        self.event("ended", status=self.state["status"], termination_status=self.state.get("termination_status"))
        self.notifier.flush()
        for fd in (self.log_fd, self.tail_fd):
            os.close(fd)
        release_space(self.path(layout.SPACE_RESERVE))
        return 0

    def stop_at_exit(self, exited_at: float) -> None:
        """A stop asked for around the moment the process exited on its own: record what it was.

        A STOP_TRAINING file the user created while the process lived may have been honoured by the
        script: that run was stopped by the user. A stop request the agent had not yet passed on (no
        STOP_TRAINING written), or one that came after the exit, stopped nothing: the run ended
        naturally. Both times go to events.jsonl either way.
        """
        reason, _ = self.stop_asked()
        if not reason:
            return
        requested_at = self.stop_requested_at()
        by_file = any(
            os.path.exists(path) and os.path.getmtime(path) <= exited_at
            for path in (self.stop_file, self.original_stop_file)
        )
        self.event(
            "stop_at_exit",
            message=reason,
            requested_at=requested_at,
            exited_at=exited_at,
            counted=by_file,
            note=(
                "the script could see the stop file before it exited"
                if by_file
                else "the process exited before runctl asked it to stop"
            ),
        )
        if by_file:
            self.stop_reason = policies.Decision(st.T_USER_STOP, reason)

    def stop_requested_at(self) -> Optional[float]:
        """When the stop was asked for: the request's own time, else the stop file's."""
        request = read_json(self.path(layout.STOP_REQUEST))
        if request is not None and policies.is_finite(request.get("t")):
            return float(request["t"])
        for path in (self.stop_file, self.original_stop_file):
            try:
                return os.path.getmtime(path)
            except OSError:
                continue
        return self.signal_at

    def drain(self) -> None:
        """The last of the log: everything the script (and its now-stopped children) wrote."""
        if self.pty is not None:
            self.pty.drain()
        self.tail_log(time.time())
        self.queue_log_records(self.logtail.finish(parse=not self.helper_reports), time.time())

    def verdict(self, exit_code: int, now: float) -> "tuple[str, str, str]":
        reason = self.stop_reason
        if reason is not None:
            status = policies.final_status(reason, exit_code, self.term_sent)
            if status == st.FAILED and reason.termination_status != st.T_DIVERGED:
                return (
                    status,
                    st.T_FAILED,
                    "%s while stopping (%s: %s)"
                    % (completion.describe_exit(exit_code), reason.termination_status, reason.message),
                )
            return status, reason.termination_status, reason.message
        info = self.marker_info()
        found = completion.classify(
            completion.Evidence(
                now=now + completion.MARKER_STABLE_SECONDS,  # the process is gone: the marker can't change
                started_at=self.state.get("started_at"),
                exit_code=exit_code,
                marker_size=info.get("size"),
                marker_mtime=info.get("mtime"),
            )
        )
        message = found.message
        if found.status == st.FAILED:
            cause = self.failure_summary()
            if cause:
                message += ": " + cause
        return found.status, found.termination_status, message

    def failure_summary(self) -> str:
        """The exception the log ends with (see core.failure), else its last line."""
        try:
            with open(self.path(layout.LOG), "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - TAIL_BYTES))
                tail = handle.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return failure.summary(tail)

    def write_summary(self) -> None:
        """A training_log.json-compatible summary (the original dashboards' keys)."""
        s = self.state
        summary = {
            "job_id": self.run_id,
            "run_id": self.run_id,
            "name": s.get("name"),
            "status": s.get("status"),
            "epoch": s.get("epoch"),
            "total_epochs": s.get("total_epochs"),
            "step": s.get("step"),
            "loss": s.get("loss"),
            "min_loss": s.get("min_loss"),
            "losses": self.loss_history(),
            "elapsed_time": s.get("duration"),
            "start_time": s.get("started_at"),
            "termination_status": s.get("termination_status") or "",
            "termination_message": s.get("termination_message") or "",
            "exit_code": s.get("exit_code"),
        }
        atomic_write_json(self.path(layout.SUMMARY), summary)

    def loss_history(self) -> List[Dict[str, Any]]:
        history = []
        text = read_text(self.path(layout.METRICS)) or ""
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "loss" in record:
                history.append({k: record.get(k) for k in ("epoch", "step", "loss", "t")})
        return history[-10000:]


def failure_fields(exc: BaseException) -> Dict[str, Any]:
    """What status.json records about a failed write, so controllers can say "disk full at PATH" (exit 4)."""
    failure = write_failed(exc)
    if failure is None or failure.kind not in ("disk_full", "read_only"):
        return {}
    fields: Dict[str, Any] = {"write_error": failure.to_dict()}
    if failure.kind == "disk_full":
        fields["disk_full"] = failure.path
    return fields


def request_key(request: Dict[str, Any]) -> Any:
    """What tells one stop request from the next (its id; its time for requests without one)."""
    return request.get("id") or (request.get("t"), request.get("grace"))


def _stamp(path: str) -> Any:
    """A cheap identity of a file's current content: changes whenever anyone rewrites it."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


class StoppedDuringSetup(Exception):
    """A stop was asked for while the environment or --setup was still being prepared."""


class SetupFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def main_supervise(run_dir: str, ready_fd: Optional[int]) -> int:
    try:
        supervisor = Supervisor(run_dir, ready_fd)
    except Exception as exc:
        if ready_fd is not None:
            os.write(ready_fd, json.dumps({"ok": False, "error": str(exc)}).encode())
            os.close(ready_fd)
        print("runctl agent: %s" % exc, file=sys.stderr)
        return 1
    return supervisor.run()
