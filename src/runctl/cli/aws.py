"""`runctl aws`: EC2 instances (create, list, status, start, stop, terminate, wait, exec) and runs
on them (train, monitor). Each command module registers on the one app in `aws_app`."""

from __future__ import annotations

from . import aws_instances, aws_runs  # noqa: F401  (they register their commands on `app`)
from .aws_app import app

__all__ = ["app"]
