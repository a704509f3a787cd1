"""`runctl aws create|list|status|start|stop|terminate|wait|exec`: the life of an instance."""

from __future__ import annotations

from .aws_app import app  # noqa: F401
