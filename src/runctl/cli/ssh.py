"""`runctl ssh`: train on any SSH host, run commands there, and see what it is doing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..core.errors import UsageError
from . import options as o
from .common import Output, emit_json, exit_with, say, store

app = typer.Typer(help="Run training on any SSH host (OpenSSH + rsync).", no_args_is_help=True, rich_markup_mode=None)

DestArg = Annotated[str, typer.Argument(help="[user@]host[:port] or a Host alias from ~/.ssh/config")]
IdentityOpt = Annotated[str | None, typer.Option("--identity", "-i", help="Private key file")]
InsecureOpt = Annotated[
    bool, typer.Option("--insecure-host-key", help="Skip host key checking (default: accept-new into known_hosts)")
]


def make_transport(dest: str, identity: str | None, insecure: bool):  # type: ignore[no-untyped-def]
    from ..providers.ssh import SshProvider

    return SshProvider.make_transport({"dest": dest, "identity": identity, "insecure_host_key": insecure})


@app.command()
def train(
    dest: DestArg,
    script: Annotated[str, typer.Argument(help="Training script inside the project")],
    script_args: o.ScriptArgs = None,
    identity: IdentityOpt = None,
    insecure_host_key: InsecureOpt = False,
    project_dir: Annotated[
        str | None, typer.Option("--project-dir", help="Local project root (default: nearest .git/pyproject.toml)")
    ] = None,
    project_name: Annotated[str | None, typer.Option("--project-name", help="Name on the host")] = None,
    remote_dir: Annotated[
        str | None, typer.Option("--remote-dir", help="Project dir on the host (default ~/runctl/<project-name>)")
    ] = None,
    adopt_remote_dir: Annotated[
        bool,
        typer.Option(
            "--adopt-remote-dir",
            help="Sync into an existing non-empty --remote-dir runctl did not create; what is there is never deleted",
        ),
    ] = False,
    sync_code: Annotated[bool, typer.Option("--sync-code/--no-sync-code", help="rsync the project first")] = True,
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Sync this pattern even if ignored (repeatable)")
    ] = None,
    data: Annotated[
        list[str] | None, typer.Option("--data", help="Local file or dir staged to <remote>/data/ (repeatable)")
    ] = None,
    setup: Annotated[
        str | None, typer.Option("--setup", help="Shell command run on the host before the script")
    ] = None,
    download_checkpoints: Annotated[
        bool,
        typer.Option("--download-checkpoints/--no-download-checkpoints", help="Pull checkpoints when the run ends"),
    ] = True,
    name: o.NameOpt = None,
    env: o.EnvOpt = None,
    wait: o.WaitOpt = False,
    timeout: o.TimeoutOpt = None,
    output: o.OutputOpt = Output.text,
    checkpoint_dir: o.CheckpointDirOpt = None,
    resume_from: o.ResumeOpt = None,
    metrics_regex: o.MetricsRegexOpt = None,
    tty: o.TtyOpt = False,
    checkpoint_glob: o.CheckpointGlobOpt = None,
    notify: o.NotifyOpt = None,
    auto_stop_loss: o.AutoStopLoss = None,
    auto_stop_patience: o.AutoStopPatience = None,
    exit_grace: o.ExitGrace = None,
    stall_polls: o.StallPolls = None,
    poll_interval: o.PollInterval = None,
    hang_timeout: o.HangTimeout = None,
    on_hang: o.OnHang = None,
    max_duration: o.MaxDuration = None,
    on_nan: o.OnNan = None,
    stop_grace: o.StopGrace = None,
) -> None:
    """Sync the project to DEST and start SCRIPT there detached (follow it with --wait)."""
    from ..pipeline import StartRequest
    from .starting import run_train, wait_timeout

    seconds = wait_timeout(wait, timeout)
    flags = o.policy_flags(
        auto_stop_loss, auto_stop_patience, exit_grace, stall_polls, poll_interval,
        hang_timeout, on_hang, max_duration, on_nan, stop_grace, notify,
    )  # fmt: skip
    own = {
        "dest": dest, "identity": identity, "insecure_host_key": insecure_host_key, "project_name": project_name,
        "remote_dir": remote_dir, "adopt": adopt_remote_dir, "sync": sync_code, "includes": include or [],
        "data": [Path(p).expanduser().resolve() for p in data or []], "download_checkpoints": download_checkpoints,
    }  # fmt: skip
    request = StartRequest(
        "ssh", script, project_dir, name, env or [], None, script_args or [], notify or [], metrics_regex,
        checkpoint_dir, resume_from, setup, tty, checkpoint_glob or [], flags, own,
        say=None if output == Output.json else say,
    )  # fmt: skip
    run_train(request, output, wait, seconds)


@app.command("exec", context_settings={"allow_interspersed_args": False})
def exec_(
    dest: DestArg,
    command: Annotated[list[str], typer.Argument(help="Command and arguments, after --")],
    identity: IdentityOpt = None,
    insecure_host_key: InsecureOpt = False,
) -> None:
    """Run a command on DEST (arguments are quoted, never re-split by a shell); exit with its code."""
    import shlex
    import sys

    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given", "for example: runctl ssh exec %s -- nvidia-smi" % dest)
    transport = make_transport(dest, identity, insecure_host_key)
    proc = transport.run(shlex.join(command), check=False, timeout=None)
    sys.stdout.buffer.write(proc.stdout)
    sys.stderr.buffer.write(proc.stderr)
    exit_with(proc.returncode)


@app.command()
def status(
    dest: DestArg,
    identity: IdentityOpt = None,
    insecure_host_key: InsecureOpt = False,
    output: o.OutputOpt = Output.text,
) -> None:
    """CPU, memory, disk, GPUs (nvidia-smi) of DEST, and the runctl runs on it."""
    from .. import controller, providers
    from ..core import status as st

    transport = make_transport(dest, identity, insecure_host_key)
    facts = providers.get("ssh").describe(transport)
    db = store()
    runs = [
        controller.refresh(db, row)
        for row in db.list(include_all=False)
        if not st.is_terminal(row["status"])
        and row["provider"] == "ssh" and row["transport"].get("host") == transport.dest.host
        and row["transport"].get("port") == transport.dest.port
    ]  # fmt: skip
    facts["runs"] = runs
    if output == Output.json:
        emit_json(facts)
        return
    gib = 1024 * 1024
    print("host       %s" % facts["host"])
    print("cpu        %s cores, load %s" % (facts.get("cores"), facts.get("load")))
    total, avail = facts.get("memtotal_kb", 0), facts.get("memavailable_kb", 0)
    print("memory     %.1f GiB used of %.1f GiB" % ((total - avail) / gib, total / gib))
    disk_total, disk_avail = int(facts.get("disk_total_kb", 0)), int(facts.get("disk_avail_kb", 0))
    print("disk       %.1f GiB free of %.1f GiB" % (disk_avail / gib, disk_total / gib))
    if not facts["gpus"]:
        print("gpus       none (no nvidia-smi)")
    for gpu in facts["gpus"]:
        print(
            "gpu %s      %s: %s%% busy, %s/%s MiB"
            % (gpu["index"], gpu["name"], gpu["utilization_pct"], gpu["memory_used_mb"], gpu["memory_total_mb"])
        )
    if runs:
        from .render import run_table

        run_table(runs)
    else:
        print("runs       none active")
