"""`runctl aws create`: one EC2 instance made the way an ML engineer who pays for GPUs wants it.

Everything is checked before anything is made (type, image, key pair, subnet, security group,
prices), so a bad flag creates nothing. Then, in this order: the key pair (`--ssh-key`, imported
once under a name derived from its fingerprint), the SSH security group (`--ssh-from`), and the
instance; the instance id goes into the store the moment RunInstances answers, before anything
else can fail. Everything made is tagged (`runctl:managed`, who made it, how to reach it, the
idle-stop), SSH is never opened to 0.0.0.0/0 unless asked, and the shutdown behaviour is set so a
power-off inside the host ends the bill with no credentials there. With `--wait` the host's
watchdog is started over SSH, so a forgotten instance stops itself after `--idle-stop`.

A failure after the launch says what exists and how to terminate it; Ctrl-C during create
terminates what it made.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import ipaddress
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.durations import parse_duration
from ..core.errors import CloudError, HostError, Interrupted, RunctlError, UsageError
from . import ec2tags as tags
from .aws import Ec2Instances, Instance, Prices, Reach, observe, transport_to, wait_ssh

# The newest GPU Deep Learning AMI on Ubuntu (NVIDIA driver, CUDA, Docker), as AWS names them.
DEFAULT_IMAGE_PATTERN = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
IMAGE_OWNERS = ["self", "amazon"]
DEFAULT_IDLE_STOP = "15m"
ADDRESS_KINDS = ("public", "private")
ON_SHUTDOWN = ("stop", "terminate")
SPOT_FALLBACKS = ("on-demand", "none")
WAIT_SECONDS = 900.0  # running, then SSH: a GPU image boots in 1-3 minutes
KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")
DEFAULT_PUBLIC_KEYS = ("~/.ssh/id_ed25519.pub", "~/.ssh/id_rsa.pub", "~/.ssh/id_ecdsa.pub")
SSH_GROUP_PREFIX = "runctl-ssh-"


@dataclass
class CreateRequest:
    """The flags of `runctl aws create`, as given."""

    instance_type: str
    ami: str | None = None
    image_name: str | None = None
    spot: bool = False
    max_price: float | None = None
    spot_fallback: str = "none"
    key_name: str | None = None
    ssh_key: str | None = None
    ssh_user: str = "ubuntu"
    subnet: str | None = None
    security_group: str | None = None
    ssh_from: str | None = None
    private_ip: str | None = None
    address: str | None = None
    volume_size: int | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    idle_stop: str = DEFAULT_IDLE_STOP
    on_shutdown: str = "stop"
    identity: str | None = None
    wait: bool = False
    region: str | None = None


@dataclass
class Plan:
    """What create will make, resolved and checked; nothing exists yet."""

    request: CreateRequest
    image_id: str
    image_name: str
    root_device: str | None
    key_name: str
    import_key: bytes | None  # public key material to import as `key_name`, when not imported yet
    identity: str | None
    subnet: str | None
    vpc: str | None
    security_group: str | None
    group_to_create: str | None  # the CIDR an SSH group is to be made for
    group_name: str | None
    address: str
    idle_stop_seconds: float | None
    user_tags: dict[str, str]
    max_price: float | None


@dataclass
class Made:
    """What this create has made so far: undone on Ctrl-C, named when a later step fails."""

    key_pair: str | None = None
    security_group: str | None = None
    instance: Instance | None = None


# ---- checking the request (nothing made) ---------------------------------------------------------


def check_local(request: CreateRequest) -> None:
    """Flags checked without asking AWS: combinations, files, values."""
    if not request.instance_type or not request.instance_type.strip():
        raise UsageError("--instance-type is empty", "pass one, e.g. --instance-type g5.xlarge")
    if request.ami and request.image_name:
        raise UsageError("--ami and --image-name both given", "pass one: an AMI id, or a name pattern to look up")
    if request.key_name and request.ssh_key:
        raise UsageError("--key-name and --ssh-key both given", "pass one: an existing key pair, or a public key")
    if request.security_group and request.ssh_from:
        raise UsageError(
            "--security-group and --ssh-from both given",
            "--ssh-from makes a group allowing SSH from that range; with your own group, leave it out",
        )
    if request.max_price is not None and not request.spot:
        raise UsageError("--max-price without --spot", "add --spot, or leave --max-price out")
    for flag, value, choices in (
        ("--address", request.address, ADDRESS_KINDS),
        ("--on-shutdown", request.on_shutdown, ON_SHUTDOWN),
        ("--spot-fallback", request.spot_fallback, SPOT_FALLBACKS),
    ):
        if value is not None and value not in choices:
            raise UsageError("invalid %s %r" % (flag, value), "use one of: %s" % ", ".join(choices))
    if request.volume_size is not None and not 1 <= request.volume_size <= 65536:
        raise UsageError("--volume-size %d is out of range" % request.volume_size, "pass GB between 1 and 65536")
    if request.identity and not Path(request.identity).expanduser().is_file():
        raise UsageError("identity file %s does not exist" % request.identity, "pass the path of a private key with -i")
    if request.private_ip:
        try:
            ipaddress.IPv4Address(request.private_ip)
        except ValueError:
            raise UsageError(
                "invalid --private-ip %r" % request.private_ip, "pass an IPv4 address, e.g. 10.0.1.20"
            ) from None
    if request.ssh_from:
        ssh_from_network(request.ssh_from)
    if not request.ssh_user or any(c.isspace() for c in request.ssh_user) or request.ssh_user.startswith("-"):
        raise UsageError("invalid --ssh-user %r" % request.ssh_user, "pass the image's login user, e.g. ubuntu")
    idle_stop_seconds(request.idle_stop)
    for text in request.tags:
        key, _ = tags.parse_user_tag(text)
        if key == "Name":
            raise UsageError("--tag Name=... given", "use --name NAME instead")


def idle_stop_seconds(text: str) -> float | None:
    if text.strip().lower() == "off":
        return None
    seconds = parse_duration(text, "--idle-stop")
    if seconds <= 0:
        raise UsageError("--idle-stop must be positive, got %r" % text, "pass a duration like 15m, or off")
    return seconds


def ssh_from_network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise UsageError(
            "invalid --ssh-from %r" % text, "pass an address range, e.g. --ssh-from 203.0.113.7/32 (your address)"
        ) from None


def read_public_key(path: str) -> tuple[bytes, str]:
    """The public key's text and its short fingerprint (hex of the SHA-256 of its key blob)."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError("cannot read --ssh-key %s: %s" % (path, getattr(exc, "strerror", None) or exc), None) from None
    fields = text.split()
    if "PRIVATE KEY" in text:
        raise UsageError("--ssh-key %s is a private key" % path, "pass its public half: %s.pub" % path)
    if len(fields) < 2 or fields[0] not in KEY_TYPES:
        raise UsageError(
            "--ssh-key %s is not an OpenSSH public key" % path, "pass a .pub file, e.g. ~/.ssh/id_ed25519.pub"
        )
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except ValueError:
        raise UsageError("--ssh-key %s is not an OpenSSH public key" % path, "pass a .pub file") from None
    return (" ".join(fields[:2]) + "\n").encode(), hashlib.sha256(blob).hexdigest()[:16]


