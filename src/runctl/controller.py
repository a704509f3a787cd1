"""Controller-side operations on runs: validate and start, refresh, follow, wait, stop.

The CLI stays thin: it parses flags, calls these, and renders what they return.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .core import layout
from .core import status as st
from .core.errors import HostError, RunctlError, UsageError, WaitTimeout
from .store import Store
from .transport.base import Transport

PROJECT_MARKERS = (".git", "pyproject.toml")
PRE_LAUNCH = (st.PENDING, st.PROVISIONING, st.SYNCING)
HOST_ASK_SECONDS = 3.0  # how often a follower that lost its host asks the provider what became of it


def controller_identity() -> dict[str, Any]:
    """Who is starting a run: lets others tell a run being set up from one whose controller died."""
    from .agent.procs import start_time

    return {"pid": os.getpid(), "start": start_time(os.getpid())}


def find_project_root(start: Path) -> Path:
    """The nearest ancestor holding .git or pyproject.toml, else `start` itself."""
    start = start.resolve()
    for candidate in (start, *start.parents):
        if any((candidate / marker).exists() for marker in PROJECT_MARKERS):
            return candidate
    return start


def check_project_dir(root: Path, given: str | None) -> None:
    try:
        root.stat()
    except PermissionError:
        raise UsageError(
            "project dir %s cannot be reached (permission denied)" % (given or root),
            "fix the permissions of its parent directories, or pass --project-dir a directory you can read",
        ) from None
    except OSError:
        pass
    if not root.exists():
        raise UsageError("project dir %s does not exist" % (given or root), "pass --project-dir an existing directory")
    if not root.is_dir():
        raise UsageError(
            "project dir %s is not a directory" % (given or root), "pass --project-dir the directory holding your code"
        )
    try:
        with os.scandir(root):
            pass
        if not os.access(root, os.R_OK | os.X_OK):
            raise PermissionError
    except PermissionError:
        raise UsageError(
            "project dir %s is not readable (permission denied)" % (given or root),
            "fix its permissions (chmod u+rx %s), or pass --project-dir a directory you can read" % root,
        ) from None


def parse_env(items: Iterable[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not (key.replace("_", "a").isalnum() and not key[0].isdigit()):
            raise UsageError(
                "invalid --env %r: expected KEY=VALUE with KEY a variable name" % item,
                "for example: --env CUDA_VISIBLE_DEVICES=0",
            )
        env[key] = value
    return env


def default_python() -> str:
    """The Python a user would get by typing `python`: the active venv's, else python3 on PATH."""
    venv = os.environ.get("VIRTUAL_ENV")
    if venv and (Path(venv) / "bin" / "python").exists():
        return str(Path(venv) / "bin" / "python")
    return shutil.which("python3") or shutil.which("python") or sys.executable


def resolve_python(python: str | None) -> str:
    if python is None:
        return default_python()
    found = shutil.which(python)
    if found is None:
        raise UsageError("--python %r is not an executable" % python, "pass the path of a Python interpreter")
    return found


def resolve_script(script: str, project_dir: Path) -> tuple[Path, str]:
    """(absolute script path, path relative to the project dir); it must exist inside the project."""
    path = Path(script).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    try:
        path = path.resolve()
        exists = path.exists()
    except PermissionError:
        raise UsageError(
            "script %s cannot be read (permission denied)" % script, "fix the permissions of it and its directory"
        ) from None
    if not exists:
        raise UsageError("script %s does not exist" % script, "check the path (it is relative to your cwd)")
    if not path.is_file():
        raise UsageError("script %s is not a file" % script, "name the training script itself")
    try:
        relative = path.relative_to(project_dir)
    except ValueError:
        raise UsageError(
            "script %s is outside the project dir %s" % (path, project_dir),
            "pass --project-dir %s, or move the script into the project" % path.parent,
        ) from None
    return path, str(relative)


