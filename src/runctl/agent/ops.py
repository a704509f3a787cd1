"""What a controller asks of a run directory: probe, stop, wait for a change, read the log.

The local transport calls these in-process; the ssh transport runs them on the host through the
agent's command line. One implementation serves both.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Iterator, Optional, Tuple

from ..core import checkpoints, completion, layout
from ..core import status as st
from ..core.fsutil import append_json, atomic_write, atomic_write_json, parse_exit_code, read_json, read_text
from . import procs

WAIT_POLL_SECONDS = 0.05
LIVENESS_EVERY_SECONDS = 1.0
LOG_TAIL_HINT_BYTES = 8192
AGENT_START_SECONDS = 60.0
LOG_CHUNK = 1 << 20


def _file_info(path: str) -> Dict[str, Any]:
    try:
        info = os.stat(path)
    except OSError:
        return {}
    return {"size": info.st_size, "mtime": info.st_mtime}


def marker_info(run_dir: str, project_dir: str, run_id: str) -> Dict[str, Any]:
    """The completion marker of a run: its run dir's copy, else the project's.

    The project's marker only counts while this run is the project's latest, so parallel or later
    runs in one project dir can never complete each other.
    """
    found = _file_info(os.path.join(run_dir, layout.MARKER))
    if found:
        return found
    latest = (read_text(os.path.join(project_dir, layout.LATEST_RUN)) or "").strip()
    if latest != run_id:
        return {}
    return _file_info(os.path.join(project_dir, layout.MARKER))


def read_status(run_dir: str) -> Dict[str, Any]:
    return read_json(os.path.join(run_dir, layout.STATUS)) or {}


def probe(run_dir: str) -> Dict[str, Any]:
    """The run's status, with the liveness of its agent and process checked.

    When the agent is gone the run dir is classified by the completion rules; a process that is
    gone with no recorded exit becomes `lost` (written back, so every reader agrees).
    """
    state = read_status(run_dir)
    if not state:
        return {"status": "unknown", "error": "no status.json in %s" % run_dir}
    if st.is_terminal(state.get("status", "")):
        return state
    if procs.is_alive(state.get("agent_pid"), state.get("agent_start")):
        state["agent_alive"] = True
        return state
    if not state.get("agent_pid") and time.time() - float(state.get("created_at") or 0) < AGENT_START_SECONDS:
        return state  # written by the launcher; the agent has not recorded itself yet
    state["agent_alive"] = False
    pid = state.get("pid")
    marker = marker_info(run_dir, layout.project_of(run_dir), str(state.get("run_id")))
    verdict = completion.classify(
        completion.Evidence(
            now=time.time(),
            started_at=state.get("started_at"),
            exit_code=parse_exit_code(read_text(os.path.join(run_dir, layout.EXIT_CODE))),
            marker_size=marker.get("size"),
            marker_mtime=marker.get("mtime"),
            pid=pid if pid else -1,
            pid_alive=procs.is_alive(pid, state.get("pid_start")) if pid else False,
        )
    )
    if not st.is_terminal(verdict.status):
        state["warning"] = "the agent is gone; the training process is still running unsupervised"
        return state
    message = verdict.message
    if verdict.status == st.LOST and not pid:
        message = "the agent died before the training process started"
    state.update(
        {
            "status": verdict.status,
            "termination_status": verdict.termination_status,
            "termination_message": message + " (the agent is gone)",
            "ended_at": time.time(),
            "seq": int(state.get("seq", 0)) + 1,
            "updated_at": time.time(),
        }
    )
    atomic_write_json(os.path.join(run_dir, layout.STATUS), state)
    append_json(
        os.path.join(run_dir, layout.EVENTS),
        {"t": time.time(), "event": "agent_gone", "status": verdict.status},
    )
    return state


def request_stop(run_dir: str, grace: Optional[float], message: str) -> Dict[str, Any]:
    """Ask the agent for a graceful stop; the agent acts on it within one tick."""
    state = probe(run_dir)
    if st.is_terminal(state.get("status", "")):
        return {"ok": False, "status": state.get("status"), "error": "the run already ended"}
    if not state.get("agent_alive"):
        return stop_unsupervised(run_dir, state, grace, message)
    request = {"t": time.time(), "grace": grace, "message": message}
    atomic_write_json(os.path.join(run_dir, layout.STOP_REQUEST), request)
    return {"ok": True, "status": state.get("status")}


def stop_unsupervised(run_dir: str, state: Dict[str, Any], grace: Optional[float], message: str) -> Dict[str, Any]:
    """The agent is gone but the script runs on: stop it ourselves, gracefully, and record why it ended."""
    pid = state.get("pid")
    wait = float(grace if grace is not None else 10)
    if pid and procs.is_alive(pid, state.get("pid_start")):
        atomic_write(os.path.join(run_dir, layout.STOP_FILE), (message + "\n").encode())
        deadline = time.monotonic() + wait
        while procs.is_alive(pid, state.get("pid_start")) and time.monotonic() < deadline:
            time.sleep(0.1)
        procs.kill_all(pid, str(state.get("run_id", "")), 10.0)
        state.update(
            {
                "status": st.STOPPED,
                "termination_status": st.T_USER_STOP,
                "termination_message": message + " (the agent was gone; the process was stopped directly)",
                "ended_at": time.time(),
                "seq": int(state.get("seq", 0)) + 1,
                "updated_at": time.time(),
            }
        )
        state.pop("agent_alive", None)
        state.pop("warning", None)
        atomic_write_json(os.path.join(run_dir, layout.STATUS), state)
        return {"ok": True, "status": st.STOPPED, "unsupervised": True}
    return {"ok": True, "status": probe(run_dir).get("status"), "unsupervised": True}


def wait_change(run_dir: str, seq: int, timeout: float) -> Dict[str, Any]:
    """Block until status.json's seq exceeds `seq`, the run ends, or `timeout` passes (a long-poll)."""
    path = os.path.join(run_dir, layout.STATUS)
    deadline = time.monotonic() + max(0.0, timeout)
    next_liveness = time.monotonic() + LIVENESS_EVERY_SECONDS
    last_mtime = None
    state: Dict[str, Any] = {}
    while True:
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            mtime = None
        if mtime != last_mtime:
            last_mtime = mtime
            state = read_status(run_dir)
            if int(state.get("seq", 0)) > seq or st.is_terminal(state.get("status", "")):
                return state
        now = time.monotonic()
        if now >= next_liveness:
            next_liveness = now + LIVENESS_EVERY_SECONDS
            state = probe(run_dir)
            if int(state.get("seq", 0)) > seq or st.is_terminal(state.get("status", "")):
                return state
        if now >= deadline:
            return state
        time.sleep(WAIT_POLL_SECONDS)


