"""The AWS EC2 provider: instances found by id or `Name` tag, reached over SSH, stopped or
terminated through the API with retries and a confirmation read back.

Training on an instance is the SSH provider's pipeline (sync, stage, bootstrap, launch) to the
instance's address, with how to reach it remembered per instance (tags and store). The end of a
run is proven: the agent powers the host off itself when the run is over and no controller claimed
the step (the instance's shutdown behaviour turns that into a stop or terminate, no credentials on
the host), and a controller that is present calls StopInstances/TerminateInstances itself, confirmed
by reading the state back. boto3 is imported only through `ec2api`, when a call is made.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..core.errors import CloudError, HostError, UsageError
from ..core.spec import RunSpec
from ..transport.base import Transport
from ..transport.ssh import Dest, SshTransport
from . import ec2tags as tags
from .base import Host, Missing, Placement, StartRequest, default_on_end
from .ssh import SshProvider

INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")
LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
# Compute billing has ended in these states (a stopped instance still pays for its disk).
ENDED = {"stop": ("stopping", "stopped"), "terminate": ("shutting-down", "terminated")}
FINAL = {"stop": "stopped", "terminate": "terminated", "start": "running"}
CONFIRM_SECONDS = 120.0  # reading the state back after the call was accepted
FOLLOW_UP_SECONDS = 60.0  # `stopping`/`shutting-down` confirmed; how long to wait for the final state
POLL_SECONDS = 0.5
DEFAULT_SSH_USER = "ubuntu"
# How long the agent waits after a run for a controller to claim its end before powering off itself.
CONTROLLER_GRACE = 2.0
AUTH_GRACE = 60.0  # how long a new instance may refuse the SSH key before that is taken as final
ON_END_CHOICES = ("none", "stop", "terminate")


@dataclass
class Instance:
    """One EC2 instance as runctl sees it (from describe_instances)."""

    id: str
    state: str
    type: str
    region: str
    tags: dict[str, str] = field(default_factory=dict)
    private_ip: str | None = None
    public_ip: str | None = None
    launch_time: float | None = None
    availability_zone: str | None = None
    lifecycle: str = "on-demand"  # or "spot"
    spot_request_id: str | None = None
    state_reason: str | None = None
    key_name: str | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any], region: str) -> Instance:
        launched = data.get("LaunchTime")
        return cls(
            id=str(data["InstanceId"]),
            state=str((data.get("State") or {}).get("Name") or "unknown"),
            type=str(data.get("InstanceType") or ""),
            region=region,
            tags=tags.as_dict(data.get("Tags") or []),
            private_ip=data.get("PrivateIpAddress"),
            public_ip=data.get("PublicIpAddress"),
            launch_time=launched.timestamp() if launched is not None and hasattr(launched, "timestamp") else None,
            availability_zone=(data.get("Placement") or {}).get("AvailabilityZone"),
            lifecycle="spot" if data.get("InstanceLifecycle") == "spot" else "on-demand",
            spot_request_id=data.get("SpotInstanceRequestId"),
            state_reason=(data.get("StateReason") or {}).get("Message"),
            key_name=data.get("KeyName"),
        )

    @property
    def name(self) -> str:
        return self.tags.get("Name", "")

    @property
    def managed(self) -> bool:
        """Whether runctl created it (its tag): only then may runctl terminate it unasked-for."""
        return self.tags.get(tags.MANAGED) == "true"

    @property
    def protected(self) -> bool:
        """`runctl:protect=true`: never stopped or terminated unless forced, never swept."""
        return self.tags.get(tags.PROTECT) == "true"

    @property
    def label(self) -> str:
        return "%s (%s)" % (self.id, self.name) if self.name else self.id

    def address(self, kind: str | None = None) -> str | None:
        """The address to SSH to: the kind asked for (or remembered), else public, else private."""
        kind = kind or self.tags.get(tags.ADDRESS)
        if kind == "private":
            return self.private_ip
        if kind == "public":
            return self.public_ip
        return self.public_ip or self.private_ip


def is_instance_id(ref: str) -> bool:
    return bool(INSTANCE_ID.match(ref))


class Ec2Instances:
    """Instances of one region: look up, start, stop, terminate (retried, confirmed), wait."""

    def __init__(self, region: str | None = None, profile: str | None = None, session: Any = None) -> None:
        from .ec2api import Ec2

        self.ec2 = Ec2(region, profile, session)
        self.region = self.ec2.region

    # ---- finding -------------------------------------------------------------------------

    def describe(self, **params: Any) -> list[Instance]:
        reservations = self.ec2.paginate("describe_instances", "Reservations", **params)
        return [Instance.from_api(i, self.region) for r in reservations for i in r.get("Instances") or []]

    def regions(self) -> list[str]:
        """The regions this account may use (opted in), for a listing across all of them."""
        answer = self.ec2.call("describe_regions")
        return sorted(str(r["RegionName"]) for r in answer.get("Regions") or [])

    def get(self, instance_id: str) -> Instance:
        found = self.describe(InstanceIds=[instance_id])
        if not found:
            raise UsageError("no instance %s in %s" % (instance_id, self.region), "list them: runctl aws list --all")
        return found[0]

    def find(self, ref: str) -> Instance:
        """An instance by id, or by its `Name` tag (unique among instances not terminated)."""
        if not ref or len(ref) > 255:
            raise UsageError("invalid instance %r" % ref, "pass an instance id (i-...) or its Name tag")
        if is_instance_id(ref):
            return self.get(ref)
        if ref.startswith("i-"):
            raise UsageError("invalid instance id %r" % ref, "an instance id looks like i-0123456789abcdef0")
        found = [i for i in self.describe(Filters=[{"Name": "tag:Name", "Values": [ref]}]) if i.state != "terminated"]
        if not found:
            raise UsageError(
                "no instance named %r in %s" % (ref, self.region), "list them: runctl aws list --all (or pass --region)"
            )
        if len(found) > 1:
            ids = ", ".join(i.id for i in found)
            raise UsageError("%d instances are named %r: %s" % (len(found), ref, ids), "name one by its id")
        return found[0]

    def managed(self, include_all: bool = False) -> list[Instance]:
        """runctl's instances (all instances with `include_all`), terminated ones left out."""
        filters = [{"Name": "instance-state-name", "Values": list(LIVE_STATES)}]
        if not include_all:
            filters.append({"Name": "tag:%s" % tags.MANAGED, "Values": ["true"]})
        return self.describe(Filters=filters)

    # ---- state changes -------------------------------------------------------------------

    def end_billing(self, instance: Instance, action: str) -> Instance:
        """Stop or terminate, retried on transient errors, then confirmed by reading the state back.

        Returns the instance as read back: `stopped`/`terminated`, or `stopping`/`shutting-down`
        when the final state did not follow within FOLLOW_UP_SECONDS (compute billing has ended
        then too). A call that keeps failing, or a state that never moves, is a CloudError naming
        the command to run by hand.
        """
        from .ec2api import BILLING_ATTEMPTS

        if instance.state in ENDED[action][1:] or (action == "stop" and instance.state == "terminated"):
            return instance
        manual = "aws ec2 %s-instances --region %s --instance-ids %s" % (
            "stop" if action == "stop" else "terminate",
            self.region,
            instance.id,
        )
        operation = "stop_instances" if action == "stop" else "terminate_instances"
        try:
            self.ec2.call(operation, attempts=BILLING_ATTEMPTS, InstanceIds=[instance.id])
            if action == "terminate" and instance.spot_request_id:
                # A persistent spot request would otherwise launch a replacement.
                self.ec2.call(
                    "cancel_spot_instance_requests",
                    attempts=BILLING_ATTEMPTS,
                    SpotInstanceRequestIds=[instance.spot_request_id],
                )
        except CloudError as exc:
            raise CloudError(
                "could not %s %s: %s" % (action, instance.id, exc.message), "run: " + manual, exc.code
            ) from None
        return self.confirm(instance, action, manual)

    def confirm(self, instance: Instance, action: str, manual: str) -> Instance:
        deadline = time.monotonic() + CONFIRM_SECONDS
        ended_at: float | None = None
        while True:
            try:
                seen = self.get(instance.id)
            except UsageError:
                # Terminated instances vanish from describe after a while: gone is confirmed.
                if action == "terminate":
                    instance.state = "terminated"
                    return instance
                raise
            except CloudError:
                seen = None
            if seen is not None:
                if seen.state == FINAL[action]:
                    return seen
                if seen.state in ENDED[action] and ended_at is None:
                    ended_at = time.monotonic()
                if ended_at is not None and time.monotonic() - ended_at >= FOLLOW_UP_SECONDS:
                    return seen
            if time.monotonic() >= deadline:
                state = seen.state if seen is not None else "unknown"
                raise CloudError(
                    "%s of %s was accepted but the instance is still %s after %.0fs"
                    % (action, instance.id, state, CONFIRM_SECONDS),
                    "check it: runctl aws status %s; if it still runs: %s" % (instance.id, manual),
                    "unconfirmed",
                )
            time.sleep(POLL_SECONDS)

    def start(self, instance: Instance) -> Instance:
        if instance.state == "running":
            return instance
        if instance.state in ("terminated", "shutting-down"):
            raise UsageError("%s is %s and cannot be started" % (instance.label, instance.state), STATE_HINT_LIST)
        if instance.state == "stopping":
            instance = self.wait(instance, "stopped", CONFIRM_SECONDS)
        self.ec2.call("start_instances", InstanceIds=[instance.id])
        return instance

    def wait(self, instance: Instance, state: str, timeout: float | None) -> Instance:
        """Poll until the instance is in `state` (running, stopped, terminated); HostError past the timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                seen = self.get(instance.id)
            except UsageError:
                if state == "terminated":
                    instance.state = "terminated"
                    return instance
                raise
            if seen.state == state:
                return seen
            if state in ("running", "stopped") and seen.state in ("terminated", "shutting-down"):
                raise HostError("%s is %s; it will not reach %s" % (seen.label, seen.state, state), STATE_HINT_LIST)
            if deadline is not None and time.monotonic() >= deadline:
                from ..core.errors import WaitTimeout

                raise WaitTimeout(
                    "%s is still %s (waited for %s)" % (seen.label, seen.state, state),
                    "wait again: runctl aws wait %s --state %s" % (seen.id, state),
                )
            time.sleep(POLL_SECONDS)

    def set_shutdown_behaviour(self, instance: Instance, behaviour: str) -> None:
        """Set what the host's own power-off becomes, confirmed by reading it back: a power-off that
        terminated where a stop was meant would lose the disk. (The Attribute/Value form: every EC2
        API takes it.)"""
        self.ec2.call(
            "modify_instance_attribute",
            InstanceId=instance.id,
            Attribute="instanceInitiatedShutdownBehavior",
            Value=behaviour,
        )
        seen = self.shutdown_behaviour(instance)
        if seen != behaviour:
            raise HostError(
                "%s: its shutdown behaviour is still %s after setting it to %s" % (instance.id, seen, behaviour),
                "set it by hand: aws ec2 modify-instance-attribute --instance-id %s "
                "--instance-initiated-shutdown-behavior %s" % (instance.id, behaviour),
            )

    def shutdown_behaviour(self, instance: Instance) -> str:
        answer = self.ec2.call(
            "describe_instance_attribute", InstanceId=instance.id, Attribute="instanceInitiatedShutdownBehavior"
        )
        return str((answer.get("InstanceInitiatedShutdownBehavior") or {}).get("Value") or "stop")

    def put_tags(self, instance: Instance, values: Mapping[str, str], remove: list[str] | None = None) -> None:
        if remove:
            self.ec2.call("delete_tags", Resources=[instance.id], Tags=[{"Key": k} for k in remove])
        if values:
            self.ec2.call("create_tags", Resources=[instance.id], Tags=tags.as_list(values))
        for key in remove or []:
            instance.tags.pop(key, None)
        instance.tags.update(values)


STATE_HINT_LIST = "see your instances: runctl aws list --all"


# ---- what an instance costs, and what was seen of it -------------------------------------------


def pricing_client() -> Any:
    """The Pricing API's client (it answers in us-east-1 for every region), asked once per day at most."""
    from .ec2api import client

    return client("pricing", "us-east-1", timeout=5.0)