def locate(script: str, project_dir: str | None) -> tuple[Path, Path, str]:
    """(project root, script path, script path relative to the root), all checked to exist and belong."""
    root = Path(project_dir).expanduser().resolve() if project_dir else find_project_root(Path.cwd())
    check_project_dir(root, project_dir)
    script_path, relative = resolve_script(script, root)
    return root, script_path, relative


def build_command(script_path: Path, relative: str, python: str, args: list[str]) -> list[str]:
    """A .py script runs with `python` (the provider's: resolved here for local runs); anything else
    must be an executable itself. "./" keeps a name like "-x.py" from being read as an option, and
    finds a bare executable in the project dir."""
    is_py = script_path.suffix == ".py"
    if not is_py and not os.access(script_path, os.X_OK):
        raise UsageError(
            "script %s is not executable" % script_path,
            "run: chmod +x %s   (or use a .py script, which runs with --python)" % script_path,
        )
    runnable = "./" + relative if relative.startswith("-") or (not is_py and "/" not in relative) else relative
    return [python, runnable, *args] if is_py else [runnable, *args]


def check_regex(pattern: str | None) -> None:
    if pattern is None:
        return
    import re

    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise UsageError("invalid --metrics-regex: %s" % exc, "use Python regex syntax") from None
    if not compiled.groupindex:
        raise UsageError("--metrics-regex has no named group", r"name each metric, e.g. 'acc=(?P<accuracy>[\d.]+)'")


# ---- runs -------------------------------------------------------------------------------


def transport_for(row: dict[str, Any]) -> Transport:
    """How to reach a recorded run's host again: its provider, from the transport record kept."""
    from . import providers

    if row.get("provider") not in providers.REGISTRY:
        raise RunctlError("run %s uses an unknown provider %r" % (row["run_id"], row.get("provider")))
    return providers.get(row["provider"]).reconnect(row.get("transport") or {})


def owner_of(row: dict[str, Any]) -> dict[str, Any]:
    """What the starting controller recorded for itself (identity, local project root, end options)."""
    spec = row.get("spec") or {}
    if spec.get("controller"):
        return dict(spec["controller"])
    transport = row.get("transport") or {}  # records from before the pipeline kept it there
    legacy = dict(transport.get("controller") or {})
    legacy.update(
        local_root=transport.get("local_root"), download_checkpoints=transport.get("download_checkpoints", True)
    )
    return legacy


def refresh(store: Store, row: dict[str, Any]) -> dict[str, Any]:
    """The run's current state from its run dir, recorded in the store."""
    if being_launched(row):
        return view(row)  # no run dir exists yet: the controller starting it is still syncing or launching
    # A run completed by its marker may still have a lingering process whose exit is yet to be recorded.
    if st.is_terminal(row["status"]) and ("exited_at" in row["state"] or row["status"] != st.COMPLETED):
        return view(row)
    try:
        state = transport_for(row).probe(row["run_dir"])
    except HostError as exc:
        # The host is out of reach: its provider may know why (stopped, terminated, interrupted).
        seen = provider_says(store, row) or view(row)
        if not st.is_terminal(seen["status"]):
            seen["warning"] = "last known state; %s" % exc.message
        return seen
    if state.get("unreadable"):
        # status.json could not be read, yet the run dir is there: keep what was last known.
        stale = view(row)
        stale["warning"] = "last known state; %s" % (state.get("warning") or state.get("error"))
        if state.get("agent_alive") is not None:
            stale["agent_alive"] = state["agent_alive"]
        return stale
    if state.get("seq") is None:
        return record_gone(store, row, state)
    record_state(store, row, state)
    return view(store.get(row["run_id"]) or row)


def refreshed_or_last_known(store: Store, row: dict[str, Any]) -> dict[str, Any]:
    """The run refreshed for a listing (`runs list`, the dashboard): one whose run dir cannot be
    read or written shows its last known state with the reason, and never breaks the others."""
    import sqlite3

    try:
        return refresh(store, row)
    except (OSError, sqlite3.Error, RunctlError) as exc:
        stale = view(row)
        stale["warning"] = "last known state; %s" % (exc.message if isinstance(exc, RunctlError) else exc)
        return stale


