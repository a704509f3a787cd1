"""The project's Python environment on the host: a venv per requirements hash, reused while unchanged.

Built from requirements.txt, a pyproject.toml (installed editable) or a PEP 723 script header,
with uv when the host has it, else venv + pip. Output goes to the run log, so the user sees
progress under `setting_up` instead of silence.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable, Dict, List, Optional

READY = ".runctl-ready"


def venv_root() -> str:
    return os.path.join(os.path.expanduser("~"), ".runctl", "venvs")


def install_commands(env: Dict[str, Any], venv: str, project_dir: str, uv: Optional[str]) -> List[List[str]]:
    python = os.path.join(venv, "bin", "python")
    if uv:
        create = [uv, "venv", "--quiet", venv]
        pip = [uv, "pip", "install", "--python", python]
    else:
        create = ["python3", "-m", "venv", venv]
        pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    kind = env["kind"]
    if kind == "requirements":
        install = [*pip, "-r", os.path.join(project_dir, env["file"])]
    elif kind == "pyproject":
        install = [*pip, "-e", project_dir]
    else:
        install = [*pip, *env.get("dependencies", [])] if env.get("dependencies") else []
    return [create, install] if install else [create]


def ensure_venv(env: Dict[str, Any], project_dir: str, log_fd: int, run: Callable[[List[str]], int]) -> str:
    """Path of the venv's python, creating the venv first when this requirements hash is new.

    `run` executes one build step with its output in the run log (and honours stop requests).
    """
    venv = os.path.join(venv_root(), env["hash"])
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(os.path.join(venv, READY)):
        os.write(log_fd, ("[runctl] reusing environment %s\n" % venv).encode())
        return python
    shutil.rmtree(venv, ignore_errors=True)
    os.makedirs(venv_root(), exist_ok=True)
    uv = shutil.which("uv")
    os.write(
        log_fd,
        ("[runctl] building environment %s from %s (%s)\n" % (venv, env.get("file"), "uv" if uv else "pip")).encode(),
    )
    for command in install_commands(env, venv, project_dir, uv):
        os.write(log_fd, ("[runctl] $ %s\n" % " ".join(command)).encode())
        code = run(command)
        if code != 0:
            raise EnvSetupFailed("environment setup failed: `%s` exited with code %d" % (" ".join(command[:4]), code))
    open(os.path.join(venv, READY), "w").close()
    return python


class EnvSetupFailed(Exception):
    pass
