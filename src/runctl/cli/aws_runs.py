"""`runctl aws train|monitor`: runs on an instance."""

from __future__ import annotations

from .aws_app import app  # noqa: F401
