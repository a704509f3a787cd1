"""`runctl lambda`: Lambda Labs instances (types, launch, list, status, terminate, ssh-keys) and runs
on them (train). Thin: parse, call the provider (providers/lambda_labs.py), render. Every instance
seen goes into the store's usage through `lambda_labs.observe`, so $/hr and cost follow the bill.
"""

from __future__ import annotations

import sys
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..core.errors import UsageError
from ..params import TrainOptions
from . import options as o
from .common import Output, emit_json, say, store, table
from .trainopts import borrow, train_command

if TYPE_CHECKING:
    from ..providers.lambda_labs import LambdaInstance
    from ..store import Store

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)

InstanceArg = Annotated[str, typer.Argument(help="Lambda instance id", metavar="ID")]
SshUserOpt = Annotated[str, typer.Option("--ssh-user", help="SSH login user (Lambda's images: ubuntu)")]
RegionOpt = Annotated[str, typer.Option("--region", help="Region, or any: the first with capacity now")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait for the new state (active / terminated)")]


class OnEnd(str, Enum):
    terminate = "terminate"
    none = "none"


def cloud():  # type: ignore[no-untyped-def]
    from ..providers.lambda_labs import LambdaCloud

    return LambdaCloud()


def view(instance: LambdaInstance, db: Store, now: float) -> dict[str, Any]:
    """The JSON shape of one instance in `lambda list` and `lambda status` (recorded first)."""
    from ..core import status as st
    from ..providers.lambda_labs import observe

    key = observe(db, instance)
    spent = db.host_cost(key, now=now)
    runs = [r for r in db.list(include_all=False) if r.get("host_key") == key and not st.is_terminal(r["status"])]
    info = (db.host(key) or {}).get("info") or {}
    return {
        "id": instance.id,
        "name": instance.name,
        "status": instance.status,
        "instance_type": instance.type,
        "gpus": instance.gpus,
        "region": instance.region,
        "ip": instance.ip,
        "private_ip": instance.private_ip,
        "hourly_price": instance.hourly_price,
        "price_cents_per_hour": instance.price_cents,
        "cost_so_far": round(spent.amount, 6),
        "billed_seconds": round(spent.billed_seconds, 3),
        "managed": instance.managed,
        "release_failed": info.get("release_failed"),
        "runs": [{"run_id": r["run_id"], "name": r["name"], "status": r["status"]} for r in runs],
    }


@app.command()
def types(
    available: Annotated[bool, typer.Option("--available", help="Only types with capacity now")] = False,
    output: o.OutputOpt = Output.text,
) -> None:
    """Instance types: GPUs, $/hr, and the regions that have capacity now."""
    from ..providers.lambda_labs import money, regions_with_capacity

    found = cloud().types()
    rows = []
    for name in sorted(found, key=lambda n: (found[n]["instance_type"].get("price_cents_per_hour") or 0, n)):
        kind = found[name]["instance_type"]
        regions = regions_with_capacity(found, name)
        if available and not regions:
            continue
        price = kind.get("price_cents_per_hour")
        rows.append(
            {
                "name": name,
                "description": kind.get("description"),
                "gpus": (kind.get("specs") or {}).get("gpus"),
                "hourly_price": price / 100.0 if isinstance(price, (int, float)) else None,
                "price_cents_per_hour": price,
                "regions_with_capacity": regions,
            }
        )
    if output == Output.json:
        emit_json(rows)
        return
    cells = [
        [
            r["name"],
            str(r["gpus"]),
            money(r["hourly_price"]),
            ",".join(r["regions_with_capacity"]) or "-",
            str(r["description"] or ""),
        ]
        for r in rows
    ]
    table(["TYPE", "GPUS", "$/HR", "REGIONS WITH CAPACITY", "DESCRIPTION"], cells)


@app.command()
def launch(
    instance_type: Annotated[str, typer.Option("--instance-type", help="Lambda type, e.g. gpu_1x_a10")],
    region: RegionOpt = "any",
    ssh_key: Annotated[
        str | None, typer.Option("--ssh-key", help="SSH key name in your account (default: its only one)")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Instance name (up to 64 characters)")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it is active")] = False,
    output: o.OutputOpt = Output.text,
) -> None:
    """Launch one instance (recorded before anything else); Ctrl-C during --wait terminates it."""
    from ..core.errors import Interrupted, RunctlError
    from ..providers.lambda_labs import LambdaProvider, observe

    lam = cloud()
    db = store()
    instance = lam.launch(db, instance_type, region, ssh_key, name, say)
    try:
        if wait:
            say("waiting for %s to become active ..." % instance.id)
            instance = lam.wait_active(instance)
    except (KeyboardInterrupt, RunctlError) as exc:
        LambdaProvider.terminate_launched(db, lam, instance.id, say, exc)
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted("interrupted while %s was booting" % instance.id, "it was terminated") from None
        raise
    observe(db, instance)
    data = view(instance, db, time.time())
    if output == Output.json:
        emit_json(data)
        return
    print(instance.id)
    say(
        "%s %s %s in %s, %s, $%s/hr"
        % (
            instance.id,
            instance.status,
            instance.type,
            instance.region,
            instance.ip or "no address yet",
            data["hourly_price"],
        )
    )
    say("  terminate it: runctl lambda terminate %s" % instance.id)


