"""Where the controller keeps its state: RUNCTL_HOME, else the user data dir."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    override = os.environ.get("RUNCTL_HOME")
    if override:
        path = Path(override).expanduser()
    else:
        from platformdirs import user_data_dir

        path = Path(user_data_dir("runctl", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def database() -> Path:
    return home() / "runctl.db"


def agent_cache() -> Path:
    path = home() / "agent"
    path.mkdir(parents=True, exist_ok=True)
    return path


def user_config() -> Path:
    override = os.environ.get("RUNCTL_HOME")
    if override:
        return Path(override).expanduser() / "config.toml"
    from platformdirs import user_config_dir

    return Path(user_config_dir("runctl", appauthor=False)) / "config.toml"
