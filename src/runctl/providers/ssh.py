"""The SSH provider: a host the user names ([user@]host[:port] or an ssh_config alias).

runctl reaches it with system OpenSSH, ships the project with rsync, and never acquires, stops or
releases it: the machine is the user's. Every cloud host is reached the same way once it is up.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..core.errors import UsageError
from ..core.spec import RunSpec
from ..transport.base import Transport
from ..transport.ssh import Dest, SshTransport
from .base import (
    STOP_HOST,
    TERMINATE_HOST,
    Host,
    Missing,
    Placement,
    StartRequest,
    default_on_end,
    require,
    stated_price,
)

_NOT_OURS = Missing(
    "an SSH host is not runctl's to power off or release (runctl did not provision it)",
    "stop the run instead: runctl runs stop {run_id}",
)


class SshProvider:
    name = "ssh"
    syncs_code = True
    missing: Mapping[str, Missing] = MappingProxyType({STOP_HOST: _NOT_OURS, TERMINATE_HOST: _NOT_OURS})

    def check(self, request: StartRequest) -> None:
        stated_price(request.options)
        for path in request.options.get("data") or []:
            if not Path(path).exists():
                raise UsageError("--data %s does not exist" % path, "pass an existing local file or directory")
        self.make_transport(request.options)

    @staticmethod
    def make_transport(options: dict[str, Any]) -> SshTransport:
        """The transport to `dest`, its identity file checked to exist."""
        identity = options.get("identity")
        if identity is not None and not Path(identity).expanduser().is_file():
            raise UsageError("identity file %s does not exist" % identity, "pass the path of a private key with -i")
        key = str(Path(identity).expanduser()) if identity else None
        return SshTransport(
            Dest.parse(options["dest"]), identity=key, insecure_host_key=bool(options.get("insecure_host_key"))
        )

    def placement(self, request: StartRequest, root: Path, script: Path) -> Placement:
        from ..project_env import python_env_for

        return Placement(
            python="python3",
            project_dir=project_name_for(request.options.get("project_name"), root),
            python_env=python_env_for(root, script),
            python_script=script.suffix == ".py",
        )

    def acquire(self, request: StartRequest) -> tuple[Host, bool]:
        dest = Dest.parse(request.options["dest"])
        host = Host(self.name, str(dest), dest.host, hourly_price=stated_price(request.options))
        if host.hourly_price is not None:
            host.info["price_source"] = "--hourly-price"
        return host, False

    def transport(self, host: Host, request: StartRequest) -> Transport:
        return self.make_transport(request.options)

    def reconnect(self, record: dict[str, Any]) -> Transport:
        return SshTransport.from_dict(record)

    def place(self, transport: Transport, spec: RunSpec, request: StartRequest) -> None:
        assert isinstance(transport, SshTransport)
        spec.project_dir = place_project(transport, request.options.get("remote_dir"), spec.project_dir)
        spec.host = transport.host
        if request.options.get("data"):
            spec.data_dir = spec.project_dir + "/data"

    def on_end(self, request: StartRequest) -> dict[str, Any]:
        return default_on_end()

    def end_action(self, row: dict[str, Any]) -> str:
        return "none"

    def describe(self, transport: Transport) -> dict[str, Any]:
        assert isinstance(transport, SshTransport)
        return host_status(transport)

    def release(self, host: Host, action: str) -> Host:
        if action != "none":
            require(self, action, run_id="RUN_ID")
        return host


def project_name_for(given: str | None, root: Path) -> str:
    """The project's name on the host (~/runctl/<name>): one path component, never `.`, `..` or hidden."""
    if given is not None:
        bad = not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", given)
        if bad:
            raise UsageError(
                "invalid --project-name %r" % given,
                "use letters, digits, '.', '_' and '-', starting with a letter or digit",
            )
        return given
    name = root.name
    if not name or name in (".", "..") or name.startswith(("-", ".")) or "/" in name or "\0" in name:
        raise UsageError(
            "the project dir name %r cannot name a directory on the host" % name, "pass --project-name NAME"
        )
    return name


def place_project(transport: SshTransport, remote_dir: str | None, name: str) -> str:
    """The project dir on the host: `~` expanded, normalised, and never `/` or a home (or one above it).

    The host re-checks the resolved path (symlinks included) when it syncs; this catches the plain
    cases before anything is launched.
    """
    if remote_dir is not None and (not remote_dir or "\0" in remote_dir):
        raise UsageError("invalid --remote-dir %r" % remote_dir, "pass a directory path on the host")
    path = posixpath.normpath(transport.expand(remote_dir if remote_dir is not None else "~/runctl/" + name))
    home = posixpath.normpath(transport.home)
    hint = "pass --remote-dir a directory of its own, e.g. ~/runctl/%s" % name
    if path in ("/", "//"):
        raise UsageError("--remote-dir %s is the root directory of %s" % (path, transport.dest), hint)
    if path == home:
        raise UsageError("--remote-dir %s is your home directory on %s" % (path, transport.dest), hint)
    if home.startswith(path.rstrip("/") + "/"):
        raise UsageError("--remote-dir %s holds your home directory on %s" % (path, transport.dest), hint)
    return path


def host_status(transport: SshTransport) -> dict[str, Any]:
    """CPU, memory, disk and GPU of the host in one round trip."""
    script = (
        "echo cores=$(nproc); echo load=$(cut -d' ' -f1-3 /proc/loadavg); "
        "awk '/MemTotal|MemAvailable/ {print $1 $2}' /proc/meminfo; "
        'df -Pk "$HOME" | awk \'NR==2 {print "disk_total_kb=" $2; print "disk_avail_kb=" $4}\'; '
        "if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi --query-gpu=index,name,utilization.gpu,"
        "memory.used,memory.total --format=csv,noheader,nounits | sed 's/^/gpu=/'; fi"
    )
    out = transport.run(script).stdout.decode("utf-8", "replace")
    facts: dict[str, Any] = {"host": transport.host, "gpus": []}
    for line in out.splitlines():
        key, _, value = line.partition("=") if "=" in line else line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "gpu":
            parts = [p.strip() for p in value.split(",")]
            if len(parts) == 5:
                facts["gpus"].append(
                    {"index": parts[0], "name": parts[1], "utilization_pct": parts[2], "memory_used_mb": parts[3],
                     "memory_total_mb": parts[4]}
                )  # fmt: skip
        elif key in ("MemTotal", "MemAvailable"):
            facts[key.lower() + "_kb"] = int(re.sub(r"\D", "", value) or 0)
        elif key:
            facts[key] = value
    return facts
