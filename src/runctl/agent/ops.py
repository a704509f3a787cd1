"""What a controller asks of a run directory: probe, stop, wait for a change, read the log.

The local transport calls these in-process; the ssh transport runs them on the host through the
agent's command line. One implementation serves both.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..core import checkpoints, completion, layout, stopping
from ..core import status as st
from ..core.fsutil import (
    append_json,
    atomic_write,
    atomic_write_json,
    disk_full,
    parse_exit_code,
    parse_pid,
    read_json,
    read_jsonl,
    read_text,
    release_space,
    write_failed,
)
from . import descendants, procs

WAIT_POLL_SECONDS = 0.05
LIVENESS_EVERY_SECONDS = 1.0
LOG_TAIL_HINT_BYTES = 8192
AGENT_START_SECONDS = 60.0
LOG_CHUNK = 1 << 20
STATUS_READ_ATTEMPTS = 6
STATUS_RETRY_SECONDS = 0.1


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


def read_status_patiently(run_dir: str) -> Optional[Dict[str, Any]]:
    """status.json, read again for a moment when it is missing or unparsable (a torn or corrupted
    write, which a live agent repairs within a tick); None if it stays unreadable."""
    path = os.path.join(run_dir, layout.STATUS)
    for attempt in range(STATUS_READ_ATTEMPTS):
        state = read_json(path)
        if state is not None and isinstance(state.get("seq"), int):
            return state  # valid JSON without a seq is no status of ours either
        if not os.path.isdir(run_dir):
            return None
        if attempt + 1 < STATUS_READ_ATTEMPTS:
            time.sleep(STATUS_RETRY_SECONDS)
    return None


def rebuilt_seq() -> int:
    """The seq of a status rebuilt without the agent's own record: above any seq the agent writes
    (it counts its writes from 1), so every reader takes the rebuilt status as the newest."""
    return int(time.time() * 1000)


def probe(run_dir: str) -> Dict[str, Any]:
    """The run's status, with the liveness of its agent and process checked.

    When the agent is gone the run dir is classified by the completion rules; a process that is
    gone with no recorded exit becomes `lost` (written back, so every reader agrees). An
    unreadable status.json never decides anything by itself: see probe_without_status.
    """
    state = read_status_patiently(run_dir)
    if state is None:
        return probe_without_status(run_dir)
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
    return record_verdict(run_dir, state)


def record_verdict(run_dir: str, state: Dict[str, Any]) -> Dict[str, Any]:
    """Write the verdict on a run whose agent is gone back to its run dir, so every reader agrees.

    On a full disk the space the agent held is used; if even that fails, a run that would be `lost`
    is `failed` with "disk full at PATH" (the likely reason its end went unrecorded), returned
    unwritten for the controller to record in its store. A write the disk refuses never raises.
    """
    try:
        try:
            atomic_write_json(os.path.join(run_dir, layout.STATUS), state)
        except OSError as exc:
            if not disk_full(exc) or not release_space(os.path.join(run_dir, layout.SPACE_RESERVE)):
                raise
            atomic_write_json(os.path.join(run_dir, layout.STATUS), state)
    except OSError as exc:
        failure = write_failed(exc)
        if failure is None:
            raise
        state["write_error"] = failure.to_dict()
        if failure.kind == "disk_full" and state.get("status") == st.LOST:
            state.update(
                {
                    "status": st.FAILED,
                    "termination_status": st.T_FAILED,
                    "termination_message": "%s: the run's end could not be recorded" % failure.message,
                    "disk_full": failure.path,
                }
            )
        return state
    descendants.release_cgroup(state.get("cgroup"), str(state.get("run_id")))
    try:
        append_json(
            os.path.join(run_dir, layout.EVENTS),
            {"t": time.time(), "event": "agent_gone", "status": state.get("status")},
        )
    except OSError:
        pass  # status.json, the record that matters, is written
    return state


def probe_without_status(run_dir: str) -> Dict[str, Any]:
    """Liveness when status.json stays unreadable: decided from the agent and the process.

    A run dir that is gone is reported as such (no "seq", no "unreadable"). Otherwise nothing is
    decided unless the agent is known (agent.json) and gone: then a recorded exit or a completion
    marker ends the run as the completion rules say, and it is `lost` only when its process is
    gone too with no exit recorded. Anything else leaves the run as it was, with a warning.
    """
    if not os.path.isdir(run_dir):
        return {"status": "unknown", "error": "no run directory %s" % run_dir}
    join = lambda name: os.path.join(run_dir, name)  # noqa: E731
    ident = read_json(join(layout.IDENTITY)) or {}
    spec = read_json(join(layout.SPEC)) or {}
    pid = ident.get("pid") or parse_pid(read_text(join(layout.PID)))
    agent_pid = ident.get("agent_pid")
    agent_alive = procs.is_alive(agent_pid, ident.get("agent_start")) if agent_pid else None
    pid_alive = procs.is_alive(pid, ident.get("pid_start")) if pid else None
    exit_code = parse_exit_code(read_text(join(layout.EXIT_CODE)))
    found: Dict[str, Any] = {
        "status": "unknown",
        "unreadable": True,
        "error": "%s in %s is unreadable" % (layout.STATUS, run_dir),
        "agent_alive": agent_alive,
        "pid": pid,
        "pid_start": ident.get("pid_start"),
        "run_id": spec.get("run_id") or ident.get("run_id"),
    }
    if agent_alive:
        found["warning"] = "%s is unreadable; the agent is alive and rewrites it" % layout.STATUS
        return found
    if pid_alive:
        found["warning"] = "%s is unreadable and the agent is gone; the training process still runs" % layout.STATUS
        return found
    if agent_alive is None:
        # No agent on record: it may be alive and about to write the run's end itself.
        found["warning"] = "%s is unreadable and no agent is recorded; nothing tells how the run is doing" % (
            layout.STATUS
        )
        return found
    marker = marker_info(run_dir, layout.project_of(run_dir), str(found["run_id"]))
    verdict = completion.classify(
        completion.Evidence(
            now=time.time(),
            started_at=ident.get("started_at"),
            exit_code=exit_code,
            marker_size=marker.get("size"),
            marker_mtime=marker.get("mtime"),
            pid=pid if pid else -1,
            pid_alive=False,
        )
    )
    if not st.is_terminal(verdict.status):
        found["warning"] = "%s is unreadable; %s" % (layout.STATUS, verdict.message)
        return found
    message = verdict.message
    if verdict.status == st.LOST and not pid:
        message = "the agent died before the training process started"
    now = time.time()
    state: Dict[str, Any] = {
        "run_id": found["run_id"],
        "name": spec.get("name"),
        "status": verdict.status,
        "termination_status": verdict.termination_status,
        "termination_message": "%s (the agent is gone; %s was unreadable)" % (message, layout.STATUS),
        "ended_at": now,
        "started_at": ident.get("started_at"),
        "pid": pid,
        "agent_pid": agent_pid,
        "exit_code": exit_code,
        "rebuilt": True,
        "seq": rebuilt_seq(),
        "updated_at": now,
    }
    if exit_code is not None:
        state["exited_at"] = _file_info(join(layout.EXIT_CODE)).get("mtime", now)
    atomic_write_json(join(layout.STATUS), state)
    descendants.release_cgroup(ident.get("cgroup"), str(found["run_id"]))
    append_json(join(layout.EVENTS), {"t": now, "event": "status_rebuilt", "status": verdict.status})
    return state


def request_stop(run_dir: str, grace: Optional[float], message: str) -> Dict[str, Any]:
    """Ask the agent for a graceful stop; the agent acts on it within one tick.

    A run already stopping gets the new request too: a shorter grace hurries its sequence.
    """
    state = probe(run_dir)
    if st.is_terminal(state.get("status", "")):
        return {"ok": False, "status": state.get("status"), "error": "the run already ended"}
    if not state.get("agent_alive"):
        if state.get("unreadable") and not state.get("pid"):
            return {"ok": False, "status": state.get("status"), "error": state.get("warning") or state.get("error")}
        return stop_unsupervised(run_dir, state, grace, message)
    request = {"t": time.time(), "grace": grace, "message": message, "id": os.urandom(8).hex()}
    atomic_write_json(os.path.join(run_dir, layout.STOP_REQUEST), request)
    return {"ok": True, "status": state.get("status")}


def stop_unsupervised(run_dir: str, state: Dict[str, Any], grace: Optional[float], message: str) -> Dict[str, Any]:
    """The agent is gone but the script runs on: stop it ourselves, gracefully, and record why it ended."""
    pid = state.get("pid")
    wait = stopping.clamp_grace(grace, 10.0)
    if pid and procs.is_alive(pid, state.get("pid_start")):
        atomic_write(os.path.join(run_dir, layout.STOP_FILE), (message + "\n").encode())
        deadline = time.monotonic() + wait
        while procs.is_alive(pid, state.get("pid_start")) and time.monotonic() < deadline:
            time.sleep(0.1)
        killed = stop_run_processes(run_dir, pid, str(state.get("run_id", "")))
        if killed:
            append_json(
                os.path.join(run_dir, layout.EVENTS),
                {"t": time.time(), "event": "processes_killed", "processes": killed},
            )
        unreadable = bool(state.pop("unreadable", False))
        state.update(
            {
                "status": st.STOPPED,
                "termination_status": st.T_USER_STOP,
                "termination_message": message + " (the agent was gone; the process was stopped directly)",
                "ended_at": time.time(),
                "seq": rebuilt_seq() if unreadable else int(state.get("seq", 0)) + 1,
                "updated_at": time.time(),
            }
        )
        if unreadable:
            state["rebuilt"] = True
        for key in ("agent_alive", "warning", "error"):
            state.pop(key, None)
        atomic_write_json(os.path.join(run_dir, layout.STATUS), state)
        return {"ok": True, "status": st.STOPPED, "unsupervised": True}
    return {"ok": True, "status": probe(run_dir).get("status"), "unsupervised": True}


def stop_run_processes(run_dir: str, pgid: int, run_id: str, grace: float = 10.0) -> List[Dict[str, object]]:
    """Without its agent: SIGTERM, then SIGKILL, the run's group and every process the agent recorded
    (descendants.jsonl, its cgroup), each checked against its recorded start time."""
    records, _ = read_jsonl(os.path.join(run_dir, layout.DESCENDANTS))
    ident = read_json(os.path.join(run_dir, layout.IDENTITY)) or {}
    tracker = descendants.Tracker.from_records(run_id, records, ident.get("cgroup"))
    killed = tracker.kill_all(grace, pgid)
    tracker.close()
    return killed


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


def on_end_claim(run_dir: str, by: str = "controller") -> Dict[str, Any]:
    """Claim the run's end-of-run step (see agent/onend.py): {"claimed", "claim", "result"}.

    Whoever claims first performs the step; a controller that gets `claimed: false` reads the
    agent's claim and result (under way while `result.ended_at` is null) and does not act.
    """
    from . import onend

    return onend.controller_claim(run_dir, by)


def s3_proof(run_dir: str, wait: float) -> Dict[str, Any]:
    """Whether every checkpoint of the run is verified in S3 (agent/uploads.proof), waiting up to
    `wait` seconds for the uploader's final pass: the proof a controller terminates a host on.
    Polled, so the answer comes the moment the final checkpoint is verified."""
    from . import uploads

    spec = read_json(os.path.join(run_dir, layout.SPEC)) or {}
    project = spec.get("project_dir") or layout.project_of(run_dir)
    directory = layout.checkpoint_dir(project, spec.get("checkpoint_dir"))
    globs = spec.get("checkpoint_globs") or None
    deadline = time.monotonic() + max(0.0, min(float(wait), 3600.0))
    while True:
        found, reason = uploads.proof(run_dir, project, directory, globs)
        over = found.get("phase") in ("done", "failed") or found.get("phase") is None
        if not reason or over or time.monotonic() >= deadline:
            return {"proof": found, "reason": reason}
        time.sleep(0.05)


def on_end_result(run_dir: str, result: Any) -> Dict[str, Any]:
    """Record what the controller's end-of-run step did, in on_end.json; only for the claim's holder."""
    from . import onend

    return onend.controller_result(run_dir, result)


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


DIGEST_CHUNK = 1 << 20


def checkpoint_digests(run_dir: str, base: str, paths: List[str]) -> Dict[str, Any]:
    """Size and SHA-256 of checkpoint files of the run (relative to `base`: the run's checkpoint
    dir or its project dir), so a controller can prove the copies it pulled are exact.

    A path that leaves the run's project and checkpoint dir, or cannot be read, gets an `error`
    instead of a digest: it is not proven, never silently skipped.
    """
    import hashlib

    spec = read_json(os.path.join(run_dir, layout.SPEC)) or {}
    project = spec.get("project_dir") or layout.project_of(run_dir)
    directory = layout.checkpoint_dir(project, spec.get("checkpoint_dir"))
    root = directory if base == checkpoints.BASE_CHECKPOINT_DIR else project
    allowed = [os.path.realpath(project), os.path.realpath(directory)]
    files: Dict[str, Dict[str, Any]] = {}
    for rel in paths:
        path = os.path.realpath(os.path.join(root, rel))
        if not any(path == a or path.startswith(a.rstrip("/") + "/") for a in allowed):
            files[rel] = {"error": "outside the run's project and checkpoint dir"}
            continue
        digest = hashlib.sha256()
        size = 0
        try:
            with open(path, "rb") as handle:
                while True:
                    chunk = handle.read(DIGEST_CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    digest.update(chunk)
        except OSError as exc:
            files[rel] = {"error": exc.strerror or str(exc)}
            continue
        files[rel] = {"size": size, "sha256": digest.hexdigest()}
    return {"base": base, "root": root, "files": files}


def plain_status(project_dir: str) -> Dict[str, Any]:
    """Classify a directory holding the original system's files, for scripts started without runctl.

    An exit-code file older than the pid file belongs to an earlier run and is ignored.
    """
    join = lambda name: os.path.join(project_dir, name)  # noqa: E731
    pid_text = read_text(join(layout.PID))
    pid = parse_pid(pid_text)
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
            # A torn or corrupted read is skipped: the next change or liveness check tells.
            state = read_json(status_path)
            if state is not None and not isinstance(state.get("seq"), int):
                state = None
        last_mtime = mtime
        if state is not None and state.get("seq") is None:
            if state.get("unreadable"):
                state = None  # unreadable, yet the run may well be alive: never "gone" from that
            else:
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