def record_state(
    store: Store, row: dict[str, Any], state: dict[str, Any], say: Callable[[str], None] | None = None
) -> None:
    """Record a status from the run dir. One rebuilt from evidence (its status.json was unreadable)
    keeps what the store last knew of the run (metrics, times) under the new verdict. A run seen
    terminal here gets the controller's end-of-run step (once; see ending.py)."""
    if state.get("rebuilt"):
        state = {**row["state"], **{k: v for k, v in state.items() if v is not None}}
    if row["state"].get("notice") and "notice" not in state:
        state = {**state, "notice": row["state"]["notice"]}  # what the end-of-run step said stays
    store.update_state(row["run_id"], state)
    if st.is_terminal(str(state.get("status"))):
        from .ending import end_of_run

        end_of_run(store, store.get(row["run_id"]) or row, say)
        if (row.get("spec") or {}).get("resume_s3") and not st.is_terminal(str(row["status"])):
            from .s3checkpoints import mark_resume_ended

            mark_resume_ended(row["spec"], str(state.get("status")))  # after the end's own step: billing first


def being_launched(row: dict[str, Any]) -> bool:
    """Whether another (live) runctl is still syncing or launching this run, so it has no run dir yet."""
    if row["status"] not in PRE_LAUNCH or row.get("seq"):
        return False
    from .agent.procs import is_alive

    owner = owner_of(row)
    return is_alive(owner.get("pid"), owner.get("start"))


def await_launch(store: Store, row: dict[str, Any], deadline: float | None) -> dict[str, Any]:
    """The run's row once its agent has started (or its starter died); WaitTimeout past `deadline`."""
    while being_launched(row):
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(
                "run %s is still being set up (%s)" % (row["run_id"], row["status"]),
                "wait again with: runctl runs wait %s" % row["run_id"],
            )
        time.sleep(0.2)
        row = store.get(row["run_id"]) or row
    return row


