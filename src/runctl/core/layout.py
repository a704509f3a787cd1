"""The one place that knows the run-directory layout and the original system's file names."""

from __future__ import annotations

import os

RUNCTL_DIR = ".runctl"
RUNS_DIR = os.path.join(RUNCTL_DIR, "runs")
LATEST_RUN = os.path.join(RUNCTL_DIR, "latest_run")
# Marks a host directory as made by runctl for one project: only such a dir gets a sync with deletion.
OWNER = os.path.join(RUNCTL_DIR, "owner.json")

# Inside <project>/.runctl/runs/<run_id>/
SPEC = "spec.json"
STATUS = "status.json"
LOG = "training.log"
RAW_LOG = "training.raw.log"  # with --tty: the terminal's bytes as written, control sequences and all
METRICS = "metrics.jsonl"
SAVED = "checkpoints_saved.jsonl"  # the helper's atomic writes: which step each checkpoint holds
EVENTS = "events.jsonl"
PID = "training.pid"
EXIT_CODE = "training_exit_code.txt"
STOP_FILE = "STOP_TRAINING"
STOP_REQUEST = "stop_request.json"
IDENTITY = "agent.json"  # the agent's and the script's pid and start time, kept apart from status.json
DESCENDANTS = "descendants.jsonl"  # every process of the run, recorded (pid, start time) when first seen
AGENT_LOG = "agent.log"
SUMMARY = "training_log.json"
STALE_MARKER = "stale_training_complete.txt"
ON_END_CLAIM = "on_end.claim"  # created O_EXCL by whoever performs the end-of-run step (agent or controller)
ON_END_RESULT = "on_end.json"  # what that step did
S3_STATE = "checkpoint_s3.json"  # the checkpoint uploader's state: what is verified in S3, what waits
SPACE_RESERVE = ".space_reserve"  # freed on a full disk so the run's end can still be recorded
ON_END_CLAIM = "on_end.claim"  # who performs the end-of-run step (agent or controller), created O_EXCL
ON_END_RESULT = "on_end.json"  # what that step did, written by whoever claimed it

# In the project dir (the original system's names).
MARKER = "training_complete.txt"
MIRRORED = (LOG, PID, EXIT_CODE)
ORIGINAL_STOP_FILE = os.path.join("training_output", STOP_FILE)
ORIGINAL_SUMMARY = os.path.join("training_output", SUMMARY)
DEFAULT_CHECKPOINT_DIR = "checkpoints"

# Paths a code sync must never delete on a host: they hold the run's outputs.
PROTECTED_OUTPUTS = (RUNCTL_DIR, DEFAULT_CHECKPOINT_DIR, "training_output", "lightning_logs")


def run_dir(project_dir: str, run_id: str) -> str:
    return os.path.join(project_dir, RUNS_DIR, run_id)


def checkpoint_dir(project_dir: str, configured: "str | None") -> str:
    """Where a run's checkpoints go: the configured dir (relative to the project), else checkpoints/."""
    path = configured or DEFAULT_CHECKPOINT_DIR
    return path if os.path.isabs(path) else os.path.join(project_dir, path)


def project_of(run_dir_path: str) -> str:
    """The project dir a run dir belongs to (three levels up)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(run_dir_path))))
