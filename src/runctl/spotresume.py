"""`--auto-resume N` on EC2: a run ended by a spot interruption is relaunched and resumed, up to N times.

The controller does it, so it must be running: `aws train --auto-resume N` requires `--wait`
(runctl.params.auto_resume_options). After each run of the chain ends, if it ended
`interrupted (spot_interruption)` and relaunches are left:

1. its final checkpoint upload is over (followed by `wait_for`, which waits for the uploader);
2. EC2 has taken the interrupted instance (read back, bounded by the notice's time), so two
   instances never bill for one run and its private address is free again;
3. a new instance like the first is launched through `aws create`'s one launch path (same type,
   image, key, subnet, security group, shutdown behaviour, user tags; spot again, or on-demand when
   spot has no capacity and `--spot-fallback on-demand` was given);
4. a new run starts on it with the same script, arguments and flags, resuming from the latest
   checkpoint verified in S3 of the run just interrupted (`--resume RUN_ID`; an earlier run of the
   chain when that one verified none), with `attempt` k+1 and `resumed_from` the interrupted run.

Each attempt is its own run; `runs status` shows its place in the chain (`chain_view`).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .core import status as st
from .core.errors import RunctlError, UsageError

POLL_ENV = "RUNCTL_SPOT_POLL_INTERVAL"  # seconds between notice polls on the host (tests: shorter)
GONE_WAIT_AFTER_NOTICE = 90.0  # how long past the notice's time EC2 may take to end the instance
GONE_WAIT_NO_NOTICE = 180.0
STATE_POLL = 1.0


def spot_block() -> dict[str, Any]:
    """The spec's `spot` block for a run on a spot instance (agent/spotwatch.py reads it)."""
    from .core.spot import POLL_SECONDS

    block: dict[str, Any] = {"interval": POLL_SECONDS}
    raw = os.environ.get(POLL_ENV)
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = 0.0
        if 0 < value <= 60:
            block["interval"] = value
    return block


def spot_interrupted(row: dict[str, Any] | None) -> bool:
    return bool(row) and row.get("status") == st.INTERRUPTED and row.get("termination_status") == st.T_SPOT  # type: ignore[union-attr]


@dataclass
class Relaunch:
    """How to launch an instance like the first: what `aws create` needs, read from the instance."""

    instance_type: str
    image_id: str
    key_name: str | None
    subnet: str | None
    security_group: str | None
    private_ip: str | None
    region: str
    spot: bool
    on_shutdown: str
    idle_stop: str
    name: str
    user_tags: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, cloud: Any, instance: Any) -> Relaunch:
        from .providers import ec2tags as tags

        found = cloud.ec2.call("describe_instances", InstanceIds=[instance.id])
        data = found["Reservations"][0]["Instances"][0]
        groups = [g.get("GroupId") for g in data.get("SecurityGroups") or [] if g.get("GroupId")]
        user_tags = [
            "%s=%s" % (k, v)
            for k, v in instance.tags.items()
            if k != "Name" and not k.startswith(("aws:", "runctl:", "runctl-"))
        ]
        return cls(
            instance_type=instance.type,
            image_id=str(data.get("ImageId") or ""),
            key_name=instance.key_name,
            subnet=data.get("SubnetId"),
            security_group=groups[0] if groups else None,
            private_ip=instance.private_ip,
            region=instance.region,
            spot=instance.lifecycle == "spot",
            on_shutdown=cloud.shutdown_behaviour(instance),
            idle_stop=instance.tags.get(tags.IDLE_STOP) or "15m",
            name=instance.name or instance.id,
            user_tags=user_tags[:40],
        )

    def request(self, attempt: int, fallback: str, reach: Any, keep_ip: bool) -> Any:
        from .providers.ec2launch import CreateRequest

        base = self.name.rsplit("-attempt", 1)[0]
        return CreateRequest(
            instance_type=self.instance_type,
            ami=self.image_id,
            spot=self.spot,
            spot_fallback=fallback,
            key_name=self.key_name,
            ssh_user=reach.user,
            subnet=self.subnet,
            security_group=self.security_group,
            private_ip=self.private_ip if keep_ip else None,
            address=reach.address_kind,
            name="%s-attempt%d" % (base, attempt),
            tags=list(self.user_tags),
            idle_stop=self.idle_stop,
            on_shutdown=self.on_shutdown,
            identity=reach.identity,
            wait=True,
            region=self.region,
        )