def plan(cloud: Ec2Instances, request: CreateRequest, say: Callable[[str], None]) -> Plan:
    """Resolve and check every flag against AWS (describe calls only): the plan, or a UsageError."""
    ec2 = cloud.ec2
    ec2.call("describe_instance_types", InstanceTypes=[request.instance_type])
    image = find_image(cloud, request, say)
    root = image.get("RootDeviceName")
    if request.volume_size is not None:
        snapshot = next(
            (
                (m.get("Ebs") or {}).get("VolumeSize")
                for m in image.get("BlockDeviceMappings") or []
                if m.get("DeviceName") == root
            ),
            None,
        )
        if snapshot and request.volume_size < int(snapshot):
            raise UsageError(
                "--volume-size %d is smaller than the image's %d GB root disk" % (request.volume_size, snapshot),
                "pass --volume-size %d or more" % snapshot,
            )
    if request.name:
        taken = [i for i in cloud.describe(Filters=[{"Name": "tag:Name", "Values": [request.name]}])
                 if i.state not in ("terminated", "shutting-down")]  # fmt: skip
        if taken:
            raise UsageError(
                "an instance named %r exists already: %s" % (request.name, ", ".join(i.id for i in taken)),
                "pick another --name (names find instances: runctl aws status NAME)",
            )
    key_name, material, identity = choose_key(cloud, request, say)
    subnet, vpc = choose_subnet(cloud, request)
    group, to_create, group_name = choose_group(cloud, request, vpc, say)
    address = request.address or ("private" if request.private_ip else "public")
    user_tags = dict(tags.parse_user_tag(text) for text in request.tags)
    max_price = None
    if request.spot:
        from .. import paths
        from .aws import pricing_client
        from .ec2prices import spot_max_price

        max_price = spot_max_price(
            request.instance_type, cloud.region, request.max_price, pricing_client, str(paths.home())
        )
    return Plan(
        request, str(image["ImageId"]), str(image.get("Name") or ""), root, key_name, material, identity,
        subnet, vpc, group, to_create, group_name, address, idle_stop_seconds(request.idle_stop), user_tags,
        max_price,
    )  # fmt: skip


