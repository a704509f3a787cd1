"""What a run needs from S3 before its script starts, put on the host and verified.

Started by the agent (agent/fetches.py) as `TOOL_PYTHON AGENT.pyz s3-fetch RUN_DIR` in runctl's
tool environment (boto3), with the same credentials and endpoint as the checkpoint uploader. Its
stdout is the run log, so its progress lines are there for `runs logs` and `--wait`.

- `resume_s3` in the spec (resolved and verified on the controller from `--resume`): the
  checkpoint, a file or a directory, is downloaded to `<run_dir>/resume/<name>` and verified
  against its manifest entry (every file's size and SHA-256; a plain object's size and ETag)
  before it is renamed into place (storage.catalog.download_entry). A checkpoint that changed in
  S3 since it was resolved, or arrived altered, fails the run: it never trains from scratch.

The outcome goes to `<run_dir>/s3_fetch.json` (FETCH_RESULT): {"ok": true, "env": {RUNCTL_*: path}}
or {"ok": false, "error": one line, "hint": the fix or null}. Exit 0 when ok, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from ..core import layout, retry
from ..core.fsutil import atomic_write_json, read_json

FETCH_RESULT = "s3_fetch.json"
RESUME_DIR = "resume"


class FetchFailed(Exception):
    """An input could not be put on the host as S3 holds it: the script must not start."""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def say(line: str) -> None:
    """A progress line in the run log (this process's stdout is the log)."""
    sys.stdout.write("[runctl] %s\n" % line)
    sys.stdout.flush()


def s3_client(cfg: Dict[str, Any]) -> Any:
    from . import s3

    return s3.client(region=cfg.get("region"), attempts=5, timeout=20.0)


def fetch_resume(run_dir: str, value: Dict[str, Any], tell: Callable[[str], None] = say) -> str:
    """The checkpoint of `spec.resume_s3` under <run_dir>/resume/, verified; its path."""
    from . import catalog, s3

    bucket, entry = str(value.get("bucket") or ""), value.get("entry") or {}
    uri = str(value.get("uri") or "s3://%s/%s" % (bucket, entry.get("key", "")))
    if not bucket or not entry.get("name"):
        raise FetchFailed("resume_s3 in the spec names no checkpoint (bucket and entry)")
    dest = os.path.join(run_dir, RESUME_DIR)
    os.makedirs(dest, exist_ok=True)
    tell("resuming from %s: downloading %s" % (uri, _size(entry)))
    started = time.monotonic()
    client = s3_client(value)
    try:
        path = retry.retry(
            lambda: catalog.download_entry(client, bucket, entry, dest, progress=tell),
            s3.is_transient,
            attempts=4,
            base=1.0,
        )
    except catalog.NotVerified as exc:
        raise FetchFailed(
            "the checkpoint to resume from is not what its manifest says: %s" % exc,
            "S3 no longer holds it as it was uploaded; resume from another one (runctl checkpoint list ...)",
        ) from None
    except FileExistsError as exc:
        raise FetchFailed("%s exists on the host and is not the checkpoint %s" % (exc, uri)) from None
    except Exception as exc:
        if s3.error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            raise FetchFailed(
                "the checkpoint to resume from is gone from S3: %s" % uri,
                "resume from another one: runctl checkpoint list ...",
            ) from None
        raise FetchFailed("cannot download %s: %s" % (uri, s3.describe(exc))) from None
    tell("resume checkpoint verified: %s (%.1fs)" % (path, time.monotonic() - started))
    return path


def _size(entry: Dict[str, Any]) -> str:
    files = entry.get("files") or [entry]
    total = sum(int(f.get("size") or 0) for f in files)
    return "%d file%s, %.1f MB" % (len(files), "" if len(files) == 1 else "s", total / 1e6)


def fetch(run_dir: str, spec: Dict[str, Any]) -> Dict[str, str]:
    """Everything the spec asks for; the RUNCTL_* variables that point the script at it."""
    env: Dict[str, str] = {}
    if isinstance(spec.get("resume_s3"), dict):
        env["RUNCTL_RESUME_FROM"] = fetch_resume(run_dir, spec["resume_s3"])
    return env


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="runctl-agent s3-fetch")
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    run_dir = os.path.abspath(args.run_dir)
    spec = read_json(os.path.join(run_dir, layout.SPEC)) or {}
    try:
        result: Dict[str, Any] = {"ok": True, "env": fetch(run_dir, spec)}
    except FetchFailed as exc:
        say(exc.message)
        result = {"ok": False, "error": exc.message, "hint": exc.hint}
    atomic_write_json(os.path.join(run_dir, FETCH_RESULT), result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