@app.command("list")
def list_(output: o.OutputOpt = Output.text) -> None:
    """Your instances (not terminated): status, type, region, address, $/hr, cost so far, runs."""
    from ..providers.lambda_labs import GONE_STATES, money

    db = store()
    now = time.time()
    views = [view(i, db, now) for i in cloud().instances() if i.status not in GONE_STATES]
    if output == Output.json:
        emit_json(views)
        return
    if not views:
        say("no Lambda instances")
        return
    cells = [
        [
            v["id"],
            v["name"] or "-",
            v["status"],
            v["instance_type"],
            v["region"],
            v["ip"] or "-",
            money(v["hourly_price"]),
            money(v["cost_so_far"]),
            " ".join(r["run_id"] for r in v["runs"]) or "-",
            "release-failed" if v["release_failed"] else ("" if v["managed"] else "not-runctl"),
        ]
        for v in views
    ]
    table(["ID", "NAME", "STATUS", "TYPE", "REGION", "IP", "$/HR", "COST $", "RUNS", "FLAGS"], cells)


@app.command()
def status(instance_id: InstanceArg, output: o.OutputOpt = Output.text) -> None:
    """One instance: status, type, address, $/hr, cost so far, runs on it."""
    from ..providers.lambda_labs import money

    db = store()
    data = view(cloud().get(instance_id), db, time.time())
    if output == Output.json:
        emit_json(data)
        return
    lines = [
        ("instance", data["id"] + (" (%s)" % data["name"] if data["name"] else "")),
        ("status", data["status"]),
        ("type", "%s, %s GPU(s), %s" % (data["instance_type"], data["gpus"], data["region"])),
        ("address", "%s (private %s)" % (data["ip"] or "-", data["private_ip"] or "-")),
        ("price", "$%s/hr" % money(data["hourly_price"])),
        ("cost", "$%s so far" % money(data["cost_so_far"])),
        ("runs", " ".join("%s (%s)" % (r["run_id"], r["status"]) for r in data["runs"]) or "none active"),
    ]
    if data["release_failed"]:
        lines.append(("warning", str(data["release_failed"])))
    for label, value in lines:
        print("%-10s%s" % (label, value))


@app.command()
def terminate(
    instance_id: InstanceArg,
    wait: WaitOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Also an instance runctl did not launch")] = False,
    output: o.OutputOpt = Output.text,
) -> None:
    """Terminate an instance: live runs on it are stopped first (checkpoints pulled), then confirmed gone."""
    from ..core.errors import CloudError, Interrupted
    from ..providers.lambda_labs import CONFIRM_SECONDS, GONE_STATES, NAME, observe

    lam = cloud()
    db = store()
    instance = lam.get(instance_id)
    key = observe(db, instance)
    if instance.status in GONE_STATES:
        say("%s is already %s" % (instance.label, instance.status))
        return
    stored = db.host(key) or {}
    if not force and not instance.managed and not (stored.get("info") or {}).get("managed"):
        raise UsageError(
            "%s was not launched by runctl" % instance.label,
            "terminate it anyway: runctl lambda terminate %s --force" % instance.id,
        )
    from .aws_instances import stop_runs_on

    stop_runs_on(db, key, instance.label)
    say("terminating %s ..." % instance.label)
    try:
        seen = lam.terminate(instance.id, timeout=CONFIRM_SECONDS * (3 if wait else 1))
    except CloudError as exc:
        db.upsert_host(NAME, instance.id, info={"release_failed": "terminate failed: %s" % exc.message})
        raise
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted before the terminate of %s was confirmed" % instance.id,
            "check it: runctl lambda status %s; finish it: runctl lambda terminate %s" % (instance.id, instance.id),
        ) from None
    state = seen.status if seen is not None else "terminated"
    db.record_host_state(key, state)
    db.upsert_host(NAME, instance.id, info={"release_failed": None})
    say("%s is %s (confirmed)" % (instance.label, state))
    if output == Output.json:
        emit_json({"id": instance.id, "status": state})


@app.command()
def stop(instance_id: InstanceArg) -> None:
    """Lambda instances cannot be stopped (this says what to run instead)."""
    from ..providers import get
    from ..providers.base import STOP_HOST, require

    require(get("lambda"), STOP_HOST, instance_id=instance_id)