def find_image(cloud: Ec2Instances, request: CreateRequest, say: Callable[[str], None]) -> dict[str, Any]:
    if request.ami:
        if not request.ami.startswith("ami-"):
            raise UsageError("invalid --ami %r" % request.ami, "an AMI id looks like ami-0123456789abcdef0")
        images = cloud.ec2.call("describe_images", ImageIds=[request.ami]).get("Images") or []
        if not images:
            raise UsageError(
                "no AMI %s in %s" % (request.ami, cloud.region), "AMI ids differ per region: pass --region"
            )
        return dict(images[0])
    pattern = request.image_name or DEFAULT_IMAGE_PATTERN
    images = (
        cloud.ec2.call(
            "describe_images",
            Owners=IMAGE_OWNERS,
            Filters=[{"Name": "name", "Values": [pattern]}, {"Name": "state", "Values": ["available"]}],
        ).get("Images")
        or []
    )
    if not images:
        raise UsageError(
            "no image named %r in %s (owners: yours and Amazon's)" % (pattern, cloud.region),
            "pass another --image-name PATTERN (wildcards: *), or --ami ami-...",
        )
    newest = max(images, key=lambda image: str(image.get("CreationDate") or ""))
    if not request.image_name:
        say("image: %s (%s), the newest GPU Deep Learning AMI" % (newest["ImageId"], newest.get("Name")))
    return dict(newest)


def choose_key(
    cloud: Ec2Instances, request: CreateRequest, say: Callable[[str], None]
) -> tuple[str, bytes | None, str | None]:
    """(key pair name, public key to import or None, private key path or None)."""
    identity = str(Path(request.identity).expanduser().resolve()) if request.identity else None
    if request.key_name:
        cloud.ec2.call("describe_key_pairs", KeyNames=[request.key_name])
        return request.key_name, None, identity
    public = request.ssh_key
    if public is None:
        public = next((p for p in DEFAULT_PUBLIC_KEYS if Path(p).expanduser().is_file()), None)
        if public is None:
            raise UsageError(
                "no SSH key for the instance",
                "pass --ssh-key ~/.ssh/id_ed25519.pub (imported once), or --key-name NAME of an existing key pair",
            )
        say("ssh key: %s (pass --ssh-key or --key-name to choose another)" % public)
    material, short = read_public_key(public)
    name = "runctl-%s" % short
    if identity is None:
        path = Path(public).expanduser()
        private = path.with_suffix("") if path.suffix == ".pub" else None
        if private is not None and private.is_file():
            identity = str(private.resolve())
        else:
            say("warning: no private key next to %s; pass -i PRIVATE_KEY to later commands" % public)
    found = cloud.ec2.call("describe_key_pairs", Filters=[{"Name": "key-name", "Values": [name]}])
    if any(pair.get("KeyName") == name for pair in found.get("KeyPairs") or []):
        return name, None, identity
    return name, material, identity


