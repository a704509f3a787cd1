"""`runctl ssh`: train on any SSH host, run commands there, and see what it is doing."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..core.errors import UsageError
from ..params import TrainOptions
from . import options as o
from .common import Output, emit_json, exit_with, store
from .trainopts import borrow, train_command

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)

DestArg = Annotated[str, typer.Argument(help="[user@]host[:port] or a Host alias from ~/.ssh/config")]
IdentityOpt = o.IdentityOpt
InsecureOpt = Annotated[
    bool, typer.Option("--insecure-host-key", help="Skip host key checking (default: accept-new into known_hosts)")
]


def make_transport(dest: str, identity: str | None, insecure: bool):  # type: ignore[no-untyped-def]
    from ..providers.ssh import SshProvider

    return SshProvider.make_transport({"dest": dest, "identity": identity, "insecure_host_key": insecure})


@train_command(app, borrowed=borrow(o.synced_host_options))
def train(
    opts: TrainOptions,
    dest: DestArg,
    script: o.ScriptArg,
    script_args: o.ScriptArgs = None,
    identity: IdentityOpt = None,
    insecure_host_key: InsecureOpt = False,
    hourly_price: o.HourlyPriceOpt = None,
    **synced: Any,
) -> None:
    """Sync the project to DEST and start SCRIPT there detached (follow it with --wait)."""
    from .starting import run_train, train_request

    own = {"dest": dest, "identity": identity, "insecure_host_key": insecure_host_key, "hourly_price": hourly_price}
    request = train_request("ssh", opts, script, script_args, own, synced)
    run_train(request, opts.output, opts.wait, opts.timeout, opts=opts)


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
