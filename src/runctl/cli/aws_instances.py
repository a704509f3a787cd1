"""`runctl aws create|list|status|start|stop|terminate|wait|exec`: the life of an instance.

Thin: parse, call the provider (providers/aws.py, providers/ec2launch.py), render. Every state an
instance is seen in goes into the store's usage through `aws.observe`, so cost follows the bill.
"""

from __future__ import annotations

import sys
import time
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..core.errors import UsageError
from . import options as o
from .aws_app import IdentityOpt, InstanceArg, RegionOpt, SshUserOpt, app
from .common import ListOutput, Output, duration_option, emit_csv, emit_json, exit_with, say, store, table

if TYPE_CHECKING:
    from ..providers.aws import Instance, Prices
    from ..store import Store


class WaitState(str, Enum):
    running = "running"
    ssh = "ssh"
    stopped = "stopped"
    terminated = "terminated"


WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait until the instance is in its new state")]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="terminate: also protected instances and ones runctl did not create; stop: without stopping runs first",
    ),
]
RUN_STOP_TIMEOUT = 900.0  # a run's graceful stop, checkpoint pull included, before the API is called anyway


# ---- create ------------------------------------------------------------------------------------


@app.command()
def create(
    instance_type: Annotated[str, typer.Option("--instance-type", help="EC2 instance type, e.g. g5.xlarge")],
    ami: Annotated[str | None, typer.Option("--ami", help="AMI id")] = None,
    image_name: Annotated[
        str | None,
        typer.Option("--image-name", help="AMI name pattern (wildcards *); newest match of yours or Amazon's"),
    ] = None,
    spot: Annotated[bool, typer.Option("--spot", help="Launch a spot instance")] = False,
    max_price: Annotated[
        float | None, typer.Option("--max-price", help="Most USD/hour for spot (default: the on-demand price)")
    ] = None,
    spot_fallback: Annotated[
        str, typer.Option("--spot-fallback", help="No spot capacity: on-demand (launch that) or none (exit 4)")
    ] = "none",
    key_name: Annotated[str | None, typer.Option("--key-name", help="An existing EC2 key pair")] = None,
    ssh_key: Annotated[
        str | None,
        typer.Option("--ssh-key", help="Public key file imported as a key pair (once); its private half is used"),
    ] = None,
    ssh_user: Annotated[str, typer.Option("--ssh-user", help="The image's login user")] = "ubuntu",
    subnet: Annotated[
        str | None,
        typer.Option("--subnet", help="Subnet id (default: the one holding --private-ip, or the default VPC's)"),
    ] = None,
    security_group: Annotated[str | None, typer.Option("--security-group", help="Security group id")] = None,
    ssh_from: Annotated[
        str | None, typer.Option("--ssh-from", help="Make a security group allowing SSH from this CIDR only")
    ] = None,
    private_ip: Annotated[str | None, typer.Option("--private-ip", help="Private IPv4 address in the subnet")] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="public or private: the address SSH uses (remembered)")
    ] = None,
    volume_size: Annotated[int | None, typer.Option("--volume-size", help="Root disk size in GB")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Name tag")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="KEY=VALUE tag (repeatable)")] = None,
    idle_stop: Annotated[
        str, typer.Option("--idle-stop", help="Power off after this long with no run (DURATION or off)")
    ] = "15m",
    on_shutdown: Annotated[
        str, typer.Option("--on-shutdown", help="What a power-off inside the host does: stop or terminate")
    ] = "stop",
    identity: IdentityOpt = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until it runs and answers SSH, and start its idle watchdog")
    ] = False,
    region: RegionOpt = None,
    output: o.OutputOpt = Output.text,
) -> None:
    """Create an instance, tagged as runctl's, with an idle watchdog that ends its bill."""
    from ..providers.ec2launch import CreateRequest
    from ..providers.ec2launch import create as launch

    request = CreateRequest(
        instance_type=instance_type, ami=ami, image_name=image_name, spot=spot, max_price=max_price,
        spot_fallback=spot_fallback, key_name=key_name, ssh_key=ssh_key, ssh_user=ssh_user, subnet=subnet,
        security_group=security_group, ssh_from=ssh_from, private_ip=private_ip, address=address,
        volume_size=volume_size, name=name, tags=list(tag or []), idle_stop=idle_stop, on_shutdown=on_shutdown,
        identity=identity, wait=wait, region=region,
    )  # fmt: skip
    result = launch(request, say, store())
    if output == Output.json:
        emit_json(result)
        return
    print(result["instance_id"])
    where = result["private_ip"] if result["address"] == "private" else result["public_ip"]
    say(
        "%s %s %s %s, $%s/hr (%s)"
        % (result["instance_id"], result["state"], result["instance_type"], where or "-",
           money(result["hourly_price"]), result["price_source"])
    )  # fmt: skip


