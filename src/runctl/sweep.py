"""The leak sweep: runctl's own instances billing with no run, idle longer than a threshold, have
their bill ended (EC2: stopped, its disk kept; Lambda: terminated, it cannot stop), each confirmed.

Never an instance runctl did not create, never one tagged protected, never one with a live run:
the candidates are chosen from `resources.rows`, and each is read again from the cloud just before
it is released, so a tag added or a run started since the listing still saves it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .core.errors import CloudError, RunctlError, UsageError
from .idle import billing
from .store import Store


def candidates(rows: list[dict[str, Any]], idle: float) -> list[dict[str, Any]]:
    """The rows the sweep would release: managed, unprotected, billing, no live run, idle >= `idle`."""
    return [
        r
        for r in rows
        if r["managed"]
        and not r["protected"]
        and r["active_run"] is None
        and billing(r["platform"], r["state"])
        and r["idle_seconds"] is not None
        and r["idle_seconds"] >= idle
    ]


def action_of(row: dict[str, Any]) -> str:
    return "stop" if row["platform"] == "aws" else "terminate"


def release(db: Store, row: dict[str, Any], say: Callable[[str], None]) -> str:
    """End the bill of one candidate, confirmed; returns the state read back."""
    return release_aws(db, row, say) if row["platform"] == "aws" else release_lambda(db, row, say)


def release_aws(db: Store, row: dict[str, Any], say: Callable[[str], None]) -> str:
    from .providers.aws import Ec2Instances, Prices, clear_release_failed, mark_release_failed, observe

    cloud = Ec2Instances(row["region"])
    instance = cloud.get(row["id"])
    if not instance.managed or instance.protected:  # tagged since the listing
        raise UsageError("%s is no longer a sweep candidate (tags changed)" % instance.label, "left as it is")
    say("stopping %s (idle %dm) ..." % (instance.label, row["idle_seconds"] // 60))
    try:
        seen = cloud.end_billing(instance, "stop")
    except CloudError as exc:
        mark_release_failed(cloud, db, instance, "stop", exc.message)
        raise
    observe(db, seen, Prices(cloud, ask_api=False))
    clear_release_failed(cloud, db, seen)
    return seen.state


def release_lambda(db: Store, row: dict[str, Any], say: Callable[[str], None]) -> str:
    from .providers.lambda_labs import NAME, LambdaCloud

    lam = LambdaCloud()
    instance = lam.get(row["id"])
    if not instance.managed or instance.protected:
        raise UsageError("%s is no longer a sweep candidate (tags changed)" % instance.label, "left as it is")
    say("terminating %s (idle %dm) ..." % (instance.label, row["idle_seconds"] // 60))
    try:
        seen = lam.terminate(instance.id)
    except CloudError as exc:
        db.upsert_host(NAME, instance.id, info={"release_failed": "terminate failed: %s" % exc.message})
        raise
    state = seen.status if seen is not None else "terminated"
    db.record_host_state("%s:%s" % (NAME, instance.id), state)
    return state


def sweep(db: Store, chosen: list[dict[str, Any]], say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Release each candidate; one failing does not spare the others. Returns what happened to each."""
    done = []
    for row in chosen:
        outcome: dict[str, Any] = {"id": row["id"], "platform": row["platform"], "action": action_of(row)}
        try:
            outcome.update(state=release(db, row, say), ok=True)
        except RunctlError as exc:
            say("runctl: %s: %s" % (row["id"], exc.message))
            outcome.update(state=row["state"], ok=False, error=exc.message)
        done.append(outcome)
    return done


def leftovers(region: str | None) -> list[dict[str, Any]]:
    """runctl-tagged EBS volumes attached to nothing, and runctl's key pairs (listed, never deleted)."""
    from .providers import ec2tags as tags
    from .providers.aws import Ec2Instances

    cloud = Ec2Instances(region)
    mine = [{"Name": "tag:%s" % tags.MANAGED, "Values": ["true"]}]
    volumes = cloud.ec2.paginate(
        "describe_volumes", "Volumes", Filters=[*mine, {"Name": "status", "Values": ["available"]}]
    )
    pairs = cloud.ec2.call("describe_key_pairs", Filters=mine).get("KeyPairs") or []
    found = [
        {"kind": "volume", "id": v["VolumeId"], "region": cloud.region, "detail": "%s GB, unattached" % v.get("Size")}
        for v in volumes
    ]
    found += [
        {"kind": "key-pair", "id": p.get("KeyPairId") or p["KeyName"], "region": cloud.region, "detail": p["KeyName"]}
        for p in pairs
    ]
    return found
