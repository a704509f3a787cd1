"""The controller's end-of-run step: pull the checkpoints home, claim the run's `on_end` step, and
release the host through its provider, confirmed by reading its state back.

It runs wherever a controller sees a run terminal (`runs wait`, `train --wait`, `runs stop`,
`runs status`/`list`), once per run: an `on_end` event in the store guards it. On the host, the
agent performs the same step after the run has ended, with or without a controller; both claim it
through `<run_dir>/on_end.claim` (O_EXCL), so whichever comes first acts and the other sees it done.
For a provider that keeps the host (end action `none`), checkpoints are pulled before the claim:
they are the controller's to fetch whoever releases.

For a provider that releases the host (`stop`, `terminate`), the controller claims the step FIRST,
so the agent's own power-off (it waits `controller_grace` for a claim) never cuts the pull short;
then it pulls the checkpoints, verifies each copy against the host's (size + sha256), and releases:
`terminate` only when every checkpoint the run wrote is proven safe here (or, with --checkpoint-s3,
verified in S3 by the host's uploader: then the pull is a copy, not the proof), else `stop` (compute
billing ends, the disk keeps the files), with the reason in the result and the run's notice. A
release that fails after its retries is recorded with the exact command to run, sent to the run's
`--notify` endpoints, and flagged on the host (`runs wait` and `train --wait` then exit 4).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import controller, providers
from .core import status as st
from .core.errors import HostError, RunctlError, UsageError
from .providers.base import DOWNLOAD_CHECKPOINTS, STOP_HOST, Host, Provider, supports
from .store import Store

GUARD = "on_end"
RESULT = "on_end_result"


def end_of_run(store: Store, row: dict[str, Any], say: Callable[[str], None] | None = None) -> None:
    """Perform the controller's part of a terminal run's end, once; never raises for a host problem."""
    notice = say or (lambda message: None)
    events = store.events(row["run_id"])
    kinds = {e["kind"] for e in events}
    if not st.is_terminal(row["status"]) or (GUARD in kinds and not abandoned(events)):
        return
    store.add_event(row["run_id"], GUARD, {"by": "controller", **controller.controller_identity()})
    from .training_log import record_end

    record_end(row)  # seed 004's training_output/training_log.json, in projects laid out that way
    provider = providers.get(row["provider"])
    started = time.time()
    proof: dict[str, Any] = {}
    launched = "launched" in kinds  # a run lost before its launch has no run dir and no checkpoints
    if provider.end_action(row) != "none":
        release_proven(store, provider, row, launched, notice)
        return
    record_metadata(provider, store, row)
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


def abandoned(events: list[dict[str, Any]]) -> bool:
    """Whether the step was begun by a controller that died before recording its result (killed
    between the two): then the next controller takes it up, or the run's end would never be read."""
    from .agent.procs import is_alive

    if any(e["kind"] == RESULT for e in events):
        return False
    guards = [e for e in events if e["kind"] == GUARD]
    holder = guards[-1] if guards else {}
    return holder.get("pid") is not None and not is_alive(holder.get("pid"), holder.get("start"))


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


def release(
    store: Store, provider: Provider, row: dict[str, Any], say: Callable[[str], None], action: str | None = None
) -> dict[str, Any]:
    """The provider's end action (or `action`) on the run's host; the state it reports back is recorded."""
    action = action or provider.end_action(row)
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
        outcome["manual"] = exc.hint
        say("warning: could not %s host %s: %s" % (action, host.id, exc.message))
        return outcome
    store.record_host_state(row["host_key"], released.state)
    outcome["release"]["state"] = released.state
    return outcome


# ---- a host the provider releases: claim, pull, verify, then stop or terminate ------------------