def choose_subnet(cloud: Ec2Instances, request: CreateRequest) -> tuple[str | None, str | None]:
    """(subnet id, VPC id): the given subnet, the one holding --private-ip, or the default VPC's choice."""
    ip = ipaddress.IPv4Address(request.private_ip) if request.private_ip else None
    if request.subnet:
        subnets = cloud.ec2.call("describe_subnets", SubnetIds=[request.subnet]).get("Subnets") or []
        if not subnets:
            raise UsageError("no subnet %s in %s" % (request.subnet, cloud.region), "pass a subnet of this region")
        subnet = subnets[0]
        if ip is not None and ip not in ipaddress.ip_network(str(subnet["CidrBlock"])):
            raise UsageError(
                "--private-ip %s is not in subnet %s (%s)" % (ip, request.subnet, subnet["CidrBlock"]),
                "pick an address in that range, or leave --subnet out to use the subnet that holds it",
            )
        return str(subnet["SubnetId"]), str(subnet["VpcId"])
    if ip is not None:
        for subnet in cloud.ec2.paginate("describe_subnets", "Subnets"):
            if ip in ipaddress.ip_network(str(subnet["CidrBlock"])):
                return str(subnet["SubnetId"]), str(subnet["VpcId"])
        raise UsageError("no subnet in %s holds --private-ip %s" % (cloud.region, ip), "pass --subnet subnet-...")
    vpcs = cloud.ec2.call("describe_vpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}]).get("Vpcs") or []
    if not vpcs:
        raise UsageError("%s has no default VPC" % cloud.region, "pass --subnet subnet-... of one of your VPCs")
    return None, str(vpcs[0]["VpcId"])


def choose_group(
    cloud: Ec2Instances, request: CreateRequest, vpc: str | None, say: Callable[[str], None]
) -> tuple[str | None, str | None, str | None]:
    """(group id or None, CIDR of a group to create or None, its name): SSH is opened only as asked."""
    ec2 = cloud.ec2
    if request.security_group:
        groups = ec2.call("describe_security_groups", GroupIds=[request.security_group]).get("SecurityGroups") or []
        if not groups:
            raise UsageError("no security group %s" % request.security_group, "pass a group of the subnet's VPC")
        if vpc and groups[0].get("VpcId") and groups[0]["VpcId"] != vpc:
            raise UsageError(
                "security group %s is in %s, the subnet in %s" % (request.security_group, groups[0]["VpcId"], vpc),
                "pass a group of the same VPC",
            )
        return request.security_group, None, None
    vpc_filter = [{"Name": "vpc-id", "Values": [vpc]}] if vpc else []
    if request.ssh_from:
        cidr = ssh_from_network(request.ssh_from)
        if cidr in ("0.0.0.0/0", "::/0"):
            say("warning: --ssh-from %s opens SSH to the whole internet" % cidr)
        name = SSH_GROUP_PREFIX + cidr.replace("/", "_").replace(":", "-")
        found = (
            ec2.call("describe_security_groups", Filters=[{"Name": "group-name", "Values": [name]}, *vpc_filter]).get(
                "SecurityGroups"
            )
            or []
        )
        for group in found:
            if tags.as_dict(group.get("Tags")).get(tags.MANAGED) == "true":
                return str(group["GroupId"]), None, name
        return None, cidr, name
    found = (
        ec2.call("describe_security_groups", Filters=[{"Name": "group-name", "Values": ["default"]}, *vpc_filter]).get(
            "SecurityGroups"
        )
        or []
    )
    if not found:
        raise UsageError("no default security group in %s" % (vpc or cloud.region), "pass --security-group sg-...")
    group = str(found[0]["GroupId"])
    say(
        "security group: %s, the default group of %s (no SSH rule added; --ssh-from YOUR_IP/32 opens SSH from"
        " one address)" % (group, vpc or "the default VPC")
    )
    return group, None, None


# ---- making it ---------------------------------------------------------------------------------


def created_by() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no login name (a container without /etc/passwd entry)
        user = "unknown"
    return "%s@%s" % (user, socket.gethostname())


def runctl_tags(plan: Plan) -> dict[str, str]:
    request = plan.request
    values = {
        tags.MANAGED: "true",
        tags.CREATED_BY: created_by(),
        tags.IDLE_STOP: "off" if plan.idle_stop_seconds is None else request.idle_stop.strip(),
        tags.ON_SHUTDOWN: request.on_shutdown,
        tags.SSH_USER: request.ssh_user,
        tags.ADDRESS: plan.address,
        **plan.user_tags,
    }
    if plan.identity:
        values[tags.KEY_FILE] = plan.identity
    if request.name:
        values["Name"] = request.name
    return values


def tag_spec(resource: str, values: dict[str, str]) -> list[dict[str, Any]]:
    return [{"ResourceType": resource, "Tags": tags.as_list(values)}]


def launch_params(plan: Plan, values: dict[str, str], spot: bool) -> dict[str, Any]:
    request = plan.request
    params: dict[str, Any] = {
        "ImageId": plan.image_id,
        "InstanceType": request.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "KeyName": plan.key_name,
        "InstanceInitiatedShutdownBehavior": request.on_shutdown,
        "TagSpecifications": tag_spec("instance", values) + tag_spec("volume", values),
        "ClientToken": uuid.uuid4().hex,  # a retried call never launches a second instance
    }
    if plan.subnet:
        params["SubnetId"] = plan.subnet
    if plan.security_group:
        params["SecurityGroupIds"] = [plan.security_group]
    if request.private_ip:
        params["PrivateIpAddress"] = request.private_ip
    if request.volume_size is not None and plan.root_device:
        params["BlockDeviceMappings"] = [
            {
                "DeviceName": plan.root_device,
                "Ebs": {"VolumeSize": request.volume_size, "VolumeType": "gp3", "DeleteOnTermination": True},
            }
        ]
    if spot:
        stop = request.on_shutdown == "stop"
        # A one-time spot instance cannot be stopped: one that must stop on power-off is persistent.
        params["InstanceMarketOptions"] = {
            "MarketType": "spot",
            "SpotOptions": {
                "MaxPrice": "%.5f" % (plan.max_price or 0.0),
                "SpotInstanceType": "persistent" if stop else "one-time",
                "InstanceInterruptionBehavior": "stop" if stop else "terminate",
            },
        }
    return params


def make(cloud: Ec2Instances, plan: Plan, made: Made, say: Callable[[str], None]) -> tuple[Instance, bool]:
    """Key pair, SSH group, then the instance; (instance, whether spot fell back to on-demand).

    A failed launch removes the key pair and group this call made (they would only clutter).
    """
    from .ec2api import CAPACITY_CODES

    values = runctl_tags(plan)
    resource_tags = {k: v for k, v in values.items() if k in (tags.MANAGED, tags.CREATED_BY)}
    ec2 = cloud.ec2
    if plan.import_key is not None:
        ec2.call(
            "import_key_pair",
            KeyName=plan.key_name,
            PublicKeyMaterial=plan.import_key,
            TagSpecifications=tag_spec("key-pair", resource_tags),
        )
        made.key_pair = plan.key_name
        say("imported your public key as key pair %s" % plan.key_name)
    if plan.group_to_create is not None:
        assert plan.group_name is not None
        params: dict[str, Any] = {
            "GroupName": plan.group_name,
            "Description": "SSH from %s (runctl)" % plan.group_to_create,
            "TagSpecifications": tag_spec("security-group", {**resource_tags, "Name": plan.group_name}),
        }
        if plan.vpc:
            params["VpcId"] = plan.vpc
        group = str(ec2.call("create_security_group", **params)["GroupId"])
        made.security_group = group
        ranges = "Ipv6Ranges" if ":" in plan.group_to_create else "IpRanges"
        cidr_key = "CidrIpv6" if ranges == "Ipv6Ranges" else "CidrIp"
        ec2.call(
            "authorize_security_group_ingress",
            GroupId=group,
            IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, ranges: [{cidr_key: plan.group_to_create}]}
            ],
        )
        plan.security_group = group
        say("security group %s: SSH (22) from %s only" % (group, plan.group_to_create))
    fell_back = False
    try:
        try:
            with interrupt_after():
                launched(
                    made,
                    values,
                    cloud.region,
                    ec2.call("run_instances", **launch_params(plan, values, plan.request.spot)),
                )
        except CloudError as exc:
            if not plan.request.spot or exc.code not in CAPACITY_CODES:
                raise
            reason = "no spot capacity for %s in %s: %s" % (plan.request.instance_type, cloud.region, exc.message)
            if plan.request.spot_fallback != "on-demand":
                raise CloudError(
                    reason,
                    "retry later, raise --max-price, pick another type or --subnet (zone), or pass"
                    " --spot-fallback on-demand",
                    exc.code,
                ) from None
            say("%s; launching on-demand instead (--spot-fallback on-demand)" % reason)
            with interrupt_after():
                launched(made, values, cloud.region, ec2.call("run_instances", **launch_params(plan, values, False)))
            fell_back = True
    except BaseException:
        if made.instance is None:  # else the instance uses them: released with it (Ctrl-C) or kept
            undo_resources(cloud, made)
        raise
    assert made.instance is not None
    return made.instance, fell_back