def record_gone(
    store: Store, row: dict[str, Any], state: dict[str, Any], say: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The run dir is gone: nothing can say how the run ended, so it is lost (never success)."""
    message = "the run directory %s on %s is gone" % (row["run_dir"], row["host"])
    if row["status"] in PRE_LAUNCH:
        message = "the controller stopped before the run was launched"
    store.update_state(
        row["run_id"],
        {
            **row["state"],
            "status": st.LOST,
            "termination_status": st.T_LOST,
            "termination_message": message,
            "seq": int(row.get("seq") or 0) + 1,
        },
    )
    store.add_event(row["run_id"], "run_dir_gone", {"error": state.get("error")})
    from .ending import end_of_run

    end_of_run(store, store.get(row["run_id"]) or row, say)
    return view(store.get(row["run_id"]) or row)


def host_gone(store: Store, row: dict[str, Any]) -> dict[str, Any] | None:
    """For a run whose host stopped answering: what its provider says of the host, if it says
    anything beyond "running" (providers without a lifecycle say nothing).

    {"state", "message", and "status"/"termination_status" when the run is over for sure}: a host
    stopped or terminated from outside ends the run `interrupted`; one that powered itself off
    (the agent's end-of-run step) only gets a notice, as its run dir still says how the run ended.
    """
    from . import providers

    try:
        provider = providers.get(row["provider"])
    except UsageError:
        return None
    ask = getattr(provider, "host_gone", None)
    stored = store.host(row["host_key"]) if row.get("host_key") else None
    if ask is None or stored is None:
        return None
    try:
        verdict: dict[str, Any] | None = ask(row, stored)
    except RunctlError:
        return None
    if verdict is not None and verdict.get("state"):
        store.record_host_state(row["host_key"], str(verdict["state"]))
    return verdict


def provider_says(store: Store, row: dict[str, Any], say: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The run's view once its provider explains an unreachable host (ended, or a notice); else None."""
    verdict = host_gone(store, row)
    if verdict is None:
        return None
    if verdict.get("status"):
        return end_by_provider(store, row, verdict, say)
    seen = view(store.get(row["run_id"]) or row)
    seen["notice"] = verdict["message"]
    return seen


def end_by_provider(
    store: Store, row: dict[str, Any], verdict: dict[str, Any], say: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """End a run whose host its provider reports gone (stopped or terminated from outside)."""
    if not st.is_terminal(row["status"]):
        store.update_state(
            row["run_id"],
            {
                **row["state"],
                "status": verdict["status"],
                "termination_status": verdict.get("termination_status") or st.T_LOST,
                "termination_message": verdict["message"],
                "ended_at": row["state"].get("ended_at") or time.time(),
                "seq": int(row.get("seq") or 0) + 1,
            },
        )
        store.add_event(row["run_id"], "host_gone", {"state": verdict.get("state"), "message": verdict["message"]})
    from .ending import end_of_run

    end_of_run(store, store.get(row["run_id"]) or row, say)
    return view(store.get(row["run_id"]) or row)


def view(row: dict[str, Any]) -> dict[str, Any]:
    """The documented JSON shape of a run (`runs status --output json`)."""
    state = row.get("state", {})
    out = {
        "run_id": row["run_id"],
        "name": row["name"],
        "provider": row["provider"],
        "host": row["host"],
        "project_dir": row["project_dir"],
        "run_dir": row["run_dir"],
        "command": row["command"],
        "status": row["status"],
        "exit_code": row["exit_code"],
        "termination_status": row["termination_status"],
        "termination_message": row["termination_message"],
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "ended_at": row["ended_at"],
        "pid": row["pid"],
        "step": state.get("step"),
        "epoch": state.get("epoch"),
        "total_epochs": state.get("total_epochs"),
        "total_steps": state.get("total_steps"),
        "loss": state.get("loss"),
        "min_loss": state.get("min_loss"),
        "steps_per_sec": state.get("steps_per_sec"),
        "eta_seconds": state.get("eta_seconds"),
        "last_checkpoint": state.get("last_checkpoint"),
        "duration": state.get("duration"),
    }
    keys = ("val_loss", "eval_loss", "agent_alive", "warning", "notice", "exit_signal", "disk_full", "budget")
    for key in (*keys, "checkpoint_s3", "checkpoint_s3_error", "checkpoint_s3_hint"):
        if state.get(key) is not None:
            out[key] = state[key]
    spec = row.get("spec") or {}
    if spec.get("resume_s3"):
        from .s3checkpoints import resumed_from

        out["resumed_from"] = resumed_from(spec)
    return out


def say_uploads(
    before: dict[str, Any] | None, after: dict[str, Any] | None, say: Callable[[str], None]
) -> dict[str, Any] | None:
    """While following: a line each time the run's checkpoint uploads move on; the summary now."""
    if not after:
        return before
    from .checkpoint_s3 import changed_line

    line = changed_line(before, after)
    if line:
        say(line)
    return after


def await_uploads(store: Store, row: dict[str, Any], say: Callable[[str], None] | None) -> dict[str, Any]:
    """After a run's end on a host that stays: its uploader's final pass (the last checkpoint verified
    in S3), polled until it is over (within the uploader's own bound), said, and recorded. A host
    its provider released is not asked: the end-of-run step already waited for that proof."""
    from . import providers
    from .agent.uploads import FINISH_MARGIN
    from .storage.uploader import FINAL_TIMEOUT

    summary = (row.get("state") or {}).get("checkpoint_s3")
    if not summary or summary.get("phase") in ("done", "failed") or not st.is_terminal(row["status"]):
        return row
    if providers.get(row["provider"]).end_action(row) != "none":
        return row
    transport = transport_for(row)
    deadline = time.monotonic() + FINAL_TIMEOUT + FINISH_MARGIN
    while time.monotonic() < deadline:
        try:
            state = transport.probe(row["run_dir"])
        except (RunctlError, OSError):
            break
        final = state.get("checkpoint_s3") or {}
        summary = say_uploads(summary, final, say or (lambda line: None))
        if final.get("phase") in ("done", "failed"):
            store.update_state(row["run_id"], {**row["state"], **state})
            break
        time.sleep(0.1)
    return view(store.get(row["run_id"]) or row)


def follow(
    store: Store,
    row: dict[str, Any],
    on_log: Callable[[bytes], None] | None,
    timeout: float | None,
    from_start: bool = True,
    on_notice: Callable[[str], None] | None = None,
    on_end_notice: Callable[[str], None] | None = None,
    on_frame: Callable[[str, Any], None] | None = None,
) -> dict[str, Any]:
    """Stream the log (when `on_log`) and status changes until the run ends; WaitTimeout after `timeout`.

    `on_end_notice` hears what the end-of-run step did (checkpoints downloaded); `on_frame` every
    frame of the transport's stream once it is recorded (the dashboard: a status means new metrics
    may be there; an exception it raises ends the following)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    row = await_launch(store, row, deadline)
    transport = transport_for(row)
    offset = 0 if (on_log is not None and from_start) else -1
    asked_at = 0.0
    uploads = (row.get("state") or {}).get("checkpoint_s3")
    try:
        for kind, payload in transport.follow(row["run_dir"], offset, 0):
            if kind in ("status", "end") and on_notice is not None and isinstance(payload, dict):
                uploads = say_uploads(uploads, payload.get("checkpoint_s3"), on_notice)
            if kind == "log" and on_log is not None:
                on_log(payload)
            elif kind == "reconnecting":
                if on_notice is not None:
                    on_notice("connection to %s lost; reconnecting..." % row["host"])
                if time.monotonic() - asked_at >= HOST_ASK_SECONDS:
                    asked_at = time.monotonic()
                    gone = provider_says(store, store.get(row["run_id"]) or row, on_end_notice)
                    if gone is not None:
                        return gone
            elif kind == "gone":
                return record_gone(store, store.get(row["run_id"]) or row, payload, on_end_notice)
            elif kind in ("status", "end"):
                record_state(store, store.get(row["run_id"]) or row, payload, on_end_notice)
            if on_frame is not None:
                on_frame(kind, payload)
            if kind == "end":
                return view(store.get(row["run_id"]) or row)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(
                    "timed out after %gs; run %s is still %s and keeps going"
                    % (timeout or 0, row["run_id"], (store.get(row["run_id"]) or row)["status"]),
                    "wait again with: runctl runs wait %s" % row["run_id"],
                )
    except HostError:
        # The host cannot be reached at all: its provider may say why (stopped, terminated).
        gone = provider_says(store, store.get(row["run_id"]) or row, on_end_notice)
        if gone is None:
            raise
        return gone
    return refresh(store, store.get(row["run_id"]) or row)


def stop(store: Store, row: dict[str, Any], grace: float | None) -> dict[str, Any]:
    if being_launched(row):
        raise RunctlError(
            "run %s is still being set up (%s) by another runctl" % (row["run_id"], row["status"]),
            "press Ctrl-C in that command to cancel it, or stop the run once it runs: runctl runs stop %s"
            % row["run_id"],
        )
    current = refresh(store, row)
    if st.is_terminal(current["status"]):
        raise UsageError(
            "run %s already ended (%s)" % (row["run_id"], current["status"]),
            "nothing to stop; see it with: runctl runs status %s" % row["run_id"],
        )
    result = transport_for(row).request_stop(row["run_dir"], grace, "stopped by the user (runctl runs stop)")
    if not result.get("ok"):
        raise RunctlError(str(result.get("error")))
    store.add_event(row["run_id"], "stop_requested", {"grace": grace})
    return result


def log_path(row: dict[str, Any]) -> str:
    return os.path.join(row["run_dir"], layout.LOG)


def metrics_path(row: dict[str, Any]) -> str:
    return os.path.join(row["run_dir"], layout.METRICS)
