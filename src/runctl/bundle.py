"""The agent artifact: one zip holding exactly the parts that travel to hosts.

`runctl.core`, `runctl.agent` and `runctl.training` are standard-library only; zipped with a
`__main__.py` they run as `python3 runctl-agent-<hash>.pyz ...` on any host with Python >= 3.8.
`runctl.storage` travels too, for the checkpoint uploader that the agent runs in runctl's tool
environment on the host (boto3, imported only there).
The name carries a hash of the content, so a host keeps the artifact until the code changes.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from pathlib import Path

from . import paths
from .core.fsutil import temp_path

TRAVELLING_PACKAGES = ("core", "agent", "training", "storage")
_FIXED_DATE = (2020, 1, 1, 0, 0, 0)


def _sources() -> list[tuple[str, bytes]]:
    root = Path(__file__).resolve().parent
    files = [("runctl/__init__.py", (root / "__init__.py").read_bytes())]
    for package in TRAVELLING_PACKAGES:
        for path in sorted((root / package).glob("*.py")):
            files.append(("runctl/%s/%s" % (package, path.name), path.read_bytes()))
    files.append(("__main__.py", (root / "agent" / "__main__.py").read_bytes()))
    return files


def _bytecode(files: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Unchecked-hash .pyc files for this interpreter, so the local agent starts without compiling.

    Zip imports never write bytecode caches; a host with another Python version ignores these
    (wrong magic number) and compiles the sources instead.
    """
    import importlib.util
    import marshal

    out = []
    for name, data in files:
        if not name.endswith(".py") or name == "__main__.py":
            continue
        code = compile(data, name, "exec", dont_inherit=True)
        source_hash = importlib.util.source_hash(data)
        header = importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little") + source_hash
        out.append((name + "c", header + marshal.dumps(code)))
    return out


def agent_artifact() -> Path:
    """Path of the current agent zip in the local cache, built when missing."""
    files = _sources()
    digest = hashlib.sha256(sys.implementation.cache_tag.encode())
    for name, data in files:
        digest.update(name.encode() + b"\0" + data + b"\0")
    target = paths.agent_cache() / ("runctl-agent-%s.pyz" % digest.hexdigest()[:12])
    if target.exists():
        return target
    tmp = Path(temp_path(str(target)))
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in files + _bytecode(files):
                info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written artifact behind
        raise
    return target
