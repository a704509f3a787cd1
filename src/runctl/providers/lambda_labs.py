"""The Lambda Labs provider: instances launched, reached over SSH, and terminated, proven gone.

Lambda instances cannot be stopped, only terminated, so a forgotten one is pure loss. Hence:
the id a launch returns is in the store before anything else happens (a crash after it, a rate
limit included, never forgets the instance); a launch or setup that fails, or a Ctrl-C, terminates
what it launched; terminate is retried and confirmed by reading the instance back until it is
`terminated`; and the end of a run is the controller's (`ending.release_proven`): checkpoints pulled
and verified, then terminate. The host has no API key (unless the user opts in), so it never ends
its own bill; an unproven end keeps the instance and says so with the command that terminates it.

Training is the SSH provider's pipeline to the instance's `ip`. The API client is `lambda_api`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..core.errors import CloudError, HostError, RunctlError, UsageError
from ..core.spec import RunSpec
from ..transport.base import Transport
from ..transport.ssh import Dest, SshTransport
from .base import STOP_HOST, Host, Missing, StartRequest
from .ssh import SshProvider

if TYPE_CHECKING:
    from .lambda_api import LambdaApi

NAME = "lambda"
LIVE_STATES = ("booting", "active", "unhealthy", "terminating")
GONE_STATES = ("terminated", "preempted")
MANAGED_TAG = "runctl-managed"  # on instances runctl launched: only those are terminated unasked
PROTECT_TAG = "runctl-protect"  # "true": never swept, whoever launched it
LAUNCH_TAG = "runctl-launch"  # a token per launch, to find an instance whose launch answer was lost
DEFAULT_SSH_USER = "ubuntu"
ACTIVE_SECONDS = 900.0  # booting -> active takes minutes on Lambda
SSH_SECONDS = 300.0
CONFIRM_SECONDS = 300.0
POLL_SECONDS = 2.0
POLL_ENV = "RUNCTL_LAMBDA_POLL"  # seconds between reads while waiting (tests shorten it)
PRICE_SOURCE = "Lambda API price_cents_per_hour"
ON_END_CHOICES = ("none", "terminate")

CANNOT_STOP = Missing(
    "Lambda instances cannot be stopped, only terminated",
    "terminate it: runctl lambda terminate {instance_id}",
)


def poll_seconds() -> float:
    import os

    try:
        return max(0.05, float(os.environ.get(POLL_ENV) or POLL_SECONDS))
    except ValueError:
        return POLL_SECONDS


@dataclass
class LambdaInstance:
    """One Lambda instance as runctl sees it (GET /instances/{id})."""

    id: str
    status: str
    type: str
    region: str
    name: str = ""
    ip: str | None = None
    private_ip: str | None = None
    price_cents: int | None = None
    gpus: int | None = None
    gpu_description: str = ""
    ssh_key_names: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> LambdaInstance:
        kind = data.get("instance_type") or {}
        price = kind.get("price_cents_per_hour")
        return cls(
            id=str(data["id"]),
            status=str(data.get("status") or "unknown"),
            type=str(kind.get("name") or ""),
            region=str((data.get("region") or {}).get("name") or ""),
            name=str(data.get("name") or ""),
            ip=data.get("ip") or None,
            private_ip=data.get("private_ip") or None,
            price_cents=int(price) if isinstance(price, (int, float)) else None,
            gpus=(kind.get("specs") or {}).get("gpus"),
            gpu_description=str(kind.get("gpu_description") or ""),
            ssh_key_names=list(data.get("ssh_key_names") or []),
            tags={str(t.get("key")): str(t.get("value")) for t in data.get("tags") or [] if isinstance(t, dict)},
        )

    @property
    def hourly_price(self) -> float | None:
        """Dollars per hour (the API's cents / 100)."""
        return None if self.price_cents is None else self.price_cents / 100.0

    @property
    def managed(self) -> bool:
        return self.tags.get(MANAGED_TAG) == "true"

    @property
    def protected(self) -> bool:
        return self.tags.get(PROTECT_TAG) == "true"

    @property
    def label(self) -> str:
        return "%s (%s)" % (self.id, self.name) if self.name else self.id


def launched_here(store: Any, instance: LambdaInstance) -> bool:
    """Whether runctl launched it: its tag, or the store's record of the launch (its token), in
    case the tags are lost; only such an instance is terminated unasked (sweep, idle warning)."""
    if instance.managed:
        return True
    stored = store.host("%s:%s" % (NAME, instance.id)) if store is not None else None
    return bool(stored and (stored.get("info") or {}).get("launch_token"))


def observe(store: Any, instance: LambdaInstance, info: Mapping[str, Any] | None = None) -> str:
    """Record the instance as seen now: its status opens a usage interval at its hourly price."""
    known = {"name": instance.name, "managed": launched_here(store, instance), "gpus": instance.gpus}
    return str(
        store.upsert_host(
            NAME,
            instance.id,
            address=instance.ip,
            region=instance.region or None,
            instance_type=instance.type or None,
            hourly_price=instance.hourly_price,
            price_source=PRICE_SOURCE if instance.price_cents is not None else None,
            state=instance.status,
            info={**known, **(info or {})},
        )
    )


class LambdaCloud:
    """The account's instances: types with capacity, launch, wait, terminate (retried, confirmed)."""

    def __init__(self, api: LambdaApi | None = None) -> None:
        if api is None:
            from .lambda_api import LambdaApi

            api = LambdaApi()
        self.api = api

    # ---- reading ---------------------------------------------------------------------------

    def types(self) -> dict[str, Any]:
        return self.api.instance_types()

    def get(self, instance_id: str) -> LambdaInstance:
        """The instance; UsageError when Lambda has none by that id (never made, or gone a while)."""
        check_id(instance_id)
        try:
            return LambdaInstance.from_api(self.api.instance(instance_id))
        except UsageError:
            raise UsageError("no Lambda instance %s" % instance_id, "list them: runctl lambda list") from None

    def instances(self) -> list[LambdaInstance]:
        return [LambdaInstance.from_api(i) for i in self.api.instances()]

    # ---- launching -------------------------------------------------------------------------

    def choose_region(self, instance_type: str, region: str | None, types: dict[str, Any]) -> str:
        """The region to launch in: the one asked for if it has capacity now, else (`any`) the first that does."""
        if instance_type not in types:
            raise UsageError(
                "unknown Lambda instance type %r" % instance_type,
                "pick one of: %s (runctl lambda types)" % ", ".join(closest(instance_type, list(types))),
            )
        having = regions_with_capacity(types, instance_type)
        if region and region != "any":
            if region in having:
                return region
            raise CloudError(
                "no capacity for %s in %s now" % (instance_type, region),
                capacity_hint(instance_type, having, types),
                "instance-operations/launch/insufficient-capacity",
            )
        if not having:
            raise CloudError(
                "no capacity for %s in any region now" % instance_type,
                capacity_hint(instance_type, having, types),
                "instance-operations/launch/insufficient-capacity",
            )
        return having[0]

    def launch(
        self,
        store: Any,
        instance_type: str,
        region: str | None,
        ssh_key: str | None,
        name: str | None,
        say: Callable[[str], None],
        info: Mapping[str, Any] | None = None,
        key_known: bool = False,
    ) -> LambdaInstance:
        """One instance, recorded in the store the moment its id is known.

        Capacity gone between the look-up and the launch: with `--region any`, the next region
        that has it now; else the regions that have it now are named. Ctrl-C is held while the
        launch call is in flight (an instance launched unknown to us could not be terminated).
        """
        from .ec2launch import interrupt_after

        if name is not None and (not name or len(name) > 64):
            raise UsageError("invalid --name %r" % name, "use 1 to 64 characters")
        key = ssh_key if ssh_key and key_known else self.ssh_key_name(ssh_key)
        types = self.types()
        chosen = self.choose_region(instance_type, region, types)
        tried: list[str] = []
        ids: list[str] = []
        try:
            while True:
                token = secrets.token_hex(6)
                body = {
                    "region_name": chosen,
                    "instance_type_name": instance_type,
                    "ssh_key_names": [key],
                    "name": name or "runctl-%s" % token,
                    "tags": [{"key": MANAGED_TAG, "value": "true"}, {"key": LAUNCH_TAG, "value": token}],
                }
                say(
                    "launching %s in %s%s ..."
                    % (instance_type, chosen, " (has capacity now)" if not region or region == "any" else "")
                )
                try:
                    with interrupt_after():
                        ids = self.launch_once(body, token)
                except CloudError as exc:
                    if exc.code != "instance-operations/launch/insufficient-capacity":
                        raise
                    tried.append(chosen)
                    types = self.types()
                    having = [r for r in regions_with_capacity(types, instance_type) if r not in tried]
                    if (region and region != "any") or not having:
                        raise CloudError(
                            "no capacity for %s in %s (it went between the look-up and the launch)"
                            % (instance_type, ", ".join(tried)),
                            capacity_hint(instance_type, regions_with_capacity(types, instance_type), types),
                            exc.code,
                        ) from None
                    chosen = having[0]
                    continue
                break
            kind = (types.get(instance_type) or {}).get("instance_type") or {}
            price = kind.get("price_cents_per_hour")
            for instance_id in ids:
                # In the store before anything else: whatever happens next, the instance is known.
                store.upsert_host(
                    NAME,
                    instance_id,
                    region=chosen,
                    instance_type=instance_type,
                    hourly_price=price / 100.0 if isinstance(price, (int, float)) else None,
                    price_source=PRICE_SOURCE,
                    state="booting",
                    info={"managed": True, "name": body["name"], "launch_token": token, **(info or {})},
                )
            if len(ids) != 1:
                raise CloudError("the launch returned %d instances, not one: %s" % (len(ids), ", ".join(ids)), "")
            say(
                "launched %s (%s, %s, $%s/hr)"
                % (ids[0], instance_type, chosen, money(price / 100.0 if price else None))
            )
            try:
                return self.get(ids[0])
            except CloudError:
                # Accepted but not readable yet (after its retries): what the launch said is what is known.
                return LambdaInstance(
                    ids[0],
                    "booting",
                    instance_type,
                    chosen,
                    str(body["name"]),
                    price_cents=price,
                    tags={MANAGED_TAG: "true", LAUNCH_TAG: token},
                )
        except BaseException as exc:
            # Launched, then interrupted or failed before the caller has it: nothing it cannot see
            # is left billing.
            for instance_id in ids:
                LambdaProvider.terminate_launched(store, self, instance_id, say, exc)
            raise

    def launch_once(self, body: dict[str, Any], token: str) -> list[str]:
        """The launch call; when its answer was lost (5xx, dropped connection) the instance is looked for."""
        from .lambda_api import Unanswered

        try:
            return self.api.launch(body)
        except Unanswered as exc:
            if not exc.sent:
                raise
            found = self.find_launched(token)
            if found is None:
                raise CloudError(
                    exc.message,
                    "it may have launched anyway: check runctl lambda list, and terminate what you do not want",
                    exc.code,
                ) from None
            return [found.id]

    def find_launched(self, token: str) -> LambdaInstance | None:
        for _ in range(3):
            try:
                for instance in self.instances():
                    if instance.tags.get(LAUNCH_TAG) == token:
                        return instance
            except CloudError:
                pass
            time.sleep(poll_seconds())
        return None

    def ssh_key_name(self, given: str | None) -> str:
        """The launch's one SSH key: the one named (checked to exist), else the account's only key."""
        names = [str(k.get("name")) for k in self.api.ssh_keys()]
        if given:
            if given not in names:
                raise UsageError(
                    "no SSH key named %r in your Lambda account" % given,
                    "add it: runctl lambda ssh-keys --add ~/.ssh/id_ed25519.pub --name %s" % given
                    + (" (or pick one of: %s)" % ", ".join(names) if names else ""),
                )
            return given
        if len(names) == 1:
            return names[0]
        if not names:
            raise UsageError(
                "your Lambda account has no SSH key",
                "add one: runctl lambda ssh-keys --add ~/.ssh/id_ed25519.pub --name NAME",
            )
        raise UsageError("your Lambda account has %d SSH keys" % len(names), "pick one: --ssh-key %s" % names[0])

    # ---- waiting ---------------------------------------------------------------------------

    def wait_active(self, instance: LambdaInstance, timeout: float = ACTIVE_SECONDS) -> LambdaInstance:
        deadline = time.monotonic() + timeout
        seen = instance
        while True:
            if seen.status == "active" and seen.ip:
                return seen
            if seen.status in GONE_STATES or seen.status == "terminating":
                raise HostError(
                    "%s is %s; it will not become active" % (seen.label, seen.status),
                    "see your instances: runctl lambda list",
                )
            if time.monotonic() >= deadline:
                from ..core.errors import WaitTimeout

                raise WaitTimeout(
                    "%s is still %s after %.0fs" % (seen.label, seen.status, timeout),
                    "check it: runctl lambda status %s" % seen.id,
                )
            time.sleep(poll_seconds())
            try:
                seen = self.get(instance.id)
            except CloudError:
                continue

    # ---- ending the bill -------------------------------------------------------------------

    def terminate(self, instance_id: str, timeout: float = CONFIRM_SECONDS) -> LambdaInstance | None:
        """Terminate, retried on transient errors, then read back until `terminated` (or gone: None).

        A call that keeps failing, or an instance that never gets there, is a CloudError with the
        command to run again (and Lambda's dashboard as the last resort).
        """
        manual = "runctl lambda terminate %s --wait   (or in https://cloud.lambda.ai/instances)" % instance_id
        try:
            seen = self.get(instance_id)
        except UsageError:
            return None
        except CloudError:
            seen = None
        if seen is not None and seen.status in GONE_STATES:
            return seen
        try:
            self.api.terminate([instance_id])
        except UsageError:
            return None  # object-does-not-exist: gone already
        except CloudError as exc:
            raise CloudError(
                "could not terminate %s: %s" % (instance_id, exc.message), "run: " + manual, exc.code
            ) from None
        deadline = time.monotonic() + timeout
        while True:
            try:
                seen = self.get(instance_id)
            except UsageError:
                return None  # no longer listed: gone
            except CloudError:
                seen = None
            if seen is not None and seen.status in GONE_STATES:
                return seen
            if time.monotonic() >= deadline:
                state = seen.status if seen is not None else "unknown"
                raise CloudError(
                    "terminate of %s was accepted but it is still %s after %.0fs" % (instance_id, state, timeout),
                    "check it: runctl lambda status %s; if it still runs: %s" % (instance_id, manual),
                    "unconfirmed",
                )
            time.sleep(poll_seconds())


# ---- small pure helpers -----------------------------------------------------------------------


def check_id(instance_id: str) -> None:
    if not instance_id or len(instance_id) > 128 or not instance_id.replace("-", "").isalnum():
        raise UsageError("invalid Lambda instance id %r" % instance_id, "list them: runctl lambda list")


def regions_with_capacity(types: Mapping[str, Any], instance_type: str) -> list[str]:
    item = types.get(instance_type) or {}
    return [str(r.get("name")) for r in item.get("regions_with_capacity_available") or [] if r.get("name")]


def capacity_hint(instance_type: str, having: list[str], types: Mapping[str, Any]) -> str:
    """The fix for no capacity: the regions that have this type now, else types that have capacity."""
    if having:
        return "%s has capacity now in: %s (pass --region, or --region any)" % (instance_type, ", ".join(having))
    others = [name for name in sorted(types) if regions_with_capacity(types, name)]
    if others:
        return "no region has it now; types with capacity: %s (runctl lambda types --available)" % ", ".join(others[:6])
    return "no type has capacity now; try again later (runctl lambda types --available)"


def closest(name: str, names: list[str]) -> list[str]:
    import difflib

    return difflib.get_close_matches(name, names, n=4, cutoff=0.4) or sorted(names)[:6]


def money(value: float | None) -> str:
    if value is None:
        return "-"
    return ("%.4f" % value).rstrip("0").rstrip(".") or "0"


def transport_to(instance: LambdaInstance, user: str, identity: str | None) -> SshTransport:
    if not instance.ip:
        raise HostError(
            "%s has no address yet (it is %s)" % (instance.label, instance.status),
            "wait for it: runctl lambda status %s" % instance.id,
        )
    return SshTransport(Dest(host=instance.ip, user=user), identity=identity, host_key_alias=instance.id)


def identity_of(options: Mapping[str, Any]) -> str | None:
    identity = options.get("identity")
    if identity is None:
        return None
    path = Path(str(identity)).expanduser()
    if not path.is_file():
        raise UsageError("identity file %s does not exist" % identity, "pass the path of a private key with -i")
    return str(path)


# ---- the provider ----------------------------------------------------------------------------------


class LambdaProvider(SshProvider):
    """`runctl lambda train`: the SSH pipeline to a Lambda instance, launched here or named by id."""

    name = NAME
    syncs_code = True
    missing: Mapping[str, Missing] = MappingProxyType({STOP_HOST: CANNOT_STOP})

    def cloud(self) -> LambdaCloud:
        return LambdaCloud()

    def check(self, request: StartRequest) -> None:
        options = request.options
        if options.get("on_end") not in ON_END_CHOICES:
            raise UsageError("invalid --on-end %r" % options.get("on_end"), "use terminate or none")
        for path in options.get("data") or []:
            if not Path(path).exists():
                raise UsageError("--data %s does not exist" % path, "pass an existing local file or directory")
        identity_of(options)
        if options.get("host_terminate"):
            from .lambda_host_end import read_key

            if options.get("on_end") != "terminate":
                raise UsageError("--host-terminate needs --on-end terminate", "drop one of them")
            options["host_key"] = read_key(str(options["host_terminate"]))
        if bool(options.get("instance")) == bool(options.get("instance_type")):
            problem = "no instance given"
            if options.get("instance"):
                problem = "name an instance or --instance-type, not both"
            raise UsageError(problem, "runctl lambda train ID SCRIPT, or --instance-type TYPE SCRIPT")
        cloud = self.cloud()
        if options.get("instance"):
            instance = cloud.get(str(options["instance"]))
            if instance.status != "active":
                raise HostError(
                    "%s is %s" % (instance.label, instance.status), "see it: runctl lambda status %s" % instance.id
                )
            options["instance_obj"] = instance
        else:
            # Checked before anything is recorded: the key, the type, and a region with capacity.
            types = cloud.types()
            cloud.choose_region(str(options["instance_type"]), options.get("region"), types)
            options["ssh_key_name"] = cloud.ssh_key_name(options.get("ssh_key"))
        options["cloud"] = cloud

    def acquire(self, request: StartRequest) -> tuple[Host, bool]:
        """The named instance, or one launched now and waited for (active, then SSH).

        A launched instance is terminated (confirmed) when anything fails before the pipeline has
        it, Ctrl-C included; after that the pipeline's own failure rule releases it.
        """
        from ..store import Store
        from .aws import wait_ssh

        options = request.options
        say = request.say or (lambda message: None)
        cloud: LambdaCloud = options["cloud"]
        user = str(options.get("ssh_user") or DEFAULT_SSH_USER)
        identity = identity_of(options)
        if options.get("instance_obj") is not None:
            instance: LambdaInstance = options["instance_obj"]
            options["transport_obj"] = transport_to(instance, user, identity)
            return self.host_of(instance, user, identity), False
        db = Store()
        launched: LambdaInstance | None = None
        try:
            launched = cloud.launch(
                db,
                str(options["instance_type"]),
                options.get("region"),
                options.get("ssh_key_name"),
                options.get("name"),
                say,
                {"ssh_user": user, "identity": identity},
                key_known=True,
            )
            options["launched_id"] = launched.id
            say("waiting for %s to become active ..." % launched.id)
            instance = cloud.wait_active(launched)
            observe(db, instance)
            transport = transport_to(instance, user, identity)
            wait_ssh(transport, SSH_SECONDS)
            options["transport_obj"] = transport
            say("%s is active at %s" % (instance.id, instance.ip))
            return self.host_of(instance, user, identity), True
        except BaseException as exc:
            if launched is not None:
                self.terminate_launched(db, cloud, launched.id, say, exc)
            raise
        finally:
            db.close()

    @staticmethod
    def terminate_launched(
        db: Any, cloud: LambdaCloud, instance_id: str, say: Callable[[str], None], why: BaseException
    ) -> None:
        reason = "interrupted" if isinstance(why, KeyboardInterrupt) else "the setup failed"
        say("%s: terminating %s, which this command launched ..." % (reason, instance_id))
        try:
            seen = cloud.terminate(instance_id)
        except (RunctlError, KeyboardInterrupt) as exc:
            detail = exc.message if isinstance(exc, RunctlError) else "interrupted again"
            say(
                "warning: %s could not be terminated (%s); terminate it: runctl lambda terminate %s"
                % (instance_id, detail, instance_id)
            )
            return
        db.record_host_state("%s:%s" % (NAME, instance_id), seen.status if seen else "terminated")
        say("%s is %s" % (instance_id, seen.status if seen else "terminated"))

    @staticmethod
    def host_of(instance: LambdaInstance, user: str, identity: str | None) -> Host:
        info = {
            "ssh_user": user,
            "identity": identity,
            "name": instance.name,
            "managed": instance.managed,
            "price_source": PRICE_SOURCE,
        }
        return Host(
            NAME,
            instance.id,
            instance.ip or "",
            instance.region,
            instance.type,
            instance.hourly_price,
            instance.status,
            info,
        )

    def transport(self, host: Host, request: StartRequest) -> Transport:
        transport: Transport = request.options["transport_obj"]
        return transport

    def place(self, transport: Transport, spec: RunSpec, request: StartRequest) -> None:
        """SSH placement, then `--host-terminate`'s key and command on the host (said, never silent)."""
        super().place(transport, spec, request)
        options = request.options
        if not options.get("host_terminate"):
            return
        from . import lambda_host_end

        assert isinstance(transport, SshTransport)
        cloud: LambdaCloud = options["cloud"]
        instance_id = str(options.get("launched_id") or options["instance"])
        command = lambda_host_end.install(transport, spec.project_dir, instance_id, options["host_key"], cloud.api.url)
        spec.on_end = lambda_host_end.on_end(command, bool(spec.checkpoint_s3))
        say = request.say or (lambda message: None)
        say(
            "--host-terminate: your API key is on %s in %s/.runctl/%s (0600); with no controller watching, "
            "the instance terminates itself after the run, and checkpoints not pulled by then are lost"
            % (instance_id, spec.project_dir, lambda_host_end.KEY_NAME)
        )

    def on_end(self, request: StartRequest) -> dict[str, Any]:
        action = request.options.get("on_end", "none")
        # No host command: the host has no API key, so its end is the controller's to do.
        return {"command": None, "action": action, "after": ["checkpoints_in_place"], "controller_grace": 0}

    def end_action(self, row: dict[str, Any]) -> str:
        action = ((row.get("spec") or {}).get("on_end") or {}).get("action") or "none"
        return str(action) if action in ON_END_CHOICES else "none"

    def release(self, host: Host, action: str) -> Host:
        if action == "none":
            return host
        if action == "stop":
            from .base import require

            require(self, STOP_HOST, instance_id=host.id)
        seen = LambdaCloud().terminate(host.id)
        host.state = seen.status if seen is not None else "terminated"
        return host

    def host_gone(self, row: dict[str, Any], stored: Mapping[str, Any]) -> dict[str, Any] | None:
        """Why a run's instance stopped answering: None while Lambda says it lives (keep trying)."""
        try:
            seen: LambdaInstance | None = LambdaCloud().get(str(stored["host_id"]))
        except UsageError:
            seen = None  # no longer listed: terminated
        except HostError:
            return None
        if seen is not None and seen.status not in (*GONE_STATES, "terminating"):
            return None
        state = seen.status if seen is not None else "terminated"
        if ((row.get("spec") or {}).get("on_end") or {}).get("host_terminate"):
            return {
                "state": "terminated" if state == "terminating" else state,
                "status": "lost",
                "termination_status": "lost",
                "message": "instance %s terminated itself after the run (--host-terminate); how the run ended "
                "cannot be read now" % stored["host_id"],
            }
        return {
            "state": "terminated" if state == "terminating" else state,
            "status": "interrupted",
            "termination_status": "lost",
            "message": "Lambda instance %s was %s from outside the run" % (stored["host_id"], state),
        }
