"""The config file's `[policies]` (user config, then the project's runctl.toml), merged under CLI flags.

Checked by the one policy model (`runctl.params`), the same one the policy flags pass through.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from . import paths
from .core.errors import UsageError

PROJECT_CONFIG = "runctl.toml"


def toml():  # type: ignore[no-untyped-def]
    """tomllib, or its backport on Python 3.10."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib


def _load_toml(path: Path) -> dict[str, Any]:
    tomllib = toml()
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(
            "%s is not valid UTF-8 (byte %d)" % (path, exc.start), "save the file as UTF-8 or remove it"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError("invalid TOML in %s: %s" % (path, exc), "fix the file or remove it") from None
    except OSError as exc:
        problem = "cannot read %s: %s" % (path, exc.strerror or exc)
        raise UsageError(problem, "fix its permissions or remove it") from None


def load_policies(project_dir: Path) -> dict[str, Any]:
    """`[policies]` of the user config, then of the project's runctl.toml, each checked by the policy model."""
    from .params import from_config

    merged: dict[str, Any] = {}
    for path in (paths.user_config(), project_dir / PROJECT_CONFIG):
        if path.is_file():
            document = _load_toml(path)
            if "policies" in document:
                merged.update(from_config(document["policies"], path))
    return merged


def merge_policies(config: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Flags given on the command line win over the config file."""
    merged = dict(config)
    merged.update({k: v for k, v in flags.items() if v is not None})
    return merged
