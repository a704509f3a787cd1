"""Where the controller keeps its state: RUNCTL_HOME, else the user data dir.

The state is private: the store holds full specs (--env values, webhook URLs), so RUNCTL_HOME and
everything runctl creates in it is 0700 / 0600, and tightened when found looser.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .core.errors import UsageError
from .core.fsutil import private_dir


def home() -> Path:
    override = os.environ.get("RUNCTL_HOME")
    if override:
        path = Path(override).expanduser()
    else:
        from platformdirs import user_data_dir

        path = Path(user_data_dir("runctl", appauthor=False))
    try:
        mode = path.lstat().st_mode
    except OSError:
        mode = 0
    if stat.S_ISDIR(mode) and mode & (stat.S_ISVTX | stat.S_IWOTH):
        # A shared directory such as /tmp is nobody's to chmod, and no place for private state.
        raise UsageError(
            "RUNCTL_HOME %s is a shared directory (mode %o)" % (path, stat.S_IMODE(mode)),
            "point RUNCTL_HOME at a directory of its own, e.g. export RUNCTL_HOME=~/.runctl",
        )
    private_dir(str(path))
    return path


def database() -> Path:
    return home() / "runctl.db"


def database_if_exists() -> Path | None:
    """The store's file when there is one, found without creating RUNCTL_HOME (for read-only looks)."""
    override = os.environ.get("RUNCTL_HOME")
    if override:
        base = Path(override).expanduser()
    else:
        from platformdirs import user_data_dir

        base = Path(user_data_dir("runctl", appauthor=False))
    path = base / "runctl.db"
    return path if path.is_file() else None


def agent_cache() -> Path:
    return Path(private_dir(str(home() / "agent")))


def user_config() -> Path:
    override = os.environ.get("RUNCTL_HOME")
    if override:
        return Path(override).expanduser() / "config.toml"
    from platformdirs import user_config_dir

    return Path(user_config_dir("runctl", appauthor=False)) / "config.toml"
