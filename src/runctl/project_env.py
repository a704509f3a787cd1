"""How a host builds the project's Python environment: from a PEP 723 header, requirements.txt or
pyproject.toml, keyed by a hash of what defines it (the agent reuses an env while the key holds).

Every provider whose hosts are not this machine puts this in the spec (`python_env`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from .config import toml
from .core.errors import UsageError

_PEP723 = re.compile(r"(?m)^# /// script\s*$(?P<body>(?:^#(?:| .*)$\s*)+?)^# ///\s*$")


def pep723_dependencies(script: Path) -> list[str] | None:
    """Dependencies from a PEP 723 `# /// script` header, or None when the script has none."""
    try:
        text = script.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = _PEP723.search(text)
    if not match:
        return None
    body = "\n".join(line[2:] if line.startswith("# ") else line[1:] for line in match.group("body").splitlines())
    tomllib = toml()
    try:
        data = tomllib.loads(body)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError("invalid PEP 723 header in %s: %s" % (script, exc), "fix the `# /// script` block") from None
    deps = data.get("dependencies") or []
    return [str(d) for d in deps] or None


def python_env_for(root: Path, script: Path) -> dict[str, Any] | None:
    """How to build the project's environment on the host, keyed by a hash of what defines it."""

    def key(*parts: bytes) -> str:
        digest = hashlib.sha256(b"runctl-env-1\0")
        for part in parts:
            digest.update(part + b"\0")
        return digest.hexdigest()[:16]

    deps = pep723_dependencies(script) if script.suffix == ".py" else None
    if deps:
        return {"kind": "pep723", "file": script.name, "dependencies": deps, "hash": key(*(d.encode() for d in deps))}
    requirements = root / "requirements.txt"
    if requirements.is_file():
        return {"kind": "requirements", "file": "requirements.txt", "hash": key(requirements.read_bytes())}
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        tomllib = toml()
        try:
            data = tomllib.loads(pyproject.read_text())
        except tomllib.TOMLDecodeError:
            return None
        if (data.get("project") or {}).get("dependencies"):
            return {"kind": "pyproject", "file": "pyproject.toml", "hash": key(pyproject.read_bytes())}
    return None