class Chain:
    """One `--auto-resume` chain, followed by this controller: the runs so far and how to go on."""

    def __init__(self, db: Any, request: Any, limit: int, fallback: str, say: Callable[[str], None]) -> None:
        self.db, self.limit, self.fallback, self.say = db, limit, fallback, say
        self.request = copy.copy(request)
        self.request.options = dict(request.options)
        self.runs: list[str] = []
        instance = request.options["instance_obj"]
        from .providers.aws import Ec2Instances

        self.cloud = Ec2Instances(instance.region)
        self.plan = Relaunch.of(self.cloud, instance)
        self.reach = request.options["reach"]
        if not self.plan.spot:
            say("%s is an on-demand instance: --auto-resume acts only on spot interruptions" % instance.id)

    def follow(self, first_run: str, output: Any, timeout: float | None) -> int:
        """Follow each run to its end; relaunch after a spot interruption while relaunches are left."""
        from .cli.waiting import wait_for

        run_id = first_run
        self.runs.append(run_id)
        while True:
            row = self.db.get(run_id)
            assert row is not None
            code = wait_for(self.db, row, output, timeout, stream_log=True)
            ended = self.db.get(run_id)
            if not spot_interrupted(ended):
                return code
            assert ended is not None
            self.settle_uploads(ended)
            attempt = len(self.runs)
            if attempt > self.limit:
                self.say(
                    "run %s was interrupted by EC2 (spot); --auto-resume %d: no relaunch left" % (run_id, self.limit)
                )
                return code
            run_id = self.relaunch(ended, attempt + 1)
            self.runs.append(run_id)

    def relaunch(self, ended: dict[str, Any], attempt: int) -> str:
        from .pipeline import start

        previous = ended["run_id"]
        self.say(
            "spot interruption ended run %s; relaunching (attempt %d of %d, --auto-resume %d)"
            % (previous, attempt, self.limit + 1, self.limit)
        )
        keep_ip = self.wait_gone(ended)
        try:
            instance = self.launch(attempt, keep_ip)
        except RunctlError as exc:
            exc.message = "could not relaunch run %s after its spot interruption: %s" % (previous, exc.message)
            raise
        request = copy.copy(self.request)
        request.options = {
            **self.request.options,
            "instance": instance.id,
            "instance_obj": instance,
            "created": True,
            "start": False,
            "attempt": attempt,
            "auto_resume": self.limit,
            "resumed_from": previous,
        }
        request.options.pop("reach", None)
        request.resume = self.resume_point()
        try:
            spec, _state = start(self.db, request)
        except UsageError as exc:
            raise RunctlError(
                "could not resume run %s on %s: %s" % (previous, instance.id, exc.message),
                exc.hint or "terminate the new instance: runctl aws terminate %s" % instance.id,
            ) from None
        where = instance.label
        self.say("run %s (%s) started on %s, resumed from run %s" % (spec.run_id, spec.name, where, previous))
        row = self.db.get(spec.run_id)
        if row is not None:
            from . import providers
            from .ending import record_metadata

            record_metadata(providers.get("aws"), self.db, row)
        return spec.run_id

    def settle_uploads(self, ended: dict[str, Any]) -> None:
        """An instance taken right after its final upload may not have said so to this controller:
        the run's manifest in S3 then says what was verified, and the store keeps that."""
        from .checkpoint_s3 import describe
        from .s3checkpoints import client, manifest_of, run_cfg

        state = ended.get("state") or {}
        summary = state.get("checkpoint_s3")
        cfg = run_cfg(ended)
        if not summary or summary.get("phase") in ("done", "failed") or cfg is None:
            return
        try:
            manifest = manifest_of(client(cfg), ended)
        except RunctlError:
            return
        verified = manifest.checkpoints() if manifest is not None else []
        if not verified:
            return
        summary = {
            **summary,
            "phase": "done" if manifest is not None and manifest.ended() else summary.get("phase"),
            "uploaded": len(verified),
            "last": verified[-1].get("name"),
            "pending": 0,
            "uploading": None,
            "message": "read from the run's manifest in S3 (its host is gone)",
        }
        self.db.update_state(ended["run_id"], {**state, "checkpoint_s3": summary})
        line = describe(summary)
        if line:
            self.say(line)

    def resume_point(self) -> str | None:
        """The newest run of the chain with a verified checkpoint in S3 (its latest), else what the
        first run resumed from (its own --resume), else nothing: a fresh start, said."""
        from .s3checkpoints import resolve_resume

        for run_id in reversed(self.runs):
            row = self.db.get(run_id) or {}
            try:
                resolve_resume(run_id, (row.get("spec") or {}).get("checkpoint_s3"), self.db)
            except UsageError as exc:
                self.say("run %s: no checkpoint to resume from (%s)" % (run_id, exc.message))
                continue
            return run_id
        if self.request.resume is None:
            self.say("no verified checkpoint in the chain: the relaunched run starts from the beginning")
        return self.request.resume

    def wait_gone(self, ended: dict[str, Any]) -> bool:
        """Until EC2 has ended the interrupted instance (bounded); whether its private IP is free."""
        host = self.db.host(ended.get("host_key") or "") if ended.get("host_key") else None
        instance_id = host["host_id"] if host else self.request.options["instance_obj"].id
        notice = ((ended.get("state") or {}).get("spot_notice") or {}).get("at")
        if isinstance(notice, (int, float)):
            deadline = time.monotonic() + max(0.0, float(notice) - time.time()) + GONE_WAIT_AFTER_NOTICE
        else:
            deadline = time.monotonic() + GONE_WAIT_NO_NOTICE
        said = False
        while True:
            try:
                state = self.cloud.get(instance_id).state
            except UsageError:
                return True  # no longer known: long terminated
            if state == "terminated":
                return True
            if state == "stopped" or time.monotonic() >= deadline:
                self.say("%s is %s: the new instance gets an address of its own" % (instance_id, state))
                return False
            if not said:
                self.say("waiting for EC2 to take %s (%s) before relaunching ..." % (instance_id, state))
                said = True
            time.sleep(STATE_POLL)

    def launch(self, attempt: int, keep_ip: bool) -> Any:
        from .providers.aws import Ec2Instances
        from .providers.ec2launch import create

        result = create(self.plan.request(attempt, self.fallback, self.reach, keep_ip), self.say, self.db)
        if result.get("spot_fallback_used"):
            self.say("no spot capacity: attempt %d runs on an on-demand instance (--spot-fallback on-demand)" % attempt)
        return Ec2Instances(self.plan.region).get(str(result["instance_id"]))


