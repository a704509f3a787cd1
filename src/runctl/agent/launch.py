"""Start a supervisor fully detached (double fork + setsid) and report once the script is running.

The launching process (a local controller, or an ssh session) gets one JSON line and exits; the
supervisor keeps no descriptor of it, so closing the terminal or the connection changes nothing.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

from ..core import layout
from ..core import status as st
from ..core.fsutil import PRIVATE_FILE, atomic_write_json, private_dir, read_json, release_space, reserve_space
from . import detach, watchdog
from .supervisor import main_supervise


def write_spec(run_dir: str, spec: Dict[str, Any]) -> None:
    # The spec holds --env values and webhook URLs, logs may print secrets: the owner only, from
    # .runctl/ down (makedirs would give the intermediate directories the default mode).
    runs = os.path.dirname(run_dir)
    for directory in (os.path.dirname(runs), runs, run_dir):
        private_dir(directory)
    atomic_write_json(os.path.join(run_dir, layout.SPEC), spec, mode=PRIVATE_FILE)
    reserve = os.path.join(run_dir, layout.SPACE_RESERVE)
    reserve_space(reserve)
    try:
        atomic_write_json(
            os.path.join(run_dir, layout.STATUS),
            {
                "seq": 1,
                "run_id": spec["run_id"],
                "name": spec.get("name"),
                "status": st.PENDING,
                "created_at": spec.get("created_at", time.time()),
            },
        )
    except OSError:
        release_space(reserve)  # the run cannot start: it needs no space held for its end
        raise


def launch(run_dir: str, spec: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    run_dir = os.path.abspath(run_dir)
    if spec is not None:
        write_spec(run_dir, spec)
    # Only a spec that asks for it starts (or updates) the host watchdog; see agent/watchdog.py.
    settings = (spec if spec is not None else read_json(os.path.join(run_dir, layout.SPEC)) or {}).get("watchdog")
    watched = None if settings is None else watchdog.before_launch(settings)
    message = detach.spawn(os.path.join(run_dir, layout.AGENT_LOG), lambda ready: main_supervise(run_dir, ready))
    if message is None:
        message = {
            "ok": False,
            "error": "the agent exited before starting the script (see %s)" % layout.AGENT_LOG,
        }
    message.setdefault("run_dir", run_dir)
    if watched is not None:
        if message.get("ok") and isinstance(message.get("agent_pid"), int):
            watched = watchdog.after_launch(settings, watched, run_dir, message["agent_pid"])
        message["watchdog"] = watched
    return message