# ---- list and status ---------------------------------------------------------------------------


def money(value: float | None) -> str:
    """Dollars as people read them: 1.006, 0.526, 0.00001 (no float noise, no lost digits)."""
    if value is None:
        return "-"
    return ("%.5f" % value if value < 1 else "%.3f" % value).rstrip("0").rstrip(".") or "0"


def uptime(instance: Instance, now: float) -> float | None:
    if instance.state != "running" or instance.launch_time is None:
        return None
    return max(0.0, now - instance.launch_time)


def flags_of(instance: Instance, stored: dict[str, Any] | None) -> list[str]:
    from ..providers import ec2tags as tags

    flags = []
    if instance.tags.get(tags.RELEASE_FAILED) or ((stored or {}).get("info") or {}).get("release_failed"):
        flags.append("release-failed")
    if instance.protected:
        flags.append("protected")
    if not instance.managed:
        flags.append("not-runctl")
    return flags


def view(
    instance: Instance,
    prices: Prices,
    stored: dict[str, Any] | None,
    intervals: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    now: float,
) -> dict[str, Any]:
    """The JSON shape of one instance in `aws list` and `aws status`."""
    from ..core.cost import cost
    from ..providers import ec2tags as tags

    price, source = prices.of(instance)
    spent = cost(intervals, now)
    info = (stored or {}).get("info") or {}
    return {
        "instance_id": instance.id,
        "name": instance.name,
        "state": instance.state,
        "state_reason": instance.state_reason,
        "instance_type": instance.type,
        "lifecycle": instance.lifecycle,
        "region": instance.region,
        "availability_zone": instance.availability_zone,
        "private_ip": instance.private_ip,
        "public_ip": instance.public_ip,
        "hourly_price": price,
        "price_source": source,
        "uptime_seconds": uptime(instance, now),
        "cost_so_far": spent.amount,
        "cost_unpriced_seconds": spent.unpriced_seconds,
        "managed": instance.managed,
        "flags": flags_of(instance, stored),
        "release_failed": info.get("release_failed") or instance.tags.get(tags.RELEASE_FAILED),
        "runs": [{"run_id": r["run_id"], "name": r["name"], "status": r["status"]} for r in runs],
    }