def release_proven(
    store: Store, provider: Provider, row: dict[str, Any], launched: bool, say: Callable[[str], None]
) -> None:
    """Claim first, pull and verify the checkpoints, then release (terminate only with the proof)."""
    started = time.time()
    claim: dict[str, Any] = claim_step(row) if launched else {"claimed": False, "error": "never launched"}
    if not claim.get("claimed") and not claim.get("error"):
        theirs = claim.get("result") or {}
        if not power_off_failed(theirs):
            # The agent has it: the host powered itself off (or is doing so) after its own checks.
            result = {"claimed_by": (claim.get("claim") or {}).get("by"), **claim}
            store.add_event(row["run_id"], RESULT, result)
            set_notice(store, row, agent_notice(theirs))
            record_metadata(provider, store, row)
            return
        # The host's own power-off failed, so its bill still runs: the API releases it instead.
        say("warning: %s; releasing it through the provider" % agent_notice(theirs))
    asked = provider.end_action(row)
    proof: dict[str, Any] = {}
    wants_pull = supports(provider, DOWNLOAD_CHECKPOINTS) and controller.owner_of(row).get("download_checkpoints", True)
    if launched and not claim.get("error"):
        proof.update(prove(store, row, bool(wants_pull), say))
    action, reason = choose_action(asked, proof, launched, bool(wants_pull), claim.get("error"))
    if action == "stop" and not supports(provider, STOP_HOST):
        # A host that cannot be stopped (Lambda) is left running rather than destroyed unproven.
        action = "none"
        reason = "%s; it cannot be stopped, so it keeps running until you terminate it" % reason
    decided = {"asked": asked, "action": action, "reason": reason, "proof": proof}
    if not claim.get("error"):
        # On the host before the release: once stopped or terminated, it can no longer be written.
        try:
            controller.transport_for(row).on_end_result(
                row["run_dir"],
                {**decided, "by": "controller", "started_at": started, "release": {"action": action, "state": None}},
            )
        except (RunctlError, OSError):
            pass
    result = release(store, provider, row, say, action)
    result.update(decided, by="controller", started_at=started, ended_at=time.time())
    record_metadata(provider, store, row)  # after the release: tags outlast a stop and a terminate
    if claim.get("error"):
        result["claim_error"] = claim["error"]
    elif getattr(provider, "host_gone", None) is None:
        # A host that outlives its release (no cloud lifecycle) gets the confirmed result too; a
        # cloud host just stopped or terminated cannot be reached, and the store has it.
        try:
            controller.transport_for(row).on_end_result(row["run_dir"], result)
        except (RunctlError, OSError):
            pass
    store.add_event(row["run_id"], RESULT, result)
    if result.get("error"):
        release_failed(store, provider, row, result, say)
        return
    state = (result.get("release") or {}).get("state")
    if action != asked:
        set_notice(store, row, "host %s %s, not %sd: %s" % (host_id(row), state or "kept", asked, reason))
        say("%s: %s instead of %s: %s" % (host_id(row), action, asked, reason))
        if action == "none":
            notify(row, "release_skipped", "host %s kept running: %s" % (host_id(row), reason))
    elif state:
        say("%s: %s (confirmed)" % (host_id(row), state))


