"""Interpreters the tests run the agent and scripts with."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# The system Python starts faster than a venv's and has no runctl installed: what a plain host has.
SYSTEM_PY = "/usr/bin/python3"
FAST_PY = SYSTEM_PY if os.access(SYSTEM_PY, os.X_OK) else sys.executable

# The oldest Python a host may have; the agent and the watchdog must run on it.
OLD_PYTHONS = ["/root/.pyenv/versions/3.8.18/bin/python", "python3.8"]


def python38() -> str | None:
    for candidate in OLD_PYTHONS:
        found = shutil.which(candidate) or (candidate if Path(candidate).exists() else None)
        if found:
            return found
    return None
