"""Runs on SSH hosts: validate locally, connect, sync code and data, launch, pull checkpoints.

Every cloud host (EC2, Lambda) goes through here once it is up: it is an SSH host like any other.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from pathlib import Path
from typing import Any

from . import controller
from .config import toml
from .core import layout
from .core import status as st
from .core.errors import HostError, RunctlError, UsageError
from .core.spec import RunSpec, new_run_id
from .store import Store
from .transport.manifest import Plan
from .transport.ssh import SshTransport
from .transport.sync import download, stage_data, sync_code

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


def remote_spec(
    script: str,
    project_dir: str | None,
    project_name: str | None,
    name: str | None,
    env: list[str],
    script_args: list[str],
    policies: dict[str, Any],
    notify: list[str],
    metrics_regex: str | None,
    checkpoint_dir: str | None,
    resume_from: str | None,
    setup: str | None,
) -> tuple[RunSpec, Path]:
    """A validated spec (project_dir still to be placed on the host) and the local project root."""
    root, script_path, relative = controller.locate(script, project_dir)
    is_py = script_path.suffix == ".py"
    # "./" keeps a name like "-x.py" from being read as an option by python3, and finds a bare executable.
    runnable = "./" + relative if relative.startswith("-") or (not is_py and "/" not in relative) else relative
    command = ["python3", runnable, *script_args] if is_py else [runnable, *script_args]
    controller.check_regex(metrics_regex)
    spec = RunSpec(
        run_id=new_run_id(),
        name=name or script_path.stem,
        project_dir=project_name_for(project_name, root),
        command=command,
        provider="ssh",
        script=relative,
        script_args=list(script_args),
        env=controller.parse_env(env),
        checkpoint_dir=checkpoint_dir or "",
        resume_from=resume_from,
        policies=policies,
        notify=list(notify),
        metrics_regex=metrics_regex,
        setup=setup,
        python_env=python_env_for(root, script_path),
        python_script=is_py,
    )
    return spec, root


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
    cases before anything is recorded.
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


def host_owned_paths(spec: RunSpec) -> tuple[str, ...]:
    """Project-relative paths the host writes and a code sync must never delete (custom checkpoint dir, resume file)."""
    owned = []
    for path in (spec.checkpoint_dir, spec.resume_from):
        if path and not path.startswith(("/", "~")) and ".." not in Path(path).parts:
            owned.append(path)
    return tuple(owned)


def start_remote(
    store: Store,
    transport: SshTransport,
    spec: RunSpec,
    local_root: Path,
    remote_dir: str | None,
    sync: bool,
    includes: list[str],
    data: list[Path],
    download_checkpoints: bool,
    say: Any = None,
    adopt: bool = False,
) -> dict[str, Any]:
    """Connect, place the project, sync, launch. Host problems before launch leave nothing behind.

    The sync runs only in a dir runctl created for this project, or one adopted with `adopt`.
    """
    notify = say or (lambda message: None)
    transport.connect()
    project = spec.project_dir
    spec.project_dir = place_project(transport, remote_dir, project)
    spec.host = transport.host
    if data:
        spec.data_dir = spec.project_dir + "/data"
    record = spec.to_dict()
    info = transport.to_dict()
    info["download_checkpoints"] = download_checkpoints
    info["local_root"] = str(local_root)
    info["controller"] = controller.controller_identity()
    store.add_run(record, info, {"status": st.SYNCING, "seq": 0})
    try:
        if sync:
            result = sync_code(
                transport, local_root, spec.project_dir, includes, host_owned_paths(spec), project, adopt
            )
            notify(
                "synced %s -> %s:%s (%d files sent, %.1fs)"
                % (local_root, transport.dest, spec.project_dir, result.files_sent, result.seconds)
            )
            if result.warning:
                notify("warning: " + result.warning)
        if data:
            stage_data(transport, data, spec.project_dir + "/data")
            notify("staged %d data path(s) into %s/data" % (len(data), spec.project_dir))
    except BaseException:
        store.delete_run(spec.run_id)
        raise
    try:
        launched = transport.launch(spec.run_dir, record)
    except KeyboardInterrupt:
        controller.interrupted_start(store, spec, transport)
        raise
    except HostError as exc:
        if controller.salvage_start(store, spec, transport):
            raise HostError(
                "%s; run %s may have started anyway" % (exc.message, spec.run_id),
                "check it with: runctl runs status %s" % spec.run_id,
            ) from None
        raise
    if launched.get("write_error"):
        controller.refused_write(store, spec, transport, launched)
    state = launched.get("state") or transport.probe(spec.run_dir)
    store.update_state(spec.run_id, state)
    store.add_event(spec.run_id, "launched", {"pid": launched.get("pid"), "host": transport.host})
    if not launched.get("ok") and not launched.get("setup_failed"):
        raise RunctlError(
            "run %s could not start on %s: %s" % (spec.run_id, transport.dest, launched.get("error")),
            "check the script on the host: runctl runs logs %s" % spec.run_id,
        )
    return state


def checkpoints(store: Store, row: dict[str, Any]) -> dict[str, Any]:
    transport = controller.transport_for(row)
    if isinstance(transport, SshTransport):
        return transport.agent_json("checkpoints", row["run_dir"])
    from .agent import ops

    return ops.list_checkpoints(row["run_dir"])


def download_checkpoints(
    store: Store, row: dict[str, Any], dest: Path | None, include_all: bool, progress: bool
) -> tuple[Path, Plan]:
    """Pull this run's checkpoints (or all with include_all) into dest, default ./checkpoints/<run_id>/.

    Local files runctl did not download are never overwritten: they come back in `skipped`.
    """
    transport = controller.transport_for(row)
    if not isinstance(transport, SshTransport):
        raise UsageError(
            "run %s is local; its checkpoints are already here" % row["run_id"],
            "see them with: runctl checkpoint list %s" % row["run_id"],
        )
    listing = transport.agent_json("checkpoints", row["run_dir"])
    chosen = [f for f in listing.get("files", []) if include_all or f.get("this_run")]
    local_root = Path(row["transport"].get("local_root") or Path.cwd())
    target = dest or local_root / layout.DEFAULT_CHECKPOINT_DIR / row["run_id"]
    # Files in the checkpoint dir land at the top of target; those found elsewhere keep their project path.
    bases = {"checkpoint_dir": listing["checkpoint_dir"], "project": listing.get("project_dir")}
    done = Plan()
    for base, remote_dir in bases.items():
        paths = [f["path"] for f in chosen if f.get("base", "checkpoint_dir") == base]
        if paths and remote_dir:
            part = download(transport, remote_dir, paths, target, progress)
            done.allowed += part.allowed
            done.skipped += part.skipped
    store.add_event(
        row["run_id"],
        "checkpoints_downloaded",
        {"dest": str(target), "files": len(done.allowed), "skipped": len(done.skipped)},
    )
    return target, done


def skipped_warning(target: Path, skipped: list[str]) -> str:
    shown = ", ".join(skipped[:3]) + (" and %d more" % (len(skipped) - 3) if len(skipped) > 3 else "")
    return (
        "warning: kept %d file(s) in %s that runctl did not download (not overwritten): %s; "
        % (
            len(skipped),
            target,
            shown,
        )
        + "move them away and download again, or pass --dest"
    )


def after_end(store: Store, row: dict[str, Any], say: Any) -> None:
    """End-of-run actions on the controller: pull checkpoints once, before any host action."""
    if row.get("transport", {}).get("kind") != "ssh" or not row["transport"].get("download_checkpoints", True):
        return
    if any(e["kind"] == "checkpoints_downloaded" for e in store.events(row["run_id"])):
        return
    try:
        target, done = download_checkpoints(store, row, None, False, progress=False)
    except (HostError, UsageError) as exc:
        say(
            "warning: checkpoint download failed: %s (retry: runctl checkpoint download %s)"
            % (exc.message, row["run_id"])
        )
        return
    if done.allowed:
        say("downloaded %d checkpoint file(s) to %s" % (len(done.allowed), target))
    if done.skipped:
        say(skipped_warning(target, done.skipped))


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