def live(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from ..core import status as st

    return [r for r in rows if not st.is_terminal(r["status"])]


@app.command("list")
def list_(
    all_: Annotated[bool, typer.Option("--all", help="Also instances runctl did not create")] = False,
    region: RegionOpt = None,
    output: Annotated[ListOutput, typer.Option(*o.OUTPUT, help="text, json or csv")] = ListOutput.text,
) -> None:
    """runctl's instances (not terminated): state, $/hr, uptime, cost so far, runs, flags."""
    from ..core.durations import format_duration
    from ..providers.aws import Ec2Instances, Prices, observe_all

    cloud = Ec2Instances(region)
    instances = cloud.managed(include_all=all_)
    prices = Prices(cloud, ask_api=False)  # the table or the day's cache: no Pricing API call per listing
    db = store()
    observe_all(db, instances, prices)
    hosts = {h["host_key"]: h for h in db.hosts("aws")}
    usage = db.usage_by_host("aws")
    runs: dict[str, list[dict[str, Any]]] = {}
    for row in live(db.list(include_all=False)):
        runs.setdefault(str(row.get("host_key")), []).append(row)
    now = time.time()
    views = [
        view(i, prices, hosts.get("aws:" + i.id), usage.get("aws:" + i.id, []), runs.get("aws:" + i.id, []), now)
        for i in sorted(instances, key=lambda i: (i.launch_time or 0.0, i.id))
    ]
    if output == ListOutput.json:
        emit_json(views)
        return
    if output == ListOutput.csv:
        fields = ["instance_id", "name", "state", "instance_type", "lifecycle", "hourly_price", "price_source",
                  "uptime_seconds", "cost_so_far", "runs", "flags"]  # fmt: skip
        emit_csv(fields, [{**v, "runs": [r["run_id"] for r in v["runs"]]} for v in views])
        return
    columns = ["instance_id", "name", "state", "instance_type", "lifecycle", "hourly_price", "uptime", "cost_so_far",
               "runs", "flags"]  # fmt: skip
    shown = [
        {
            **v,
            "hourly_price": money(v["hourly_price"]),
            "uptime": format_duration(v["uptime_seconds"]) if v["uptime_seconds"] is not None else "-",
            "cost_so_far": money(v["cost_so_far"]),
            "runs": " ".join(r["run_id"] for r in v["runs"]),
            "flags": ",".join(v["flags"]),
        }
        for v in views
    ]
    if not views:
        say("no %sinstances in %s%s" % ("" if all_ else "runctl ", cloud.region, "" if all_ else " (--all: every one)"))
        return
    heads = ["ID", "NAME", "STATE", "TYPE", "MARKET", "$/HR", "UPTIME", "COST $", "RUNS", "FLAGS"]
    table(heads, [[str(row[c] or "-") for c in columns] for row in shown])


@app.command()
def status(
    instance_ref: InstanceArg,
    region: RegionOpt = None,
    output: o.OutputOpt = Output.text,
) -> None:
    """State, type, $/hr, uptime, cost so far, runs on it, and its last run (from its tags)."""
    from ..core.durations import format_duration
    from ..providers import ec2tags as tags
    from ..providers.aws import Ec2Instances, Prices, observe

    cloud = Ec2Instances(region)
    instance = cloud.find(instance_ref)
    prices = Prices(cloud)
    db = store()
    key = observe(db, instance, prices)
    rows = [r for r in db.list(include_all=True) if r.get("host_key") == key]
    data = view(instance, prices, db.host(key), db.usage(key), live(rows), time.time())
    stored_info = (db.host(key) or {}).get("info") or {}
    data.update(
        shutdown_behaviour=cloud.shutdown_behaviour(instance) if instance.state != "terminated" else None,
        idle_stop=instance.tags.get(tags.IDLE_STOP),
        ssh_user=stored_info.get("ssh_user") or instance.tags.get(tags.SSH_USER),
        identity=stored_info.get("identity") or instance.tags.get(tags.KEY_FILE),
        address_kind=stored_info.get("address_kind") or instance.tags.get(tags.ADDRESS),
        launch_time=instance.launch_time,
        last_run=tags.read_metadata(instance.tags),
        known_runs=[r["run_id"] for r in rows],
        tags=instance.tags,
    )
    if output == Output.json:
        emit_json(data)
        return
    lines = [
        ("instance", instance.label),
        ("state", instance.state + (" (%s)" % instance.state_reason if instance.state_reason else "")),
        ("type", "%s, %s, %s" % (instance.type, instance.lifecycle, instance.availability_zone or cloud.region)),
        ("price", "$%s/hr (%s)" % (money(data["hourly_price"]), data["price_source"])),
        ("uptime", format_duration(data["uptime_seconds"]) if data["uptime_seconds"] is not None else "-"),
        ("cost", "$%s so far" % money(data["cost_so_far"])),
        ("address", "%s (private %s, public %s)" % (data["address_kind"] or "-", instance.private_ip or "-",
                                                   instance.public_ip or "-")),
        ("ssh", "%s, key %s" % (data["ssh_user"] or "ubuntu", data["identity"] or "(ssh default)")),
        ("idle-stop", data["idle_stop"] or "-"),
        ("on power-off", data["shutdown_behaviour"] or "-"),
        ("flags", ", ".join(data["flags"]) or "-"),
        ("runs", " ".join("%s (%s)" % (r["run_id"], r["status"]) for r in data["runs"]) or "none active"),
    ]  # fmt: skip
    last = data["last_run"]
    if last:
        lines += last_run_lines(last)
    for label, value in lines:
        print("%-13s%s" % (label, value))


def last_run_lines(last: dict[str, Any]) -> list[tuple[str, str]]:
    """The run metadata kept in the instance's tags, for people (times as times, not epoch seconds)."""
    from .render import _when

    how = last.get("termination_status")
    lines = [
        ("last run", "%s %s%s" % (last.get("run_id", "?"), last.get("status", "?"), " (%s)" % how if how else "")),
        ("  script", " ".join([str(last.get("script") or "?"), *map(str, last.get("args") or [])])),
    ]
    for key, label in (("started_at", "  started"), ("ended_at", "  ended")):
        if isinstance(last.get(key), (int, float)):
            lines.append((label, _when(float(last[key]))))
    if last.get("last_checkpoint"):
        lines.append(("  checkpoint", str(last["last_checkpoint"])))
    return lines


# ---- start, stop, terminate --------------------------------------------------------------------


def remembered(db: Store, instance: Instance) -> dict[str, Any]:
    return dict(((db.host("aws:" + instance.id) or {}).get("info")) or {})


@app.command()
def start(
    instance_ref: InstanceArg,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until it runs and answers SSH (and re-arm its idle watchdog)")
    ] = False,
    identity: IdentityOpt = None,
    ssh_user: SshUserOpt = None,
    region: RegionOpt = None,
    output: o.OutputOpt = Output.text,
) -> None:
    """Start a stopped instance; with --wait, until it answers SSH and its idle watchdog runs again."""
    from ..providers import ec2tags as tags
    from ..providers.aws import CONFIRM_SECONDS, Ec2Instances, Prices, observe, reach_for, transport_to, wait_ssh
    from ..providers.ec2launch import arm_watchdog, idle_stop_seconds

    cloud = Ec2Instances(region)
    instance = cloud.find(instance_ref)
    prices = Prices(cloud)
    db = store()
    observe(db, instance, prices)
    reach = reach_for(instance, remembered(db, instance), {"identity": identity, "ssh_user": ssh_user})
    if instance.state in ("running", "pending"):
        say("%s is already %s" % (instance.label, instance.state))
    else:
        cloud.start(instance)
        say("starting %s ..." % instance.label)
        instance = cloud.get(instance.id)
        observe(db, instance, prices)
    if wait:
        instance = cloud.wait(instance, "running", CONFIRM_SECONDS * 5)
        observe(db, instance, prices)
        wait_ssh(transport_to(instance, reach), CONFIRM_SECONDS * 5)
        setting = instance.tags.get(tags.IDLE_STOP, "off")
        if instance.managed and setting != "off":
            arm_watchdog(instance, reach, idle_stop_seconds(setting), say)
    elif instance.managed and instance.tags.get(tags.IDLE_STOP, "off") != "off":
        say("its idle watchdog comes back with its next run, or now with: runctl aws start %s --wait" % instance.id)
    show(instance, prices, db, output)