def prove(store: Store, row: dict[str, Any], pull: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """The proofs that the run's checkpoints are safe off the host: pulled here and verified (when
    pulling), and with --checkpoint-s3 verified in S3 by the host's uploader. The two go on at once,
    so a release waits for the slower, never for the sum; either one lets a terminate go ahead."""
    from concurrent.futures import ThreadPoolExecutor

    proof: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_s3 = pool.submit(s3_proof, row) if (row.get("spec") or {}).get("checkpoint_s3") else None
        if pull:
            proof["checkpoints_downloaded"] = pull_checkpoints(store, row, say)
            proof["checkpoints_verified"] = verify(row)
        if in_s3 is not None:
            proof["checkpoints_in_s3"] = in_s3.result()
            line = s3_line(proof["checkpoints_in_s3"])
            if line:
                say(line)
    return proof


def s3_proof(row: dict[str, Any]) -> dict[str, Any]:
    """The host's answer: every checkpoint verified in S3, waited for until the uploader's final pass ends."""
    from .agent.uploads import FINISH_MARGIN
    from .storage.uploader import FINAL_TIMEOUT

    cfg = (row.get("spec") or {}).get("checkpoint_s3") or {}
    try:
        wait = float(cfg.get("final_timeout") or FINAL_TIMEOUT) + FINISH_MARGIN
    except (TypeError, ValueError):
        wait = FINAL_TIMEOUT + FINISH_MARGIN
    try:
        answer = controller.transport_for(row).s3_proof(row["run_dir"], wait)
    except (RunctlError, OSError) as exc:
        reason = exc.message if isinstance(exc, RunctlError) else str(exc)
        return {"held": False, "reason": "the host could not be asked: %s" % reason}
    found = dict(answer.get("proof") or {})
    found["held"] = bool(found.get("held")) and not answer.get("reason")
    if answer.get("reason"):
        found["reason"] = answer["reason"]
    return found


def s3_line(found: dict[str, Any]) -> str | None:
    if found.get("held"):
        return "%d checkpoint(s) verified in %s" % (len(found.get("verified") or []), found.get("uri"))
    return "checkpoints not verified in S3: %s" % found.get("reason") if found.get("reason") else None


def verify(row: dict[str, Any]) -> dict[str, Any]:
    from .checkpointing import verify_pulled

    try:
        return verify_pulled(row)
    except (HostError, UsageError) as exc:
        return {"held": False, "problems": ["the host's copies cannot be read: %s" % exc.message]}


def choose_action(
    asked: str, proof: dict[str, Any], launched: bool, pulled: bool, claim_error: str | None
) -> tuple[str, str | None]:
    """`terminate` only when every checkpoint the run wrote was pulled and verified; else `stop`. Pure."""
    if asked != "terminate" or not launched:
        return asked, None
    if claim_error:
        return "stop", "the host could not be read, so its checkpoints are not proven safe (%s)" % claim_error
    in_s3 = proof.get("checkpoints_in_s3")
    if in_s3 is not None and in_s3.get("held"):
        return "terminate", None  # every checkpoint is verified in S3: the pull is a copy, not the proof
    also = "; nor verified in S3 (%s)" % in_s3.get("reason") if in_s3 is not None else ""
    if not pulled:
        return "stop", "checkpoints were not pulled (--no-download-checkpoints), so they stay on its disk" + also
    found = proof.get("checkpoints_verified") or {}
    if not found.get("held"):
        problems = found.get("problems") or ["not verified"]
        shown = "; ".join(problems[:3]) + (" and %d more" % (len(problems) - 3) if len(problems) > 3 else "")
        return "stop", "checkpoints not proven safe off the host: %s%s" % (shown, also)
    return "terminate", None


def power_off_failed(result: dict[str, Any]) -> bool:
    """Whether the agent's end-of-run command finished and failed. One under way, or cut short by
    the power-off it ran, has no `ended_at`: the host went down. One killed by a signal (a negative
    exit code, no timeout) was cut short too: a power-off ends every process on the host, and the
    agent may outlive its command by the moment it takes to record the exit."""
    if not result.get("ended_at"):
        return False
    code = result.get("exit_code")
    if isinstance(code, int) and code < 0 and not result.get("error"):
        return False
    return bool(result.get("error")) or code not in (None, 0)


def agent_notice(result: dict[str, Any]) -> str:
    """What the host's own power-off did, for `runs status`."""
    if not result:
        return "the host took the end-of-run step itself"
    asked, becomes = result.get("action"), result.get("becomes")
    if power_off_failed(result):
        return "the host's own power-off failed: %s" % (result.get("error") or result.get("output_tail") or "")[-200:]
    if asked == "terminate" and becomes == "stop":
        return (
            "the host powered itself off after the run: stopped, not terminated "
            "(checkpoints were not proven safe off the host; no controller pulled them)"
        )
    return "the host powered itself off after the run (%s)" % (becomes or asked or "power-off")


def set_notice(store: Store, row: dict[str, Any], text: str) -> None:
    """A sentence `runs status` shows under the run (the run's status itself never changes)."""
    current = store.get(row["run_id"]) or row
    store.update_state(row["run_id"], {**current["state"], "notice": text, "seq": current.get("seq") or 0})


def host_id(row: dict[str, Any]) -> str:
    stored_key = str(row.get("host_key") or "")
    return stored_key.partition(":")[2] or str(row.get("host"))


def record_metadata(provider: Provider, store: Store, row: dict[str, Any]) -> None:
    """The run's metadata on the host's provider record (EC2 tags), where the provider keeps one."""
    write = getattr(provider, "record_run", None)
    stored = store.host(row["host_key"]) if row.get("host_key") else None
    if write is None or stored is None:
        return
    try:
        write(stored, store.get(row["run_id"]) or row)
    except (RunctlError, ValueError):  # ValueError: ec2tags.TagLimitError, no room left for it
        pass  # metadata is a convenience; the store keeps the run either way


def release_failed(
    store: Store, provider: Provider, row: dict[str, Any], result: dict[str, Any], say: Callable[[str], None]
) -> None:
    """A release that failed after its retries: flagged on the host, sent to --notify, said with the fix."""
    manual = result.get("manual") or ""
    message = "could not %s host %s: %s" % (result.get("action"), host_id(row), result.get("error"))
    flag = getattr(provider, "flag_release_failed", None)
    stored = store.host(row["host_key"]) if row.get("host_key") else None
    if stored is not None:
        store.upsert_host(stored["provider"], stored["host_id"], info={"release_failed": message})
        if flag is not None:
            try:
                flag(stored, message)
            except RunctlError:
                pass
    set_notice(store, row, "%s; %s" % (message, manual))
    notify(row, "release_failed", message)


def failed_release(store: Store, run_id: str) -> dict[str, Any] | None:
    """The end-of-run result of a release that failed, if this run's did."""
    for event in reversed(store.events(run_id)):
        if event["kind"] == RESULT:
            return event if event.get("error") and (event.get("release") or {}).get("action") else None
    return None


def notify(row: dict[str, Any], event: str, message: str) -> None:
    """The run's --notify endpoints, from the controller (the host may be gone); failures are ignored."""
    from .agent.notify import Notifier

    urls = list((row.get("spec") or {}).get("notify") or [])
    if not urls:
        return
    notifier = Notifier(urls, lambda url, error: None)
    notifier.send(
        {
            "run_id": row["run_id"],
            "name": row.get("name"),
            "event": event,
            "status": row.get("status"),
            "termination_status": row.get("termination_status"),
            "termination_message": message,
        }
    )
    notifier.flush()