class Prices:
    """Hourly prices of the instances one command sees: each type (or spot type and zone) asked once.

    On-demand prices come from ec2prices (Pricing API, cached a day, else its dated table); spot
    instances are priced from the spot price history of their zone, and from the on-demand price,
    said so in the source, when the history has nothing.
    """

    def __init__(self, cloud: Ec2Instances | None, ask_api: bool = True) -> None:
        self.cloud = cloud
        self.ask_api = ask_api
        self.known: dict[tuple[str, str, str | None], tuple[float | None, str]] = {}

    def on_demand(self, instance_type: str, region: str) -> tuple[float | None, str]:
        from .. import paths
        from .ec2prices import on_demand_price

        key = ("on-demand", instance_type, region)
        if key not in self.known:
            factory = pricing_client if self.ask_api else None
            self.known[key] = on_demand_price(instance_type, region, factory, str(paths.home()))
        return self.known[key]

    def of(self, instance: Instance) -> tuple[float | None, str]:
        if instance.lifecycle != "spot" or self.cloud is None:
            return self.on_demand(instance.type, instance.region)
        from .ec2prices import spot_price

        key = ("spot", instance.type, instance.availability_zone)
        if key not in self.known:
            price, source = spot_price(self.cloud.ec2.client, instance.type, instance.availability_zone)
            if price is None:
                price, fallback = self.on_demand(instance.type, instance.region)
                source = "%s (on-demand price; %s)" % (fallback, source)
            self.known[key] = (price, source)
        return self.known[key]


