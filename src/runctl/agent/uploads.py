"""Checkpoint uploads to S3 as the agent sees them: the tool environment, the uploader process, the proof.

With `checkpoint_s3: {"uri": "s3://bucket/prefix", ...}` in the spec, the agent starts
runctl.storage.uploader before the script and watches it while the run goes.

The uploader is a child process, not a thread of the agent, because it needs boto3: the agent is
standard library only (it runs as `python3 -S` on hosts that may have nothing else), while the
uploader runs in runctl's tool environment, a venv with boto3 built once per host and reused
(agent/pyenv.py, the same machinery as the run's own venv), or the agent's own interpreter when
that already has boto3. Being a process also keeps hashing and TLS off the agent's loop, and a crash
in the SDK cannot take the supervisor down: the agent restarts it (its state file lets it take up
where it was). It runs in a session of its own and is exempt from the run's process tracking, so
the stop sequence and the leftover sweep at the script's exit never end it: the final checkpoint
is uploaded after the script has gone. Its environment is the agent's (the host's own AWS
credentials and AWS_ENDPOINT_URL) without the run's RUNCTL_* variables.

The end-of-run proof `checkpoints_in_s3` (agent/onend.py) holds when the uploader's final pass is
done and every checkpoint of the run on disk is verified in S3 exactly as it is now.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ..core import checkpoints, layout
from ..core.fsutil import PRIVATE_FILE, read_json
from . import pyenv, starting

TOOL_REQUIREMENTS = ("boto3>=1.28",)  # botocore 1.31: the first to honour AWS_ENDPOINT_URL
# Exits 0 when the interpreter has a boto3 recent enough for the uploader.
BOTO3_CHECK = (
    "import sys, boto3, botocore; "
    "v = tuple(int(x) for x in botocore.__version__.split('.')[:2]); sys.exit(0 if v >= (1, 31) else 1)"
)
READY_TIMEOUT = 120.0
RESTARTS = 3
POLL_SECONDS = 0.25
FINISH_MARGIN = 30.0
LOG = "checkpoint_s3.log"  # the uploader's own stderr (tracebacks), in the run dir


class UploaderFailed(Exception):
    """The uploader could not start or reach the bucket: the script must not start."""


# ---- the tool environment ----------------------------------------------------------------------


def has_boto3(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", BOTO3_CHECK], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def tool_env_spec() -> Dict[str, Any]:
    """pyenv's description of the tool venv; its hash changes with the requirements and the Python."""
    key = json.dumps([list(TOOL_REQUIREMENTS), list(sys.version_info[:2])]).encode()
    return {
        "kind": "tools",
        "file": "runctl's tool requirements (%s)" % ", ".join(TOOL_REQUIREMENTS),
        "dependencies": list(TOOL_REQUIREMENTS),
        "hash": "runctl-tools-" + hashlib.sha256(key).hexdigest()[:12],
    }


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """One builder at a time: two runs starting on one host must not build the same venv at once."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# One agent supervises one run: its downloads and uploads share the interpreter chosen first.
_CHOSEN: Dict[str, str] = {}


def tool_python(project_dir: str, log_fd: int, run: Callable[[List[str]], int]) -> str:
    """The interpreter S3 transfers run with: the agent's own when it has boto3, else the tool venv's."""
    if "python" in _CHOSEN:
        return _CHOSEN["python"]
    own = sys.executable or "python3"
    if has_boto3(own):
        os.write(log_fd, ("[runctl] S3 transfers use boto3 of %s\n" % own).encode())
        _CHOSEN["python"] = own
        return own
    env = tool_env_spec()
    with _locked(os.path.join(pyenv.venv_root(), env["hash"] + ".lock")):
        python = pyenv.ensure_venv(env, project_dir, log_fd, run)
    if not has_boto3(python):
        raise pyenv.EnvSetupFailed(
            "the tool environment %s has no usable boto3" % os.path.dirname(os.path.dirname(python))
        )
    _CHOSEN["python"] = python
    return python


# ---- the process -------------------------------------------------------------------------------


CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def uploader_env(cfg: Dict[str, Any]) -> Dict[str, str]:
    """The agent's environment without the run's RUNCTL_* variables. With `credentials_file` (an AWS
    shared-credentials file the controller put on the host, 0600: forwarded session credentials),
    that file's default profile and nothing else; `endpoint_url` sets AWS_ENDPOINT_URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNCTL_")}
    if cfg.get("credentials_file"):
        for name in CREDENTIAL_VARIABLES:
            env.pop(name, None)
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(cfg["credentials_file"])
    if cfg.get("endpoint_url"):
        env["AWS_ENDPOINT_URL"] = str(cfg["endpoint_url"])
    return env


