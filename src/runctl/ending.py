"""The controller's end-of-run step: pull the checkpoints home, claim the run's `on_end` step, and
release the host through its provider, confirmed by reading its state back.

It runs wherever a controller sees a run terminal (`runs wait`, `train --wait`, `runs stop`,
`runs status`/`list`), once per run: an `on_end` event in the store guards it. On the host, the
agent performs the same step after the run has ended, with or without a controller; both claim it
through `<run_dir>/on_end.claim` (O_EXCL), so whichever comes first acts and the other sees it done.
Checkpoints are pulled before the claim: they are the controller's to fetch whoever releases.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import controller, providers
from .core import status as st
from .core.errors import HostError, RunctlError, UsageError
from .providers.base import DOWNLOAD_CHECKPOINTS, Host, Provider, supports
from .store import Store

GUARD = "on_end"
RESULT = "on_end_result"


def end_of_run(store: Store, row: dict[str, Any], say: Callable[[str], None] | None = None) -> None:
    """Perform the controller's part of a terminal run's end, once; never raises for a host problem."""
    notice = say or (lambda message: None)
    kinds = {e["kind"] for e in store.events(row["run_id"])}
    if not st.is_terminal(row["status"]) or GUARD in kinds:
        return
    store.add_event(row["run_id"], GUARD, {"by": "controller"})
    provider = providers.get(row["provider"])
    started = time.time()
    proof: dict[str, Any] = {}
    launched = "launched" in kinds  # a run lost before its launch has no run dir and no checkpoints
    if (
        launched
        and supports(provider, DOWNLOAD_CHECKPOINTS)
        and controller.owner_of(row).get("download_checkpoints", True)
    ):
        proof["checkpoints_downloaded"] = pull_checkpoints(store, row, notice)
    if not host_step(provider, row):
        # Nothing for anyone to do on the host or through an API: the run dir stays as the agent left it.
        store.add_event(row["run_id"], RESULT, {"by": "controller", "proof": proof, "release": {"action": "none"}})
        return
    claim: dict[str, Any] = claim_step(row) if launched else {"claimed": False, "error": "never launched"}
    if not claim.get("claimed") and not claim.get("error"):
        # The agent (or another controller) has it: its result, when written, is on the host.
        store.add_event(row["run_id"], RESULT, {"claimed_by": (claim.get("claim") or {}).get("by"), **claim})
        return
    # Claimed here, or no one can claim (run dir gone, host unreachable): the provider's release
    # through its API is the controller's to do either way.
    result = release(store, provider, row, notice)
    result.update(by="controller", started_at=started, ended_at=time.time(), proof=proof)
    if claim.get("error"):
        result["claim_error"] = claim["error"]
    else:
        try:
            controller.transport_for(row).on_end_result(row["run_dir"], result)
        except (RunctlError, OSError):
            pass  # the store keeps the result either way
    store.add_event(row["run_id"], RESULT, result)


def host_step(provider: Provider, row: dict[str, Any]) -> bool:
    """Whether the run's end has a host command (the agent's) or a release (the provider's) to coordinate."""
    on_end = (row.get("spec") or {}).get("on_end") or {}
    return bool(on_end.get("command")) or provider.end_action(row) != "none"


def claim_step(row: dict[str, Any]) -> dict[str, Any]:
    """The host's answer to the controller's claim; {"error": ...} when it cannot be asked or written."""
    try:
        return controller.transport_for(row).on_end_claim(row["run_dir"])
    except (RunctlError, OSError) as exc:
        return {"claimed": False, "error": exc.message if isinstance(exc, RunctlError) else str(exc)}


def pull_checkpoints(store: Store, row: dict[str, Any], say: Callable[[str], None]) -> int:
    """This run's checkpoints into ./checkpoints/<run_id>/ of the project, once; a failure is a warning."""
    from .checkpointing import download_checkpoints, skipped_warning

    if any(e["kind"] == "checkpoints_downloaded" for e in store.events(row["run_id"])):
        return 0
    try:
        target, done = download_checkpoints(store, row, None, False, progress=False)
    except (HostError, UsageError) as exc:
        say(
            "warning: checkpoint download failed: %s (retry: runctl checkpoint download %s)"
            % (exc.message, row["run_id"])
        )
        return 0
    if done.allowed:
        say("downloaded %d checkpoint file(s) to %s" % (len(done.allowed), target))
    if done.skipped:
        say(skipped_warning(target, done.skipped))
    return len(done.allowed)


def release(store: Store, provider: Provider, row: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    """The provider's end action on the run's host; the state it reports back is recorded."""
    action = provider.end_action(row)
    outcome: dict[str, Any] = {"command": None, "exit_code": None, "output_tail": "", "error": None}
    outcome["release"] = {"action": action, "state": None}
    stored = store.host(row["host_key"]) if row.get("host_key") else None
    if action == "none" or stored is None:
        return outcome
    host = Host(
        stored["provider"], stored["host_id"], stored.get("address") or "", stored.get("region"),
        stored.get("instance_type"), stored.get("hourly_price"), stored["state"],
    )  # fmt: skip
    try:
        released = provider.release(host, action)
    except RunctlError as exc:
        outcome["error"] = exc.message
        say("warning: could not %s host %s: %s" % (action, host.id, exc.message))
        return outcome
    store.record_host_state(row["host_key"], released.state)
    outcome["release"]["state"] = released.state
    return outcome
