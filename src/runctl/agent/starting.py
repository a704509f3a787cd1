"""What the script starts with: its environment, and the message when it cannot start at all."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from ..core import layout
from ..core.fsutil import write_failed


def artifact_root() -> Optional[str]:
    """The agent zip this code runs from, if any: put on the script's path for runctl.training."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return root if os.path.isfile(root) else None


def environment(spec: Dict[str, Any], run_dir: str, checkpoint_dir: str) -> Dict[str, str]:
    """The script's environment: the agent's, the spec's --env, and the RUNCTL_* variables."""
    env = dict(os.environ)
    # Unbuffered output so the log is live; a user may opt out with --env PYTHONUNBUFFERED=
    env["PYTHONUNBUFFERED"] = "1"
    env.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
    if env.get("PYTHONUNBUFFERED") == "":
        del env["PYTHONUNBUFFERED"]
    env.update(
        {
            "RUNCTL_RUN_ID": spec["run_id"],
            "RUNCTL_RUN_DIR": run_dir,
            "RUNCTL_PROJECT_DIR": spec["project_dir"],
            "RUNCTL_CHECKPOINT_DIR": checkpoint_dir,
            "RUNCTL_STOP_FILE": os.path.join(run_dir, layout.STOP_FILE),
            "RUNCTL_METRICS_FILE": os.path.join(run_dir, layout.METRICS),
        }
    )
    if spec.get("resume_from"):
        env["RUNCTL_RESUME_FROM"] = str(spec["resume_from"])
    if spec.get("data_dir"):
        env["RUNCTL_DATA_DIR"] = str(spec["data_dir"])
    root = artifact_root()
    if root:
        # First on the path, so runctl.training always matches the agent supervising it.
        current = env.get("PYTHONPATH")
        env["PYTHONPATH"] = root + os.pathsep + current if current else root
    return env


def describe_spawn_error(exc: Exception, program: str) -> str:
    """One line a user can act on when the training command could not be started."""
    failure = write_failed(exc)
    if failure is not None and failure.kind in ("disk_full", "read_only"):
        return failure.message
    if isinstance(exc, FileNotFoundError):
        return "cannot start %r: no such file or program" % program
    if isinstance(exc, PermissionError):
        return "cannot start %r: permission denied (is it executable?)" % program
    return "cannot start the training command: %s" % exc