def show(instance: Instance, prices: Prices, db: Store, output: Output) -> None:
    key = "aws:" + instance.id
    data = view(instance, prices, db.host(key), db.usage(key), [], time.time())
    if output == Output.json:
        emit_json(data)
    else:
        print("%s %s" % (instance.id, instance.state))


def stop_runs(db: Store, instance: Instance) -> None:
    """Stop the runs live on the instance gracefully and follow each to its end (checkpoints pulled)."""
    stop_runs_on(db, "aws:" + instance.id, instance.id)


def stop_runs_on(db: Store, key: str, label: str) -> None:
    """Stop the runs live on the host `key` gracefully and follow each to its end (any provider's)."""
    from .. import controller
    from ..core import status as st
    from ..core.errors import RunctlError

    for row in live([r for r in db.list(include_all=False) if r.get("host_key") == key]):
        try:
            current = controller.refresh(db, row)
            if st.is_terminal(current["status"]):
                continue
            say("stopping run %s on %s first (checkpoint, then pull) ..." % (row["run_id"], label))
            controller.stop(db, row, None)
            ended = controller.follow(db, db.get(row["run_id"]) or row, None, RUN_STOP_TIMEOUT, on_end_notice=say)
            say("run %s %s" % (row["run_id"], ended["status"]))
        except RunctlError as exc:
            say("warning: could not stop run %s gracefully: %s" % (row["run_id"], exc.message))


def end(action: str, instance_ref: str, wait: bool, force: bool, region: str | None, output: Output) -> None:
    """`aws stop` and `aws terminate`: refuse what must be refused, stop runs, then the API, confirmed."""
    from ..core.errors import CloudError, Interrupted
    from ..providers import ec2tags as tags
    from ..providers.aws import (
        CONFIRM_SECONDS,
        FINAL,
        Ec2Instances,
        Prices,
        clear_release_failed,
        mark_release_failed,
        observe,
    )

    cloud = Ec2Instances(region)
    instance = cloud.find(instance_ref)
    prices = Prices(cloud)
    db = store()
    observe(db, instance, prices)
    if action == "terminate" and not force:
        if instance.protected:
            raise UsageError(
                "%s is protected (tag %s=true)" % (instance.label, tags.PROTECT),
                "terminate it anyway: runctl aws terminate %s --force (or remove the tag)" % instance.id,
            )
        if not instance.managed:
            raise UsageError(
                "%s was not created by runctl (no %s tag)" % (instance.label, tags.MANAGED),
                "terminate it anyway: runctl aws terminate %s --force" % instance.id,
            )
    if instance.state == FINAL[action] or (action == "stop" and instance.state == "stopping" and not wait):
        say("%s is already %s" % (instance.label, instance.state))
        show(instance, prices, db, output)
        return
    if action == "stop" and instance.state in ("terminated", "shutting-down"):
        raise UsageError("%s is %s: it cannot be stopped" % (instance.label, instance.state), "nothing to do")
    if not (action == "stop" and force):
        stop_runs(db, instance)
    say("%s %s ..." % ("stopping" if action == "stop" else "terminating", instance.label))
    try:
        seen = cloud.end_billing(instance, action)
        if wait and seen.state != FINAL[action]:
            seen = cloud.wait(seen, FINAL[action], CONFIRM_SECONDS * 5)
    except CloudError as exc:
        mark_release_failed(cloud, db, instance, action, exc.message)
        raise
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted before the %s of %s was confirmed" % (action, instance.id),
            "check it: runctl aws status %s; finish it: runctl aws %s %s" % (instance.id, action, instance.id),
        ) from None
    observe(db, seen, prices)
    clear_release_failed(cloud, db, seen)
    say("%s is %s" % (seen.label, seen.state))
    show(seen, prices, db, output)


