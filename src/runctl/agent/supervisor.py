"""The supervisor of one run: starts the script, owns its run directory, enforces policies.

It runs detached from the controller (own session, stdio on files), so killing or closing the
terminal of the `runctl` that started it changes nothing. Everything it knows is written to the
run directory, which stays the source of truth.

The Supervisor only coordinates; each duty has its module: the run dir's record (record.py),
metrics intake (intake.py), the stop sequence (stopper.py over the pure core.stopping), the end of
the run (ending.py), checkpoint uploads to S3 (uploads.py) and the host's end-of-run step (onend.py).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..core import completion, layout, policies
from ..core import status as st
from ..core.fsutil import PRIVATE_FILE, atomic_write, atomic_write_json, read_json, release_space, write_failed
from . import descendants, ending, fetches, ops, procs, pyenv, spotwatch, starting, uploads
from .intake import Intake
from .notify import Notifier
from .onend import EndStep
from .record import RunRecord, failure_fields
from .stopper import Stopper

if TYPE_CHECKING:
    from .ttylog import PtyLog

TICK_SECONDS = 0.1
# A live metric reaches status.json within about 0.3 s of its line being printed.
STATUS_MIN_INTERVAL = 0.15
LEFTOVER_GRACE = 5.0
SCAN_SECONDS = 1.0  # how often the run's process tree is scanned for new descendants
PTY_INTERVAL = 0.01


class Supervisor:
    def __init__(self, run_dir: str, ready_fd: Optional[int] = None) -> None:
        self.run_dir = os.path.abspath(run_dir)
        # A budget counts from here (setup time is billed too), on the monotonic clock.
        self.taken_at, self.taken_mono = time.time(), time.monotonic()
        spec = read_json(os.path.join(self.run_dir, layout.SPEC))
        if spec is None:
            raise RuntimeError("no readable %s in %s" % (layout.SPEC, self.run_dir))
        self.spec: Dict[str, Any] = spec
        self.run_id: str = spec["run_id"]
        self.project_dir: str = spec["project_dir"]
        self.ready_fd = ready_fd
        state: Dict[str, Any] = read_json(os.path.join(self.run_dir, layout.STATUS)) or {}
        state.update(
            {
                "run_id": self.run_id,
                "name": spec.get("name"),
                "agent_pid": os.getpid(),
                "agent_start": procs.start_time(os.getpid()),
            }
        )
        self.record = RunRecord(self.run_dir, self.project_dir, state)
        self.state = self.record.state
        self.proc: Optional[subprocess.Popen] = None
        self.pgid = 0
        self.log_fd = -1
        self.pty: Optional["PtyLog"] = None
        self.engine: Optional[policies.PolicyEngine] = None
        self.notifier = Notifier(spec.get("notify") or [], self._notify_failed)
        self.stopper = Stopper(self.record, self.project_dir, self.notify)
        self.intake = Intake(self.record, spec, self.apply)
        self.tracker = descendants.Tracker(
            os.getpid(), self.run_id, on_new=lambda found: self.record.record_descendant(found.pid, found.start)
        )
        self.next_scan = 0.0
        self.subreaper = False
        self.start_refused = False  # the command could not start: the controller that asked cleans up
        self.marker_path = os.path.join(self.project_dir, layout.MARKER)
        self.uploads: Optional[uploads.Uploads] = None
        self.spot: Optional[spotwatch.SpotWatch] = None  # on spot instances: the interruption notice
        self.spot_noticed_at: Optional[float] = None

    # ---- small helpers -------------------------------------------------------------------

    def path(self, name: str) -> str:
        return self.record.path(name)

    def event(self, name: str, **data: Any) -> None:
        self.record.event(name, **data)

    def write_status(self, fsync: bool = False, **changes: Any) -> None:
        self.record.write_status(fsync=fsync, **changes)

    def checkpoint_dir(self) -> str:
        return layout.checkpoint_dir(self.project_dir, self.spec.get("checkpoint_dir"))

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

    def apply(self, decision: Optional[policies.Decision]) -> None:
        self.stopper.apply(decision, time.monotonic())

    # ---- start ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Clear what an earlier run left that could end this one, and name this run the latest."""
        os.makedirs(os.path.join(self.project_dir, layout.RUNCTL_DIR), exist_ok=True)
        if os.path.exists(self.marker_path):
            os.replace(self.marker_path, self.path(layout.STALE_MARKER))
            self.event("stale_marker_moved", to=layout.STALE_MARKER)
        if os.path.exists(self.stopper.original_stop_file):
            os.replace(self.stopper.original_stop_file, self.path("stale_STOP_TRAINING"))
            self.event("stale_stop_file_moved")
        atomic_write(os.path.join(self.project_dir, layout.LATEST_RUN), (self.run_id + "\n").encode())
        self.state["cgroup"] = self.tracker.use_cgroup()
        self.record.write_identity()
        os.makedirs(self.checkpoint_dir(), exist_ok=True)
        self.log_fd = os.open(self.path(layout.LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
        self.intake.tail_fd = os.open(self.path(layout.LOG), os.O_RDONLY)
        self.record.mirror_log()

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
            preexec_fn=self.tracker.preexec(),
        )
        self.tracker.adopt(proc.pid)
        self.tracker.watch_group(proc.pid)
        return proc

    def run_setup_step(self, argv: List[str], env: Dict[str, str]) -> int:
        """Wait for a setup step, but honour a stop asked for meanwhile: the script then never starts."""
        proc = self.start_logged(argv, env)
        while True:
            try:
                return proc.wait(timeout=TICK_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            self.track(time.monotonic(), keep=(proc.pid,))
            reason, _ = self.stopper.asked()
            termination = st.T_USER_STOP
            over = self.budget_during_setup(time.monotonic())
            if over is not None and not reason:
                reason, termination = over.message, st.T_BUDGET
            if reason:
                self.kill_everything(5.0, proc.pid, keep=(proc.pid,))
                proc.wait()
                raise StoppedDuringSetup(reason, termination)

    def budget_during_setup(self, mono: float) -> Optional[policies.Decision]:
        """The budget rule before the script runs (a long environment build costs money too)."""
        cfg = policies.normalize(self.spec.get("policies"))
        return policies.budget_decision(
            cfg["max_cost"], self.spec.get("hourly_price"), self.taken_mono, mono, float(cfg["poll_interval"]), 0.0
        )

    def write_spend(self, now: float) -> None:
        """The run's cost against its budget in status.json (`runs status` shows it), when it has one;
        `since` and `at` are wall times, for the controller to carry the spend on to its own now."""
        if self.engine is None:
            return
        spent = self.engine.spend(time.monotonic())
        if spent is not None:
            self.write_status(budget={**spent.as_dict(), "since": self.taken_at, "at": now})

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

    def spawn(self, env: Dict[str, str]) -> None:
        try:
            self.python_env(env)
        except pyenv.EnvSetupFailed as exc:
            raise SetupFailed(1, str(exc)) from None
        setup_code = self.run_setup(env)
        if setup_code:
            raise SetupFailed(setup_code, "setup command exited with code %d" % setup_code)
        os.lseek(self.intake.tail_fd, 0, os.SEEK_END)  # setup output is not the script's: no metrics from it
        started = time.time()
        if self.spec.get("tty"):
            from .ttylog import PtyLog  # only --tty runs need pty and termios

            self.pty = PtyLog(self.log_fd, self.path(layout.RAW_LOG))
            self.proc = self.pty.start(self.spec["command"], env, self.project_dir, self.tracker.preexec())
            self.tracker.adopt(self.proc.pid)
            self.tracker.watch_group(self.proc.pid)
        else:
            self.proc = self.start_logged(self.spec["command"], env)
        self.pgid = self.proc.pid
        self.engine = self.intake.engine = self.stopper.engine = policies.PolicyEngine(
            self.spec.get("policies"), started, self.spec.get("hourly_price"), self.taken_mono, TICK_SECONDS
        )
        self.write_spend(started)
        self.record.mirror(layout.PID, ("%d\n" % self.proc.pid).encode())
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
        self.record.write_identity()
        tracking = {"cgroup": self.state["cgroup"], "subreaper": self.subreaper}
        self.event("started", pid=self.proc.pid, command=self.spec["command"], **tracking)
        self.notify("started")
        if self.spec.get("spot"):
            self.spot = spotwatch.SpotWatch(self.spec["spot"], self.record.try_event)
            self.spot.start()

    def check_spot(self, mono: float) -> None:
        """A spot interruption notice: stop the script so that it and its final upload fit the notice."""
        if self.spot is None or self.spot.notice is None or self.spot_noticed_at is not None:
            return
        assert self.engine is not None
        notice, now = self.spot.notice, time.time()
        self.spot_noticed_at = notice.at
        decision = spotwatch.decision(notice, self.engine.cfg, self.uploads is not None, self.spot.settings, now)
        self.event(
            "spot_interruption_notice",
            action=notice.action,
            time=notice.time_text,
            seconds_left=round(notice.at - now, 3),
            grace=decision.grace,
            term_grace=decision.term_grace,
        )
        line = "[runctl] %s; asking the script to stop (STOP_TRAINING, SIGTERM in %.0fs)\n" % (
            notice.describe(),
            decision.grace,
        )
        os.write(self.log_fd, line.encode())
        self.state["spot_notice"] = {"action": notice.action, "time": notice.time_text, "at": notice.at}
        self.apply(decision)

    def start_uploads(self, env: Dict[str, str]) -> None:
        """With checkpoint_s3 in the spec: the uploader, running and past its bucket check, before
        the script starts; a bucket it cannot use fails the run before anything is trained."""
        cfg = self.spec.get("checkpoint_s3")
        if not cfg:
            return
        from ..storage.objects import BadUri, parse_uri  # pure, standard library only

        uri = cfg.get("uri") if isinstance(cfg, dict) else None
        try:
            parse_uri(uri or "")
        except BadUri as exc:
            raise SetupFailed(1, "checkpoint_s3: %s" % exc, checkpoint_s3_error=True) from None
        self.write_status(status=st.SETTING_UP)
        self.event("checkpoint_s3_starting", uri=uri)
        try:
            python = uploads.tool_python(self.project_dir, self.log_fd, lambda argv: self.run_setup_step(argv, env))
        except pyenv.EnvSetupFailed as exc:
            hint = (
                "the uploader needs boto3 on the host: check its package index (pip or uv configuration) and"
                " network, or install boto3 for its python3; the build's output is in the run log"
            )
            raise SetupFailed(
                1, "checkpoint uploads to %s: %s" % (uri, exc), checkpoint_s3_error=True, checkpoint_s3_hint=hint
            ) from None
        self.uploads = uploads.Uploads(self.run_dir, python, self.event, self.tracker.exempt_process)
        try:
            self.uploads.start(since=time.time())
        except uploads.UploaderFailed as exc:
            os.write(self.log_fd, ("[runctl] %s\n" % exc).encode())
            raise SetupFailed(1, str(exc), checkpoint_s3_error=True) from None
        os.write(self.log_fd, ("[runctl] checkpoints go to %s (verified uploads)\n" % uri).encode())
        self.state["checkpoint_s3"] = uploads.summary(self.uploads.state)

    def fetch_inputs(self, env: Dict[str, str], check_only: bool = False) -> None:
        """With resume_s3 or data_s3 in the spec: the checkpoint and the data on the host, verified,
        before the script starts (`check_only`: only S3's answer that they are there); a download
        that fails or does not verify fails the run (it never trains from scratch, or without its data)."""
        if not fetches.needed(self.spec):
            return
        self.write_status(status=st.SETTING_UP)
        self.event("s3_fetch_checking" if check_only else "s3_fetch_started")
        try:
            found = fetches.fetch(
                self.spec, self.run_dir, self.project_dir, self.log_fd, self.run_setup_step, check_only
            )
        except fetches.FetchFailed as exc:
            self.event("s3_fetch_failed", error=exc.message)
            raise SetupFailed(1, exc.message, checkpoint_s3_error=True, checkpoint_s3_hint=exc.hint) from None
        if check_only:
            return
        self.event("s3_fetch_finished", env=found)
        env.update(found)
        if not self.spec.get("checkpoint_s3"):
            self.forget_credentials()  # nothing else on the host needs forwarded credentials now

    def poll_uploads(self, mono: float) -> None:
        if self.uploads is None:
            return
        changed = self.uploads.poll(mono)
        if changed is not None:
            self.state["checkpoint_s3"] = changed
            self.record.dirty = True

    def finish_uploads(self) -> None:
        """The uploader's final pass (the last checkpoint verified in S3), waited for after the
        script's exit and before the end-of-run step, which may need it as its proof."""
        if self.uploads is None:
            return
        cfg = self.spec.get("checkpoint_s3") or {}
        try:
            timeout = float(cfg.get("final_timeout") or 600.0) + uploads.FINISH_MARGIN
        except (TypeError, ValueError):
            timeout = 600.0 + uploads.FINISH_MARGIN
        if self.spot_noticed_at is not None:  # the instance goes at the notice's time
            from ..core.spot import finish_timeout

            timeout = finish_timeout(self.spot_noticed_at, time.time(), timeout)
        final = self.uploads.finish(timeout)
        if final is not None:
            self.record.try_event(
                "checkpoint_uploads_finished", **{k: final.get(k) for k in ("phase", "uploaded", "last", "error")}
            )
            try:
                self.write_status(fsync=True, checkpoint_s3=final)
            except OSError:
                pass  # a full disk: the uploader's state file and the manifest still say it

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        try:
            try:
                code = self.supervise()
            finally:
                self.tracker.close()  # the run's cgroup goes with it
                if self.spot is not None:
                    self.spot.stop()
            if self.record.ended and not self.start_refused:
                self.finish_uploads()
        finally:
            # Before the end-of-run step: a host that stops keeps its disk, never the secret on it.
            self.forget_credentials()
        self.end_step()
        return code

    def forget_credentials(self) -> None:
        """Delete the AWS credentials the controller forwarded for the uploads, once they are over."""
        for key in ("checkpoint_s3", "data_s3", "resume_s3"):
            cfg = self.spec.get(key)
            removed = uploads.forget_credentials(cfg if isinstance(cfg, dict) else {})
            if removed:
                self.record.try_event("checkpoint_s3_credentials_removed", path=removed)

    def supervise(self) -> int:
        # Orphaned descendants come to this agent, not init, so none escapes the run's tree.
        self.subreaper = descendants.become_subreaper()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self.prepare()
            env = starting.environment(self.spec, self.run_dir, self.checkpoint_dir())
            # Before the launcher's answer: a bucket the host cannot use fails the start itself (exit 4).
            self.start_uploads(env)
            self.fetch_inputs(env, check_only=True)  # what S3 refuses at once fails the start too
            if self.spec.get("python_env") or self.spec.get("setup") or fetches.needed(self.spec):
                # Answer the launcher now, so the controller follows the setup output as it happens.
                self.write_status(status=st.SETTING_UP)
                self.ready({"ok": True, "run_id": self.run_id, "agent_pid": os.getpid(), "state": self.state})
            self.fetch_inputs(env)
            self.spawn(env)
        except SetupFailed as exc:
            return self.fail_before_start(exc.message, started_setup=True, **exc.extra)
        except StoppedDuringSetup as exc:
            self.event("stopped_during_setup", message=str(exc), termination_status=exc.termination)
            self.record.write_end(st.STOPPED, exc.termination, "%s during setup; the script was not started" % exc)
            self.ready({"ok": False, "error": str(exc), "setup_failed": True, "state": self.state})
            self.notify("ended")
            self.notifier.flush()
            return 0
        except Exception as exc:
            program = str((self.spec.get("command") or ["?"])[0])
            return self.fail_before_start(starting.describe_spawn_error(exc, program), **failure_fields(exc))
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
            self.record.write_end(st.FAILED, st.T_FAILED, message, **failure_fields(exc))
        except OSError:
            pass
        return 1

    def fail_before_start(self, message: str, started_setup: bool = False, **extra: Any) -> int:
        """The script never ran. A failed setup is a real (failed) run; a command that can't start is not."""
        self.record.try_event("start_failed", error=message)  # on a full disk, status.json below is what matters
        self.start_refused = not started_setup
        self.record.write_end(st.FAILED, st.T_FAILED, message, **extra)
        self.ready({"ok": False, "error": message, "setup_failed": started_setup, "state": self.state, **extra})
        self.notify("ended")
        self.notifier.flush()
        return 1

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopper.on_signal(signal.Signals(signum).name, time.time())

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
            self.intake.tail_log(now)
            self.stopper.check_controls(mono)
            self.check_spot(mono)
            self.intake.flush_log_metrics(now)
            marker_ready = self.marker_ready(now)
            if marker_ready and not self.record.ended and self.stopper.reason is None:
                self.complete_by_marker(now)
            self.apply(self.engine.on_budget(mono))
            self.apply(self.engine.on_tick(now, marker_ready))
            if mono >= next_poll:
                next_poll = mono + float(self.engine.cfg["poll_interval"])
                self.intake.read_training_log(now)
                self.intake.scan_checkpoints(self.checkpoint_dir())
                self.apply(self.engine.on_poll())
                self.write_spend(now)
            self.stopper.advance(mono, self.send_signal, "process group %d" % self.pgid)
            self.poll_uploads(mono)
            self.track(mono, keep=(self.proc.pid,))
            if self.record.dirty and mono - self.record.last_status_write >= STATUS_MIN_INTERVAL:
                self.write_status()
            else:
                self.record.guard_status()
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

    # ---- completion by marker --------------------------------------------------------------

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

    # ---- the run's processes -------------------------------------------------------------

    def send_signal(self, name: str) -> List[Dict[str, object]]:
        """A signal of the stop sequence, to the group and every other descendant of the run."""
        return self.tracker.signal_all(getattr(signal, name), self.pgid)

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
            self.record.try_event("processes_killed", processes=killed)  # (a full disk) stopped all the same
        return killed

    # ---- the end -------------------------------------------------------------------------

    def finish(self) -> int:
        assert self.proc is not None
        exit_code, exit_signal = ending.exit_fields(self.proc.returncode)
        self.record.mirror(layout.EXIT_CODE, ("%d\n" % exit_code).encode())
        ended = time.time()
        self.event("exited", exit_code=exit_code, signal=exit_signal)
        self.tracker.scan()
        leftovers = self.tracker.any_alive(self.pgid) or bool(procs.tagged_processes(self.run_id))
        if leftovers:
            self.event("leftover_processes", action="SIGTERM then SIGKILL")
            self.kill_everything(LEFTOVER_GRACE, self.pgid)
        # From here on nothing can stop the process: a policy that fires on the last output is not why it ended.
        self.stopper.exited_at = ended
        if self.pty is not None:
            self.pty.drain()
        self.intake.finish_log(time.time())
        self.intake.read_metrics(ended)
        self.intake.flush_log_metrics(ended, final=True)
        self.intake.scan_checkpoints(self.checkpoint_dir())
        self.stopper.at_exit(ended)
        self.write_spend(ended)
        exit_info: Dict[str, Any] = {"exit_code": exit_code, "exit_signal": exit_signal, "exited_at": ended}
        if self.record.ended:
            # Completed by its marker earlier; a terminal status never changes, the exit is still recorded.
            if exit_code != 0 and not self.stopper.term_sent:
                exit_info["warning"] = "%s after writing its completion marker" % (completion.describe_exit(exit_code))
            self.write_status(fsync=True, **exit_info)
        else:
            status, termination, message = ending.verdict(
                self.stopper.reason,
                exit_code,
                self.stopper.term_sent,
                self.marker_info(),
                self.state.get("started_at"),
                ended,
                ending.log_tail(self.path(layout.LOG)),
            )
            final_spend = self.engine.spend(time.monotonic()) if self.engine is not None else None
            if termination == st.T_BUDGET and final_spend is not None:
                message = final_spend.describe() + "; stopped by --max-cost"
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
        summary = ending.summary(self.run_id, self.state, self.intake.loss_history())
        atomic_write_json(self.path(layout.SUMMARY), summary)
        self.event("ended", status=self.state["status"], termination_status=self.state.get("termination_status"))
        self.notifier.flush()
        for fd in (self.log_fd, self.intake.tail_fd):
            os.close(fd)
        release_space(self.path(layout.SPACE_RESERVE))
        return 0

    def end_step(self) -> None:
        """The host's end-of-run step (spec `on_end`), once the run has ended; never raises."""
        if not self.record.ended or self.start_refused:
            return
        try:
            EndStep(self.run_dir, self.project_dir, self.checkpoint_dir(), self.spec, self.event).perform(self.state)
        except Exception as exc:
            import traceback

            try:
                traceback.print_exc()
            except OSError:
                pass
            self.record.try_event("on_end_failed", error="%s: %s" % (type(exc).__name__, exc))


class StoppedDuringSetup(Exception):
    """A stop was asked for (or the budget ran out) while the environment or --setup was being prepared."""

    def __init__(self, message: str, termination: str = st.T_USER_STOP) -> None:
        super().__init__(message)
        self.termination = termination


class SetupFailed(Exception):
    def __init__(self, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra  # fields for the run's end record and the launcher's answer


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