def observe(store: Any, instance: Instance, prices: Prices, info: Mapping[str, Any] | None = None) -> str:
    """Record the instance as seen now: its state opens a usage interval at its hourly price.

    Every command that reads an instance's state calls this, so the store's usage (and the cost
    shown by `aws list`, `aws status` and `runs status`) follows each observed transition.
    Returns the store's key of the host.
    """
    price, source = prices.of(instance)
    known = {"name": instance.name, "lifecycle": instance.lifecycle, "managed": instance.managed}
    return str(
        store.upsert_host(
            "aws",
            instance.id,
            address=instance.address() or None,
            region=instance.region,
            instance_type=instance.type,
            hourly_price=price,
            price_source=source,
            state=instance.state,
            info={**known, **(info or {})},
        )
    )


def observe_all(store: Any, instances: list[Instance], prices: Prices) -> None:
    """`observe` for a listing's instances, in one store transaction."""
    with store.transaction():
        for instance in instances:
            observe(store, instance, prices)


def mark_release_failed(cloud: Ec2Instances, store: Any, instance: Instance, action: str, error: str) -> None:
    """A stop/terminate that could not be done or confirmed: flag the instance (tag and store) so
    `aws list` shows it until a later one succeeds. Best effort: the API may be failing as a whole."""
    note = "%s failed at %s" % (action, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    try:
        cloud.put_tags(instance, {tags.RELEASE_FAILED: note})
    except (CloudError, UsageError):
        pass
    if store is not None and store.host("aws:" + instance.id) is not None:
        store.upsert_host("aws", instance.id, info={"release_failed": "%s: %s" % (note, error)})


def clear_release_failed(cloud: Ec2Instances, store: Any, instance: Instance) -> None:
    """The flag of `mark_release_failed` removed once a stop/terminate went through."""
    if tags.RELEASE_FAILED in instance.tags and instance.state != "terminated":
        try:
            cloud.put_tags(instance, {}, remove=[tags.RELEASE_FAILED])
        except (CloudError, UsageError):
            pass
    if store is not None:
        stored = store.host("aws:" + instance.id)
        if stored is not None and (stored.get("info") or {}).get("release_failed"):
            store.upsert_host("aws", instance.id, info={"release_failed": None})


# ---- how to reach an instance -----------------------------------------------------------------


@dataclass(frozen=True)
class Reach:
    """How runctl SSHes to an instance: remembered per instance, overridable per command."""

    user: str
    identity: str | None
    address_kind: str | None


def reach_for(instance: Instance, remembered: Mapping[str, Any] | None, options: Mapping[str, Any]) -> Reach:
    """-i/--ssh-user given now win, then what the store remembers, then the instance's tags."""
    remembered = remembered or {}
    identity = options.get("identity") or remembered.get("identity") or instance.tags.get(tags.KEY_FILE)
    if options.get("identity") and not Path(str(identity)).expanduser().is_file():
        raise UsageError("identity file %s does not exist" % identity, "pass the path of a private key with -i")
    user = options.get("ssh_user") or remembered.get("ssh_user") or instance.tags.get(tags.SSH_USER)
    kind = options.get("address") or remembered.get("address_kind") or instance.tags.get(tags.ADDRESS)
    return Reach(
        str(user or DEFAULT_SSH_USER), str(Path(str(identity)).expanduser()) if identity else None, kind or None
    )


def transport_to(instance: Instance, reach: Reach) -> SshTransport:
    address = instance.address(reach.address_kind)
    if not address:
        kind = reach.address_kind or "public or private"
        raise HostError(
            "%s has no %s address (it is %s)" % (instance.label, kind, instance.state),
            "start it: runctl aws start %s --wait" % instance.id
            if instance.state != "running"
            else "pass --address private (or public) to choose another",
        )
    return SshTransport(Dest(host=address, user=reach.user), identity=reach.identity, host_key_alias=instance.id)


# ---- the provider ----------------------------------------------------------------------------------


class AwsProvider(SshProvider):
    """`runctl aws train`: the SSH pipeline to an EC2 instance, with the instance's life around it."""

    name = "aws"
    syncs_code = True
    missing: Mapping[str, Missing] = MappingProxyType({})
    capabilities = ("stop", "terminate", "spot", "tags")

    def instances(self, region: str | None) -> Ec2Instances:
        return Ec2Instances(region or None)

    def check(self, request: StartRequest) -> None:
        options = request.options
        if options.get("on_end", "none") not in ON_END_CHOICES:
            raise UsageError(
                "invalid --on-end %r" % options.get("on_end"), "use one of: %s" % ", ".join(ON_END_CHOICES)
            )
        for path in options.get("data") or []:
            if not Path(path).exists():
                raise UsageError("--data %s does not exist" % path, "pass an existing local file or directory")
        cloud = self.instances(options.get("region"))
        instance = options.get("instance_obj") or cloud.find(str(options["instance"]))
        options["instance_obj"], options["region"] = instance, cloud.region
        reach_for(instance, None, options)  # -i checked before anything is recorded

    def acquire(self, request: StartRequest) -> tuple[Host, bool]:
        from ..store import Store

        options = request.options
        cloud = self.instances(options.get("region"))
        instance: Instance = options["instance_obj"]
        say = request.say or (lambda message: None)
        if instance.state in ("stopped", "stopping"):
            if not options.get("start"):
                raise HostError(
                    "%s is %s" % (instance.label, instance.state),
                    "start it: runctl aws start %s --wait   (or pass --start)" % instance.id,
                )
            say("starting %s ..." % instance.label)
            cloud.start(instance)
            instance = cloud.wait(instance, "running", CONFIRM_SECONDS)
        elif instance.state == "pending":
            instance = cloud.wait(instance, "running", CONFIRM_SECONDS)
        elif instance.state != "running":
            raise HostError("%s is %s" % (instance.label, instance.state), STATE_HINT_LIST)
        known = Store()
        try:
            remembered = (known.host("aws:" + instance.id) or {}).get("info")
        finally:
            known.close()
        reach = reach_for(instance, remembered, options)
        options["instance_obj"], options["reach"] = instance, reach
        if options.get("start") and options.get("wait_ssh", True):
            wait_ssh(transport_to(instance, reach), CONFIRM_SECONDS)
        self.arrange_end(cloud, instance, options, say, bool(request.checkpoint_s3))
        host = host_of(instance, reach)
        return host, bool(options.get("created"))

    def arrange_end(
        self, cloud: Ec2Instances, instance: Instance, options: dict[str, Any], say: Any, checkpoint_s3: bool = False
    ) -> None:
        """Make the agent's power-off end the bill the safe way: it may terminate only with proof.

        Without --checkpoint-s3 the host cannot prove that its checkpoints are safe off it, so its own
        power-off must become a stop: the shutdown behaviour is set to `stop` for a run that asks for
        an end, and the controller, once it has pulled and verified the checkpoints, terminates.
        With it, a terminate's power-off may terminate: the agent powers off only once its uploader
        has verified every checkpoint in S3 (the `checkpoints_in_s3` proof).
        """
        if options.get("on_end", "none") == "none":
            return
        wanted = host_power_off_becomes(str(options.get("on_end")), checkpoint_s3)
        if cloud.shutdown_behaviour(instance) != wanted:
            cloud.set_shutdown_behaviour(instance, wanted)
            if wanted == "stop":
                say("%s: its own power-off now stops it (terminate needs the checkpoints safe)" % instance.id)
            else:
                say(
                    "%s: its own power-off now terminates it; the host powers off only once every checkpoint"
                    " is verified in S3" % instance.id
                )

    def transport(self, host: Host, request: StartRequest) -> Transport:
        return transport_to(request.options["instance_obj"], request.options["reach"])

    def place(self, transport: Transport, spec: RunSpec, request: StartRequest) -> None:
        super().place(transport, spec, request)
        instance: Instance = request.options["instance_obj"]
        if instance.managed and instance.tags.get(tags.IDLE_STOP, "off") != "off":
            spec.watchdog = {"idle_stop": instance.tags[tags.IDLE_STOP], "notify": list(spec.notify)}
        if instance.lifecycle == "spot":
            from ..spotresume import spot_block

            spec.spot = spot_block()
        for key in ("attempt", "auto_resume", "resumed_from"):
            if request.options.get(key) is not None:
                setattr(spec, key, request.options[key])

    def placement(self, request: StartRequest, root: Path, script: Path) -> Placement:
        return super().placement(request, root, script)

    def on_end(self, request: StartRequest) -> dict[str, Any]:
        action = request.options.get("on_end", "none")
        if action == "none":
            return default_on_end()
        if host_power_off_becomes(action, bool(request.checkpoint_s3)) == "terminate":
            # The host can hold the proof itself: its uploader verified every checkpoint in S3. It
            # powers off only then (proof required), so its terminate never loses a checkpoint.
            return {
                "command": None,
                "poweroff": True,
                "action": action,
                "becomes": "terminate",
                "after": ["checkpoints_in_s3"],
                "proof_required": True,
                "controller_grace": CONTROLLER_GRACE,
            }
        return {
            "command": None,
            "poweroff": True,  # the host's own power-off (agent/watchdog.default_poweroff_cmd)
            "action": action,
            # What that power-off becomes (the shutdown behaviour `arrange_end` set): a stop, as
            # the host cannot prove its checkpoints safe off it; only a controller terminates.
            "becomes": "stop",
            "after": ["checkpoints_in_place"],
            "controller_grace": CONTROLLER_GRACE,
        }

    def end_action(self, row: dict[str, Any]) -> str:
        action = ((row.get("spec") or {}).get("on_end") or {}).get("action") or "none"
        return str(action) if action in ON_END_CHOICES else "none"

    def release(self, host: Host, action: str) -> Host:
        if action == "none":
            return host
        cloud = self.instances(host.region)
        try:
            instance = cloud.get(host.id)
        except UsageError:
            host.state = "terminated"
            return host
        seen = cloud.end_billing(instance, action)
        host.state = seen.state
        return host

    def host_gone(self, row: dict[str, Any], stored: Mapping[str, Any]) -> dict[str, Any] | None:
        """Why a run's instance stopped answering, for the controller (see `unreachable_verdict`)."""
        seen = self.host_state(row, stored)
        if seen is None:
            return None
        on_end = (row.get("spec") or {}).get("on_end") or {}
        lifecycle = str((stored.get("info") or {}).get("lifecycle") or "on-demand")
        return unreachable_verdict(str(stored["host_id"]), seen[0], seen[1], lifecycle, bool(on_end.get("poweroff")))

    def record_run(self, stored: Mapping[str, Any], row: dict[str, Any]) -> None:
        """The run's metadata in the instance's tags (seed 002), read back by `aws status`."""
        cloud = self.instances(stored.get("region"))
        write_run_metadata(cloud, cloud.get(str(stored["host_id"])), run_metadata(row))

    def flag_release_failed(self, stored: Mapping[str, Any], message: str) -> None:
        """Tag the instance so `aws list` flags it: its bill may still be running."""
        cloud = self.instances(stored.get("region"))
        cloud.ec2.call(
            "create_tags",
            Resources=[str(stored["host_id"])],
            Tags=tags.as_list({tags.RELEASE_FAILED: "true"}),
        )

    def host_state(self, row: dict[str, Any], stored: Mapping[str, Any] | None) -> tuple[str, str | None] | None:
        """The instance's state and its reason, for a run whose host stopped answering."""
        if stored is None:
            return None
        try:
            instance = self.instances(stored.get("region")).get(str(stored["host_id"]))
        except (UsageError, HostError):
            return None
        return instance.state, instance.state_reason


def host_power_off_becomes(action: str, checkpoint_s3: bool) -> str:
    """What the host's own power-off becomes (the shutdown behaviour runctl sets). Pure.

    A terminate only when asked for and the host can prove its checkpoints safe by itself (verified
    in S3); otherwise a stop, which keeps the disk."""
    return "terminate" if action == "terminate" and checkpoint_s3 else "stop"


GONE_STATES = ("stopping", "stopped", "shutting-down", "terminated")


def unreachable_verdict(
    instance_id: str, state: str, reason: str | None, lifecycle: str, powers_off: bool
) -> dict[str, Any] | None:
    """What an instance's state says of a run on it that stopped answering. Pure.

    None while it runs (a network problem: keep trying). Stopped by its own power-off (the agent's
    end-of-run step, `Client.InstanceInitiatedShutdown`): a notice only, as the run dir on its disk
    still says how the run ended. Stopped or terminated from outside (the API, the console, a spot
    reclaim): the run is over, `interrupted`, with the state's reason.
    """
    if state not in GONE_STATES:
        return None
    why = reason or "no reason given"
    ended = "terminated" if state in ("shutting-down", "terminated") else "stopped"
    if "InstanceInitiatedShutdown" in why:
        if ended == "stopped":
            return {
                "state": state,
                "message": "the instance %s itself%s; start it to read how the run ended: "
                "runctl aws start %s --wait" % (ended, " after the run" if powers_off else "", instance_id),
            }
        return {
            "state": state,
            "status": "lost",
            "termination_status": "lost",
            "message": "instance %s terminated itself (%s); the run's end cannot be read" % (instance_id, why),
        }
    if "Spot" in why or (lifecycle == "spot" and "Server." in why):
        return {
            "state": state,
            "status": "interrupted",
            "termination_status": "spot_interruption",
            "message": "spot instance %s was %s by EC2 (%s)" % (instance_id, ended, why),
        }
    return {
        "state": state,
        "status": "interrupted",
        "termination_status": "lost",
        "message": "instance %s was %s from outside (%s)" % (instance_id, ended, why),
    }


def run_metadata(row: Mapping[str, Any]) -> dict[str, Any]:
    """The run's metadata kept on its instance (seed 002): id, script, args, status, checkpoint, times."""
    spec = row.get("spec") or {}
    state = row.get("state") or {}
    return {
        "run_id": row["run_id"],
        "script": spec.get("script"),
        "args": spec.get("script_args") or [],
        "status": row.get("status"),
        "termination_status": row.get("termination_status"),
        "last_checkpoint": state.get("last_checkpoint"),
        "started_at": row.get("started_at"),
        "ended_at": row.get("ended_at"),
    }


def write_run_metadata(cloud: Ec2Instances, instance: Instance, metadata: Mapping[str, Any]) -> None:
    """Chunked into tags of at most 256 characters; the old chunks are removed before the new are
    written, so a shorter value never leaves a stale tail, and the whole stays within 50 tags."""
    new = tags.metadata_tags(dict(metadata), instance.tags)
    stale = tags.stale_metadata_keys(instance.tags, new)
    cloud.put_tags(instance, new, remove=stale)


def latest_run(store: Any, ref: str, region: str | None) -> tuple[str, dict[str, Any]]:
    """(instance id, the latest run started on it) for `aws monitor` and `checkpoint list
    --instance-id`; an instance id needs no cloud call, a Name tag is looked up."""
    instance_id = ref if is_instance_id(ref) else Ec2Instances(region).find(ref).id
    row = store.latest_run_on("aws:" + instance_id)
    if row is None:
        named = instance_id if ref == instance_id else "%s (%s)" % (ref, instance_id)
        raise UsageError("no runs on %s" % named, "start one: runctl aws train %s SCRIPT" % ref)
    return instance_id, row


def host_of(instance: Instance, reach: Reach) -> Host:
    from .ec2prices import on_demand_price

    price, source = on_demand_price(instance.type, instance.region)
    info = {
        "ssh_user": reach.user,
        "identity": reach.identity,
        "address_kind": reach.address_kind,
        "name": instance.name,
        "lifecycle": instance.lifecycle,
        "price_source": source,
        "managed": instance.managed,
    }
    return Host(
        "aws",
        instance.id,
        instance.address(reach.address_kind) or "",
        instance.region,
        instance.type,
        price,
        instance.state,
        info,
    )


def wait_ssh(transport: SshTransport, timeout: float) -> None:
    """Until the instance answers over SSH (its sshd starts after `running`); HostError past the timeout."""
    deadline = time.monotonic() + timeout
    refused_since: float | None = None
    while True:
        try:
            transport.run("true", timeout=10)
            return
        except HostError as exc:
            # A fresh instance may refuse the key until cloud-init has installed it; a refusal
            # that lasts is a wrong key or user, not worth waiting the whole timeout for.
            if exc.message.startswith("authentication failed"):
                refused_since = refused_since or time.monotonic()
            else:
                refused_since = None
            if time.monotonic() >= deadline or (
                refused_since is not None and time.monotonic() - refused_since >= AUTH_GRACE
            ):
                raise HostError(
                    "%s does not answer over SSH: %s" % (transport.dest, exc.message),
                    exc.hint or "check its security group allows SSH from here",
                ) from None
        time.sleep(POLL_SECONDS)