def read_log(run_dir: str, offset: int, limit: int = 1 << 20) -> bytes:
    """Bytes of the run log from `offset`; the log is append-only, so offsets never go stale."""
    try:
        with open(os.path.join(run_dir, layout.LOG), "rb") as handle:
            handle.seek(offset)
            return handle.read(limit)
    except OSError:
        return b""


def list_checkpoints(run_dir: str) -> Dict[str, Any]:
    """The run's checkpoints (see core.checkpoints), newest first, marking those written during this run."""
    spec = read_json(os.path.join(run_dir, layout.SPEC)) or {}
    state = read_status(run_dir)
    project = spec.get("project_dir") or layout.project_of(run_dir)
    directory = layout.checkpoint_dir(project, spec.get("checkpoint_dir"))
    started = float(state.get("started_at") or 0)
    ended = float(state.get("exited_at") or state.get("ended_at") or 0) or None
    files = checkpoints.find(project, directory, spec.get("checkpoint_globs") or None)
    for item in files:
        item["this_run"] = item["mtime"] >= started and (ended is None or item["mtime"] <= ended + 60)
    return {"checkpoint_dir": directory, "project_dir": project, "files": files}


def plain_status(project_dir: str) -> Dict[str, Any]:
    """Classify a directory holding the original system's files, for scripts started without runctl.

    An exit-code file older than the pid file belongs to an earlier run and is ignored.
    """
    join = lambda name: os.path.join(project_dir, name)  # noqa: E731
    pid_text = read_text(join(layout.PID))
    pid: Optional[int] = parse_exit_code(pid_text)
    pid_info = _file_info(join(layout.PID))
    code_info = _file_info(join(layout.EXIT_CODE))
    exit_code = parse_exit_code(read_text(join(layout.EXIT_CODE)))
    stale_exit = bool(pid_info and code_info and code_info["mtime"] < pid_info["mtime"])
    if stale_exit:
        exit_code = None
    marker = _file_info(join(layout.MARKER))
    tail = ""
    log = join(layout.LOG)
    try:
        with open(log, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - LOG_TAIL_HINT_BYTES))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        pass
    verdict = completion.classify(
        completion.Evidence(
            now=time.time(),
            started_at=pid_info.get("mtime"),
            exit_code=exit_code,
            marker_size=marker.get("size"),
            marker_mtime=marker.get("mtime"),
            pid=pid,
            pid_alive=procs.is_alive(pid) if pid else None,
            log_tail=tail,
        )
    )
    return {
        "project_dir": os.path.abspath(project_dir),
        "status": verdict.status,
        "termination_status": verdict.termination_status,
        "termination_message": verdict.message,
        "evidence": verdict.source,
        "pid": pid,
        "exit_code": exit_code,
        "stale_exit_code_ignored": stale_exit,
        "marker": bool(marker),
        "files": sorted(
            name for name in (layout.PID, layout.EXIT_CODE, layout.MARKER, layout.LOG) if os.path.exists(join(name))
        ),
    }


