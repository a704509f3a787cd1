"""RunSpec: what to run, where, and under which policies. Travels to the host as spec.json."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from . import layout


def new_run_id() -> str:
    """Short, typeable and unique enough to address by a 2–3 character prefix."""
    return secrets.token_hex(4)


@dataclass
class RunSpec:
    run_id: str
    name: str
    project_dir: str
    command: List[str]
    provider: str = "local"
    host: str = "localhost"
    script: str = ""
    script_args: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)
    checkpoint_dir: str = ""
    resume_from: Optional[str] = None
    policies: Dict[str, Any] = field(default_factory=dict)
    notify: List[str] = field(default_factory=list)
    metrics_regex: Optional[str] = None
    setup: Optional[str] = None
    python_env: Optional[Dict[str, Any]] = None
    python_script: bool = False
    data_dir: Optional[str] = None
    tty: bool = False
    checkpoint_globs: List[str] = field(default_factory=list)
    # What the agent does on the host once the run has ended, and after which proofs (see
    # agent/ops.on_end_claim): {"command": None | [argv], "after": [...], "controller_grace": s}.
    on_end: Optional[Dict[str, Any]] = None
    # The host watchdog's settings for hosts runctl provisioned (agent/watchdog.before_launch):
    # {"idle_stop": "15m" | seconds | "off", ...}; None leaves the host's watchdog as it is.
    watchdog: Optional[Dict[str, Any]] = None
    # Checkpoints uploaded to S3 while the run goes, verified (agent/uploads.py, storage/uploader.py):
    # {"uri": "s3://bucket/prefix", "multipart_threshold": bytes, "part_size": bytes, "threads": n,
    #  "stable_seconds": s, "final_timeout": s, "region": name, "endpoint_url": url,
    #  "credentials_file": a 0600 AWS credentials file on the host (forwarded credentials)}; None: no uploads.
    checkpoint_s3: Optional[Dict[str, Any]] = None
    # The verified checkpoint in S3 this run resumes from, resolved on the controller from `--resume`
    # before anything is created (runctl.s3checkpoints.resolve_resume); the host puts it in place
    # before the script starts and sets RUNCTL_RESUME_FROM to it:
    # {"uri": "s3://bucket/<key>" (ending in '/' for a checkpoint dir), "bucket": name,
    #  "entry": the manifest entry as uploaded (storage.uploader.Uploader.entry), or for a plain
    #           object no manifest lists {"name", "size", "key", "etag"} (size and ETag only),
    #  "run_id": the source run's id or None, "region": name or None, "endpoint_url": url or None}.
    # It is also the run's link to its source: `runs status` shows "resumed from RUN/NAME (step S)".
    resume_s3: Optional[Dict[str, Any]] = None
    # Objects downloaded from S3 into the run's data dir before the script starts (storage/fetcher.py):
    # {"uri": "s3://bucket/path", "region": name, "endpoint_url": url, "credentials_file": path}.
    data_s3: Optional[Dict[str, Any]] = None
    # On a spot instance, the agent watches the metadata service for an interruption notice and
    # stops the run to fit it (agent/spotwatch.py): {"interval": s, "upload_reserve": s, "margin": s}.
    spot: Optional[Dict[str, Any]] = None
    # A run of an --auto-resume chain (runctl.spotresume): its attempt (1-based), the relaunches
    # allowed after spot interruptions, and the run it resumed from.
    attempt: Optional[int] = None
    auto_resume: Optional[int] = None
    resumed_from: Optional[str] = None
    # The host's price in USD per hour, set once the host is known: the agent enforces `max_cost`
    # from it and its own clock, so a budget holds with the controller gone.
    hourly_price: Optional[float] = None
    created_at: float = field(default_factory=time.time)

    @property
    def run_dir(self) -> str:
        return layout.run_dir(self.project_dir, self.run_id)

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["run_dir"] = self.run_dir
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> RunSpec:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})
