"""Inputs from S3 as the agent sees them: run the fetcher before the script, read what it put where.

With `resume_s3` or `data_s3` in the spec, the agent runs runctl.storage.fetcher (`s3-fetch`) in runctl's tool
environment (boto3; agent/uploads.tool_python), with the uploader's credentials and endpoint, as a
setup step of the run: its progress goes to the run log, a stop asked for meanwhile ends it, and
its failure fails the run before the script starts (never a run that trains from scratch when it
was asked to resume). It runs twice: `--check` before the launcher is answered (a checkpoint S3 no
longer holds as resolved, a missing bucket or an empty prefix fail the start itself: exit 4), then
the download, which the controller follows in the log. What it downloaded reaches the script as
RUNCTL_* variables.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional

from ..core.fsutil import read_json
from . import uploads

FETCH_RESULT = "s3_fetch.json"  # storage.fetcher.FETCH_RESULT (that module needs boto3's environment)
ENV_KEYS = ("RUNCTL_RESUME_FROM", "RUNCTL_DATA_DIR")


class FetchFailed(Exception):
    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def needed(spec: Dict[str, Any]) -> bool:
    return isinstance(spec.get("resume_s3"), dict) or isinstance(spec.get("data_s3"), dict)


def fetcher_cfg(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Credentials and endpoint for the fetcher: the forwarded credentials file of the run (if any),
    the endpoint the controller named (the one `--resume` was resolved against)."""
    upload, resume, data = _block(spec, "checkpoint_s3"), _block(spec, "resume_s3"), _block(spec, "data_s3")
    return {
        "credentials_file": upload.get("credentials_file")
        or data.get("credentials_file")
        or resume.get("credentials_file"),
        "endpoint_url": data.get("endpoint_url") or resume.get("endpoint_url") or upload.get("endpoint_url"),
    }


def _block(spec: Dict[str, Any], key: str) -> Dict[str, Any]:
    value = spec.get(key)
    return value if isinstance(value, dict) else {}


def fetch(
    spec: Dict[str, Any],
    run_dir: str,
    project_dir: str,
    log_fd: int,
    run_step: Callable[[List[str], Dict[str, str]], int],
    check_only: bool = False,
) -> Dict[str, str]:
    """Run the fetcher as a step of the run (`check_only`: only its look at S3); the variables for
    the script, or FetchFailed."""
    try:
        python = uploads.tool_python(project_dir, log_fd, lambda argv: run_step(argv, dict(os.environ)))
    except Exception as exc:  # pyenv.EnvSetupFailed, or the venv build could not start
        raise FetchFailed(
            "downloads from S3 need boto3 on the host: %s" % exc,
            "check the host's package index (pip or uv configuration) and network, or install boto3 for its python3",
        ) from None
    path = os.path.join(run_dir, FETCH_RESULT)
    try:
        os.unlink(path)  # an earlier attempt's answer is not this one's
    except FileNotFoundError:
        pass
    args = ["s3-fetch", run_dir, *(["--check"] if check_only else [])]
    argv, env = uploads.tool_command(python, args, fetcher_cfg(spec))
    code = run_step(argv, env)
    result = read_json(path) or {}
    if code != 0 or not result.get("ok"):
        error = result.get("error") or "the S3 download exited with code %d (see the run log)" % code
        raise FetchFailed(str(error), result.get("hint"))
    found = result.get("env") or {}
    return {k: str(v) for k, v in found.items() if k in ENV_KEYS}