@app.command()
def stop(
    instance_ref: InstanceArg,
    wait: WaitOpt = False,
    force: ForceOpt = False,
    region: RegionOpt = None,
    output: o.OutputOpt = Output.text,
) -> None:
    """Stop an instance (its disk stays): live runs on it are stopped gracefully first."""
    end("stop", instance_ref, wait, force, region, output)


@app.command()
def terminate(
    instance_ref: InstanceArg,
    wait: WaitOpt = False,
    force: ForceOpt = False,
    region: RegionOpt = None,
    output: o.OutputOpt = Output.text,
) -> None:
    """Terminate a runctl instance (live runs stopped first, checkpoints pulled); --force for others."""
    end("terminate", instance_ref, wait, force, region, output)


# ---- wait and exec -----------------------------------------------------------------------------


@app.command()
def wait(
    instance_ref: InstanceArg,
    state: Annotated[WaitState, typer.Option("--state", help="running, ssh (answers SSH), stopped or terminated")] = (
        WaitState.running
    ),
    timeout: Annotated[str | None, typer.Option("--timeout", help="Give up after DURATION (exit 3)")] = None,
    identity: IdentityOpt = None,
    ssh_user: SshUserOpt = None,
    region: RegionOpt = None,
) -> None:
    """Block until the instance is in STATE; exit 3 on --timeout."""
    from ..core.errors import HostError, Interrupted, WaitTimeout
    from ..providers.aws import Ec2Instances, Prices, observe, reach_for, transport_to, wait_ssh
    from ..providers.ec2launch import WAIT_SECONDS

    seconds = duration_option(timeout, "--timeout")
    started = time.monotonic()
    cloud = Ec2Instances(region)
    instance = cloud.find(instance_ref)
    db = store()
    prices = Prices(cloud)
    target = "running" if state == WaitState.ssh else state.value
    reach = None
    if state == WaitState.ssh:
        reach = reach_for(instance, remembered(db, instance), {"identity": identity, "ssh_user": ssh_user})
    try:
        instance = cloud.wait(instance, target, seconds)
        observe(db, instance, prices)
        if reach is not None:
            left = (seconds if seconds is not None else WAIT_SECONDS) - (time.monotonic() - started)
            try:
                wait_ssh(transport_to(instance, reach), max(0.5, left))
            except HostError as exc:
                raise WaitTimeout(exc.message, "wait again: runctl aws wait %s --state ssh" % instance.id) from None
    except KeyboardInterrupt:
        raise Interrupted(
            "stopped waiting for %s" % instance.label, "it carries on: runctl aws status %s" % instance.id
        ) from None
    say("%s is %s" % (instance.label, "answering SSH" if reach is not None else instance.state))


@app.command("exec", context_settings={"allow_interspersed_args": False})
def exec_(
    instance_ref: InstanceArg,
    command: Annotated[list[str], typer.Argument(help="Command and arguments, after --")],
    identity: IdentityOpt = None,
    ssh_user: SshUserOpt = None,
    region: RegionOpt = None,
) -> None:
    """Run a command on the instance over SSH (arguments quoted, never re-split); exit with its code."""
    import shlex

    from ..core.errors import HostError
    from ..providers.aws import Ec2Instances, reach_for, transport_to

    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given", "for example: runctl aws exec %s -- nvidia-smi" % instance_ref)
    cloud = Ec2Instances(region)
    instance = cloud.find(instance_ref)
    if instance.state != "running":
        raise HostError(
            "%s is %s" % (instance.label, instance.state), "start it: runctl aws start %s --wait" % instance.id
        )
    reach = reach_for(instance, remembered(store(), instance), {"identity": identity, "ssh_user": ssh_user})
    proc = transport_to(instance, reach).run(shlex.join(command), check=False, timeout=None)
    sys.stdout.buffer.write(proc.stdout)
    sys.stderr.buffer.write(proc.stderr)
    exit_with(proc.returncode)