def forget_credentials(cfg: Dict[str, Any]) -> Optional[str]:
    """Remove the forwarded credentials file and its private dir (`credentials_forwarded`: only
    what the controller wrote for this run, never a file the user named); the path, or None."""
    path = cfg.get("credentials_file")
    if not cfg.get("credentials_forwarded") or not isinstance(path, str) or not path:
        return None
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError:
        return None
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))  # the run's 0700 dir, when nothing else is in it
    return path


def uploader_argv(
    python: str, run_dir: str, since: float, cfg: Optional[Dict[str, Any]] = None
) -> Tuple[List[str], Dict[str, str]]:
    """The command and environment of the uploader: this agent's code (its zip, or its source tree)."""
    return tool_command(python, ["s3-upload", run_dir, "--since", repr(since)], cfg)


def tool_command(
    python: str, args: List[str], cfg: Optional[Dict[str, Any]] = None
) -> Tuple[List[str], Dict[str, str]]:
    """A command of this agent's code run by the tool environment's `python`, with uploader_env(cfg)."""
    env = uploader_env(cfg or {})
    root = starting.artifact_root()
    if root:
        entry = [root]
    else:
        source = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        entry = ["-m", "runctl.agent"]
        env["PYTHONPATH"] = source + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return [python, *entry, *args], env