def launched(made: Made, values: dict[str, str], region: str, answer: dict[str, Any]) -> None:
    instance = Instance.from_api(answer["Instances"][0], region)
    instance.tags = {**values, **instance.tags}  # RunInstances may answer before the tags are listed
    made.instance = instance


@contextlib.contextmanager
def interrupt_after() -> Iterator[None]:
    """Hold Ctrl-C while RunInstances is in flight: an instance launched unknown to us could not be
    terminated. The interrupt is raised once the call has answered (and the instance is known)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def undo_resources(cloud: Ec2Instances, made: Made) -> None:
    """Remove the security group and key pair this create made (best effort, said when it fails)."""
    if made.security_group:
        try:
            cloud.ec2.call("delete_security_group", GroupId=made.security_group)
            made.security_group = None
        except RunctlError:
            pass
    if made.key_pair:
        try:
            cloud.ec2.call("delete_key_pair", KeyName=made.key_pair)
            made.key_pair = None
        except RunctlError:
            pass


def remember(store: Any, instance: Instance, plan: Plan, prices: Prices) -> None:
    """The store learns the instance and how to reach it: the first thing after RunInstances."""
    observe(
        store,
        instance,
        prices,
        {
            "ssh_user": plan.request.ssh_user,
            "identity": plan.identity,
            "address_kind": plan.address,
            "key_name": plan.key_name,
            "security_group": plan.security_group,
            "created_by": "runctl",
        },
    )


def start_watchdog(instance: Instance, reach: Reach, idle_stop: float | None) -> dict[str, Any]:
    """Bootstrap the agent on the host over SSH and start its watchdog with the idle-stop."""
    from ..agent.watchdog import ensure_args

    transport = transport_to(instance, reach)
    transport.connect()
    answer = transport.agent_json(*ensure_args(idle_stop))
    if not answer.get("ok"):
        raise HostError(
            "could not start the idle watchdog on %s: %s" % (instance.label, answer.get("error")),
            "retry: runctl aws start %s --wait" % instance.id,
        )
    return answer


def create(request: CreateRequest, say: Callable[[str], None], store: Any) -> dict[str, Any]:
    """Check, make, record and (with --wait) bring up one instance; the result as `--output json` shows it."""
    check_local(request)
    made = Made()
    cloud: Ec2Instances | None = None
    try:
        cloud = Ec2Instances(request.region)
        notes: list[str] = []
        the_plan = plan(cloud, request, notes.append)
        for note in notes:  # said once every check has passed: a refused create prints its error only
            say(note)
        prices = Prices(cloud)
        instance, fell_back = make(cloud, the_plan, made, say)
        remember(store, instance, the_plan, prices)
        idle = "off" if the_plan.idle_stop_seconds is None else request.idle_stop
        say(
            "launched %s: %s%s in %s; idle-stop %s%s"
            % (
                instance.label, request.instance_type, " spot" if request.spot and not fell_back else "",
                cloud.region, idle,
                "" if the_plan.idle_stop_seconds is None
                else " (it powers itself off after %s with no run, watched from %s; change with --idle-stop)"
                % (idle, "now on" if request.wait else "--wait or its first run"),
            )
        )  # fmt: skip
        watchdog: dict[str, Any] | None = None
        if request.wait:
            instance, watchdog = bring_up(cloud, instance, the_plan, store, prices, say)
    except KeyboardInterrupt:
        if cloud is None:
            raise Interrupted("create interrupted: nothing was made") from None
        left = release_on_interrupt(cloud, made, store, Prices(cloud, ask_api=False), say)
        raise Interrupted("create interrupted%s" % left[0], left[1]) from None
    except RunctlError as exc:
        if made.instance is None or cloud is None:
            raise
        instance_id = made.instance.id
        try:
            state = cloud.get(instance_id).state
        except RunctlError:
            state = "state unknown"
        exc.message = "%s; instance %s exists (%s)" % (exc.message, instance_id, state)
        exc.hint = "finish its setup: runctl aws start %s --wait, or terminate it: runctl aws terminate %s" % (
            instance_id, instance_id,
        )  # fmt: skip
        raise
    return result_of(instance, the_plan, cloud, prices, fell_back, watchdog)


def bring_up(
    cloud: Ec2Instances, instance: Instance, plan: Plan, store: Any, prices: Prices, say: Callable[[str], None]
) -> tuple[Instance, dict[str, Any] | None]:
    """Running, answering over SSH, and (unless idle-stop is off) watched: the `--wait` of create and start."""
    deadline = time.monotonic() + WAIT_SECONDS
    say("waiting for %s to run ..." % instance.id)
    instance = cloud.wait(instance, "running", WAIT_SECONDS)
    observe(store, instance, prices)
    reach = Reach(plan.request.ssh_user, plan.identity, plan.address)
    say("waiting for SSH on %s ..." % instance.address(plan.address))
    wait_ssh(transport_to(instance, reach), max(1.0, deadline - time.monotonic()))
    return instance, arm_watchdog(instance, reach, plan.idle_stop_seconds, say)


def arm_watchdog(
    instance: Instance, reach: Reach, idle_stop: float | None, say: Callable[[str], None]
) -> dict[str, Any] | None:
    if idle_stop is None:
        say("idle watchdog: off (--idle-stop off): stop it yourself: runctl aws stop %s" % instance.id)
        return None
    answer = start_watchdog(instance, reach, idle_stop)
    say("idle watchdog on %s: powers off after %s with no run" % (instance.id, instance.tags.get(tags.IDLE_STOP)))
    return answer


def release_on_interrupt(
    cloud: Ec2Instances, made: Made, store: Any, prices: Prices, say: Callable[[str], None]
) -> tuple[str, str | None]:
    """Ctrl-C during create: terminate the instance it made (confirmed), then its group and key pair.

    Returns what is left, for the message: (" ...", hint)."""
    if made.instance is None:
        undo_resources(cloud, made)
        return ": nothing was launched", None
    instance_id = made.instance.id
    say("interrupted: terminating %s, which this create launched ..." % instance_id)
    try:
        seen = cloud.end_billing(made.instance, "terminate")
        observe(store, seen, prices)
    except (RunctlError, KeyboardInterrupt) as exc:
        detail = exc.message if isinstance(exc, RunctlError) else "interrupted again"
        return (
            "; %s could not be terminated (%s)" % (instance_id, detail),
            "terminate it: runctl aws terminate %s" % instance_id,
        )
    undo_resources(cloud, made)
    return "; %s, which it launched, is %s" % (instance_id, seen.state), None


def result_of(
    instance: Instance,
    plan: Plan,
    cloud: Ec2Instances,
    prices: Prices,
    fell_back: bool,
    watchdog: dict[str, Any] | None,
) -> dict[str, Any]:
    price, source = prices.of(instance)
    request = plan.request
    return {
        "instance_id": instance.id,
        "name": request.name or "",
        "state": instance.state,
        "instance_type": request.instance_type,
        "region": cloud.region,
        "availability_zone": instance.availability_zone,
        "lifecycle": instance.lifecycle if not fell_back else "on-demand",
        "spot_fallback_used": fell_back,
        "max_price": plan.max_price,
        "image_id": plan.image_id,
        "image_name": plan.image_name,
        "key_name": plan.key_name,
        "subnet": plan.subnet,
        "security_group": plan.security_group,
        "private_ip": instance.private_ip,
        "public_ip": instance.public_ip,
        "address": plan.address,
        "ssh_user": request.ssh_user,
        "identity": plan.identity,
        "idle_stop": "off" if plan.idle_stop_seconds is None else request.idle_stop,
        "on_shutdown": request.on_shutdown,
        "hourly_price": price,
        "price_source": source,
        "watchdog": watchdog,
        "tags": instance.tags,
    }