@app.command("ssh-keys")
def ssh_keys(
    add: Annotated[str | None, typer.Option("--add", help="Public key file to add to your account")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Name of the key to add")] = None,
    output: o.OutputOpt = Output.text,
) -> None:
    """The SSH keys of your Lambda account; --add PUBKEY_FILE --name NAME adds one."""
    if (add is None) != (name is None):
        raise UsageError("--add and --name go together", "runctl lambda ssh-keys --add ~/.ssh/id_ed25519.pub --name me")
    lam = cloud()
    if add is not None and name is not None:
        path = Path(add).expanduser()
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise UsageError("cannot read %s: %s" % (add, exc.strerror or exc), "pass a public key file") from None
        if "PRIVATE KEY" in text or not text.startswith(("ssh-", "ecdsa-", "sk-")):
            raise UsageError("%s is not an OpenSSH public key" % add, "pass the .pub file, e.g. ~/.ssh/id_ed25519.pub")
        added = lam.api.add_ssh_key(name, text)
        say("added SSH key %s (%s)" % (added.get("name"), added.get("id")))
    keys = [{"id": k.get("id"), "name": k.get("name")} for k in lam.api.ssh_keys()]
    if output == Output.json:
        emit_json(keys)
        return
    table(["ID", "NAME"], [[str(k["id"]), str(k["name"])] for k in keys])


@train_command(app, borrowed=borrow(o.synced_host_options), context_settings={"allow_interspersed_args": True})
def train(
    opts: TrainOptions,
    args: Annotated[
        list[str],
        typer.Argument(
            help="ID SCRIPT (or SCRIPT with --instance-type), then -- ARGS", metavar="[ID] SCRIPT [-- ARGS]"
        ),
    ],
    instance_type: Annotated[
        str | None, typer.Option("--instance-type", help="Launch this type for the run (terminated at its end)")
    ] = None,
    region: RegionOpt = "any",
    ssh_key: Annotated[str | None, typer.Option("--ssh-key", help="SSH key name for a launch")] = None,
    on_end: Annotated[
        OnEnd | None,
        typer.Option(
            "--on-end",
            help="terminate (once checkpoints are pulled and verified; the default for an instance launched "
            "here) or none",
        ),
    ] = None,
    host_terminate: Annotated[
        str | None,
        typer.Option(
            "--host-terminate",
            help="Copy the API key in this file to the host (0600) so the instance terminates itself after "
            "the run when no controller is watching",
        ),
    ] = None,
    identity: o.IdentityOpt = None,
    ssh_user: SshUserOpt = "ubuntu",
    **synced: Any,
) -> None:
    """Train on a Lambda instance: ID, or --instance-type to launch one (then terminated at the end)."""
    from ..core.errors import Detached
    from .starting import announce_and_follow, train_request

    needed = 1 if instance_type else 2
    if len(args) < needed:
        raise UsageError(
            "missing %s" % ("SCRIPT" if instance_type else "ID and SCRIPT"),
            "runctl lambda train ID SCRIPT, or runctl lambda train --instance-type TYPE SCRIPT",
        )
    instance = None if instance_type else args[0]
    script, script_args = args[needed - 1], list(args[needed:])
    action = on_end.value if on_end is not None else ("terminate" if instance_type else "none")
    own: dict[str, Any] = {
        "instance": instance,
        "instance_type": instance_type,
        "region": region,
        "ssh_key": ssh_key,
        "on_end": action,
        "identity": identity,
        "ssh_user": ssh_user,
        "name": opts.name,
        "host_terminate": host_terminate,
    }
    request = train_request("lambda", opts, script, script_args, own, synced)
    from ..pipeline import start as start_run

    db = store()
    spec, state = start_run(db, request)
    target = own.get("launched_id") or instance
    if action == "terminate" and opts.output == Output.text:
        say("at its end: checkpoints pulled and verified, then %s is terminated" % target)
    try:
        where = "on Lambda instance %s" % target
        announce_and_follow(db, spec, state, opts.output, opts.wait, opts.timeout, where, opts)
    except Detached as exc:
        if action != "terminate":
            raise
        if sys.stdin.isatty() and confirm("stop run %s and terminate %s now (checkpoints pulled first)? [y/N] "
                                          % (spec.run_id, target)):  # fmt: skip
            end_now(db, spec.run_id)
            return
        exc.hint = "%s; %s is terminated at the run's end once runctl sees it (runctl runs wait %s), or now: " \
            "runctl lambda terminate %s" % (exc.hint, target, spec.run_id, target)  # fmt: skip
        raise


def confirm(question: str) -> bool:
    """The user's yes on the terminal; anything else (or Ctrl-C, or end of input) is no."""
    try:
        sys.stderr.write(question)
        sys.stderr.flush()
        return sys.stdin.readline().strip().lower() in ("y", "yes")
    except (KeyboardInterrupt, OSError):
        return False


def end_now(db: Store, run_id: str) -> None:
    """Ctrl-C of a `train --wait` the user confirmed: a graceful stop, followed to the proven end."""
    from .. import controller
    from ..core import status as st
    from .common import exit_with
    from .waiting import release_failed

    row = db.get(run_id)
    assert row is not None
    if not st.is_terminal(controller.refresh(db, row)["status"]):
        controller.stop(db, row, None)
    ended = controller.follow(db, db.get(run_id) or row, None, None, on_end_notice=say)
    say("run %s %s" % (run_id, ended["status"]))
    release_failed(db, ended)
    exit_with(st.exit_code_for(ended["status"]))