def summary(state: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """What status.json shows of the uploads (`checkpoint_s3`)."""
    if not state:
        return None
    keys = ("uri", "prefix", "phase", "uploaded", "last", "message", "error", "uploading")
    out = {k: state.get(k) for k in keys}
    out["pending"] = len(state.get("pending") or [])
    return out


class Uploads:
    """The uploader process of one run, from its start to its final pass."""

    def __init__(
        self,
        run_dir: str,
        python: str,
        event: Callable[..., None],
        exempt: Callable[[int], None],
    ) -> None:
        self.run_dir = run_dir
        self.python = python
        self.event = event
        self.exempt = exempt
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.since = 0.0
        self.restarts = 0
        self.state_mtime: Optional[int] = None
        self.state: Optional[Dict[str, Any]] = None
        self.next_poll = 0.0

    @property
    def state_path(self) -> str:
        return os.path.join(self.run_dir, layout.S3_STATE)

    def launch(self) -> None:
        spec = read_json(os.path.join(self.run_dir, layout.SPEC)) or {}
        cfg = spec.get("checkpoint_s3") if isinstance(spec.get("checkpoint_s3"), dict) else {}
        argv, env = uploader_argv(self.python, self.run_dir, self.since, cfg)
        log = os.open(os.path.join(self.run_dir, LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.run_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # no signal for the run's groups reaches it
            )
        finally:
            os.close(log)
        self.exempt(self.proc.pid)
        self.event("checkpoint_uploader_started", pid=self.proc.pid, python=self.python)

    def start(self, since: float, timeout: float = READY_TIMEOUT) -> None:
        """Start the uploader and wait until it has reached the bucket; UploaderFailed when it cannot."""
        self.since = since
        self.launch()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            state = read_json(self.state_path) or {}
            if state.get("phase") == "failed":
                self.proc.wait(10)
                raise UploaderFailed(str(state.get("error") or "the checkpoint uploader could not start"))
            if state.get("phase") in ("ready", "running", "final", "done") and state.get("pid") == self.proc.pid:
                self.refresh()
                return
            code = self.proc.poll()
            if code is not None:
                raise UploaderFailed(
                    "the checkpoint uploader exited with code %d before it was ready (%s)" % (code, self.log_tail())
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise UploaderFailed(
                    "the checkpoint uploader did not reach %s within %gs" % (state.get("uri") or "S3", timeout)
                )
            time.sleep(0.05)

    def log_tail(self) -> str:
        try:
            with open(os.path.join(self.run_dir, LOG), "rb") as handle:
                text = handle.read()[-600:].decode("utf-8", "replace").strip()
        except OSError:
            return "no output"
        return text.splitlines()[-1] if text else "no output"

    def refresh(self) -> bool:
        """Read the uploader's state file if it changed; True when it did."""
        try:
            mtime = os.stat(self.state_path).st_mtime_ns
        except OSError:
            return False
        if mtime == self.state_mtime:
            return False
        state = read_json(self.state_path)
        if state is None:
            return False
        self.state_mtime, self.state = mtime, state
        return True

    def poll(self, mono: float) -> Optional[Dict[str, Any]]:
        """While the run goes: the new summary for status.json when it changed, else None.
        An uploader that died before its final pass is started again (at most RESTARTS times)."""
        if mono < self.next_poll:
            return None
        self.next_poll = mono + POLL_SECONDS
        if self.proc is not None and self.proc.poll() is not None and not self.finished():
            code = self.proc.returncode
            if self.restarts < RESTARTS:
                self.restarts += 1
                self.event("checkpoint_uploader_restarted", exit_code=code, restarts=self.restarts)
                self.launch()
            elif self.proc is not None:
                self.event("checkpoint_uploader_gone", exit_code=code)
                self.proc = None
        return summary(self.state) if self.refresh() else None

    def finished(self) -> bool:
        return bool(self.state) and (self.state or {}).get("phase") in ("done", "failed")

    def finish(self, timeout: float) -> Optional[Dict[str, Any]]:
        """After the script's exit: wait for the final pass (bounded), the summary it ends with."""
        deadline = time.monotonic() + timeout
        self.refresh()
        listening = (self.state or {}).get("pid") == getattr(self.proc, "pid", None)  # its handler is set
        if self.proc is not None and self.proc.poll() is None and listening:
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGUSR1)  # the exit is in status.json: look now
        while self.proc is not None and time.monotonic() < deadline:
            self.refresh()
            if self.finished():
                break  # its state says it all; the end-of-run step need not wait for its exit
            if self.proc.poll() is not None:
                if self.restarts >= RESTARTS:
                    self.event("checkpoint_uploader_gone", exit_code=self.proc.returncode)
                    break
                self.restarts += 1  # died before its final pass: it takes up from its state file
                self.event("checkpoint_uploader_restarted", exit_code=self.proc.returncode, restarts=self.restarts)
                self.launch()
                continue
            time.sleep(0.05)
        self.refresh()
        if not self.finished():
            self.event("checkpoint_uploads_unfinished", waited=timeout, phase=(self.state or {}).get("phase"))
        return summary(self.state)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# ---- the proof ---------------------------------------------------------------------------------


def proof(
    run_dir: str, project_dir: str, checkpoint_dir: str, globs: Optional[List[str]]
) -> Tuple[Dict[str, Any], str]:
    """(the proof, why it does not hold: "" when every checkpoint of the run on disk is verified in S3)."""
    state = read_json(os.path.join(run_dir, layout.S3_STATE))
    if state is None:
        return {"held": False}, "no checkpoint upload to S3 for this run (spec checkpoint_s3)"
    since = float(state.get("since") or 0)
    files = checkpoints.find(project_dir, checkpoint_dir, globs or None)
    units = checkpoints.units([f for f in files if float(f["mtime"]) >= since])
    verified = state.get("verified") or {}
    missing = sorted(
        n for n, u in units.items() if (verified.get(n) or {}).get("signature") != checkpoints.unit_signature(u)
    )
    found: Dict[str, Any] = {
        "held": False,
        "uri": state.get("uri"),
        "manifest_key": state.get("manifest_key"),
        "phase": state.get("phase"),
        "verified": [
            {"name": n, "key": v.get("key"), "checksum": v.get("checksum"), "size": v.get("size")}
            for n, v in sorted(verified.items())
            if n in units
        ],
        "missing": missing,
    }
    if state.get("phase") != "done":
        detail = state.get("error") or state.get("message") or state.get("phase")
        return found, "checkpoint uploads to S3 not finished (%s)" % detail
    if missing:
        return found, "not verified in S3: %s" % ", ".join(missing[:5])
    found["held"] = True
    return found, ""