def follow(
    run_dir: str,
    offset: int = 0,
    seq: int = 0,
    poll: float = WAIT_POLL_SECONDS,
    heartbeat: float = 5.0,
) -> "Iterator[Tuple[str, Any]]":
    """Log bytes from `offset` and every status change after `seq`, until the run has ended.

    Yields ("log", bytes), ("status", dict), ("heartbeat", None) and finally ("end", dict). The
    agent writes the terminal status only after the script's output is drained, so reading the log
    to its end after a terminal status loses nothing.
    """
    if offset < 0:
        try:
            offset = os.path.getsize(os.path.join(run_dir, layout.LOG))
        except OSError:
            offset = 0
    last_mtime = None
    next_liveness = time.monotonic() + LIVENESS_EVERY_SECONDS
    next_beat = time.monotonic() + heartbeat
    status_path = os.path.join(run_dir, layout.STATUS)
    while True:
        data = read_log(run_dir, offset, LOG_CHUNK)
        if data:
            offset += len(data)
            yield "log", data
            if len(data) == LOG_CHUNK:
                continue  # more is waiting: keep reading; otherwise let output gather for one poll
        try:
            mtime = os.stat(status_path).st_mtime_ns
        except OSError:
            mtime = None
        state: Optional[Dict[str, Any]] = None
        now = time.monotonic()
        if now >= next_liveness:
            next_liveness = now + LIVENESS_EVERY_SECONDS
            state = probe(run_dir)
        elif mtime != last_mtime:
            state = read_status(run_dir)
        last_mtime = mtime
        if state is not None and state.get("seq") is None:
            yield "gone", state
            return
        if state is not None and int(state.get("seq", 0)) > seq:
            seq = int(state.get("seq", 0))
            if st.is_terminal(state.get("status", "")):
                tail = read_log(run_dir, offset)
                while tail:
                    offset += len(tail)
                    yield "log", tail
                    tail = read_log(run_dir, offset)
                yield "end", state
                return
            yield "status", state
        elif state is not None and st.is_terminal(state.get("status", "")):
            yield "end", state
            return
        if now >= next_beat:
            next_beat = now + heartbeat
            yield "heartbeat", None
        time.sleep(poll)