# ---- what `runs status` shows -------------------------------------------------------------------


def chain_view(db: Any, row: dict[str, Any]) -> dict[str, Any] | None:
    """A run's place in its --auto-resume chain: attempt k of N+1, the runs before it (oldest first),
    and the steps not lost (the step of the checkpoint it resumed from)."""
    spec = row.get("spec") or {}
    attempt = spec.get("attempt")
    if not isinstance(attempt, int):
        return None
    limit = int(spec.get("auto_resume") or 0)
    previous: list[str] = []
    seen = {row["run_id"]}
    link = spec.get("resumed_from")
    while isinstance(link, str) and link not in seen and len(previous) < 1000:
        previous.insert(0, link)
        seen.add(link)
        earlier = db.get(link)
        link = ((earlier or {}).get("spec") or {}).get("resumed_from")
    source = spec.get("resume_s3") or {}
    entry = source.get("entry") or {}
    return {
        "attempt": attempt,
        "attempts": limit + 1,
        "auto_resume": limit,
        "previous_runs": previous,
        "resumed_from": spec.get("resumed_from"),
        "steps_not_lost": entry.get("step") if spec.get("resumed_from") else None,
        "checkpoint": entry.get("name") if spec.get("resumed_from") else None,
    }


def describe_chain(chain: dict[str, Any]) -> str:
    """`attempt 2 of 3 (--auto-resume 2); after 1a2b3c4d; 120 steps not lost (checkpoint_epoch_2.json)`."""
    text = "attempt %d of %d (--auto-resume %d)" % (chain["attempt"], chain["attempts"], chain["auto_resume"])
    if chain.get("previous_runs"):
        text += "; after %s" % ", ".join(chain["previous_runs"])
    if chain.get("resumed_from"):
        if chain.get("steps_not_lost") is not None:
            text += "; %s steps not lost (%s)" % (chain["steps_not_lost"], chain.get("checkpoint"))
        else:
            text += "; started over (no verified checkpoint)"
    return text
