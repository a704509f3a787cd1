"""The end-of-run step on the host (`on_end` in spec.json): a host command once the run's work is safe.

The spec's block (written by the controller; defaults in DEFAULT):

    "on_end": {"command": null | [argv...], "after": ["checkpoints_in_place"], "controller_grace": 0}

When the run has ended, the agent waits what is left of `controller_grace` seconds (counted from the
run's end) for a controller to claim the step, checks the proofs in `after` (bounded by
`proof_timeout`, default PROOF_TIMEOUT), then claims the step by creating on_end.claim with
O_CREAT|O_EXCL and runs `command` (argv, no shell, bounded by `timeout`, default COMMAND_TIMEOUT),
writing on_end.json before (under way) and after. A controller claims through the same file (`agent
on-end-claim`), so the two never both act: whoever creates the claim performs the step, the other
sees it done or under way. A proof that does not hold in time is recorded in events.jsonl and the
command is not run; the claim is left for a controller.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..core import checkpoints, layout, policies, stopping
from ..core.fsutil import PRIVATE_FILE, append_json, atomic_write_json, is_partial, read_json

DEFAULT: Dict[str, Any] = {"command": None, "after": ["checkpoints_in_place"], "controller_grace": 0}
# checkpoints_in_place: the run's checkpoint files are on the host's disk, complete and unchanging.
# checkpoints_in_s3: the uploader (agent/uploads.py) verified every one of them in S3, the final too;
# it lets a terminate go ahead with no controller at all.
PROOFS = ("checkpoints_in_place", "checkpoints_in_s3")
CLAIMANTS = ("agent", "controller")
STABLE_SECONDS = 0.5  # a checkpoint's size must not change across two looks this far apart
PROOF_TIMEOUT = 300.0
COMMAND_TIMEOUT = 300.0
OUTPUT_TAIL_BYTES = 4096
POLL_SECONDS = 0.1
CLAIM_READ_SECONDS = 1.0  # a claim just created may not hold its content yet


class BadOnEnd(ValueError):
    """The spec's on_end block cannot be followed (what is wrong, for events.jsonl)."""


def settings(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The spec's on_end block over DEFAULT, checked; raises BadOnEnd."""
    given = spec.get("on_end")
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise BadOnEnd("on_end must be an object, not %r" % (given,))
    cfg = dict(DEFAULT)
    cfg.update(given)
    command = cfg["command"]
    if command is not None and (
        not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command)
    ):
        raise BadOnEnd("on_end.command must be null or a non-empty list of strings (argv, no shell)")
    after = cfg["after"] or []
    if not isinstance(after, list) or any(p not in PROOFS for p in after):
        raise BadOnEnd("on_end.after may only name %s, not %r" % (", ".join(PROOFS), after))
    cfg["after"] = list(after)
    if cfg.get("poweroff") is True:
        if command is not None:
            raise BadOnEnd("on_end names both a command and poweroff; give one")
        # The host's own power-off (through sudo -n when not root); on EC2 the instance's shutdown
        # behaviour turns it into a stop or a terminate, so the host needs no credentials.
        from .watchdog import default_poweroff_cmd

        cfg["command"] = default_poweroff_cmd()
    elif cfg.get("poweroff") not in (None, False):
        raise BadOnEnd("on_end.poweroff must be true or false")
    cfg["proof_required"] = cfg.get("proof_required", True) is not False
    for key, default in (("controller_grace", 0.0), ("proof_timeout", PROOF_TIMEOUT), ("timeout", COMMAND_TIMEOUT)):
        cfg[key] = stopping.clamp_grace(cfg.get(key), default)  # a number of seconds in [0, 1 h]
    return cfg


# ---- the claim and the result, shared with controllers ---------------------------------------


def claim(run_dir: str, by: str) -> Tuple[bool, Optional[Dict[str, Any]]]:
    """Create on_end.claim for `by`: (True, the claim), or (False, whoever's claim was there first)."""
    if by not in CLAIMANTS:
        raise ValueError("a claim is made by %s, not %r" % (" or ".join(CLAIMANTS), by))
    path = os.path.join(run_dir, layout.ON_END_CLAIM)
    content = {"by": by, "t": time.time(), "pid": os.getpid()}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
    except FileExistsError:
        return False, read_claim(run_dir)
    try:
        os.write(fd, (json.dumps(content, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True, content


def read_claim(run_dir: str) -> Optional[Dict[str, Any]]:
    """The claim, waiting a moment for one whose creator has not written it yet; None if there is none."""
    path = os.path.join(run_dir, layout.ON_END_CLAIM)
    deadline = time.monotonic() + CLAIM_READ_SECONDS
    while True:
        found = read_json(path)
        if found is not None or not os.path.lexists(path):
            return found
        if time.monotonic() >= deadline:
            return {"by": None, "unreadable": True}
        time.sleep(0.02)


def read_result(run_dir: str) -> Optional[Dict[str, Any]]:
    return read_json(os.path.join(run_dir, layout.ON_END_RESULT))


def write_result(run_dir: str, result: Dict[str, Any]) -> None:
    atomic_write_json(os.path.join(run_dir, layout.ON_END_RESULT), result)


def new_result(by: str, proof: Optional[Dict[str, Any]], command: Optional[List[str]]) -> Dict[str, Any]:
    return {
        "by": by,
        "started_at": time.time(),
        "ended_at": None,
        "proof": proof,
        "command": command,
        "exit_code": None,
        "output_tail": "",
        "error": None,
    }


# ---- proofs --------------------------------------------------------------------------------


def look(project_dir: str, checkpoint_dir: str, globs: Optional[List[str]], since: float) -> Dict[str, int]:
    """The checkpoint files written at or after `since` (core.checkpoints: no temp file counts): path -> size."""
    files = checkpoints.find(project_dir, checkpoint_dir, globs or None)
    return {checkpoints.absolute(f, project_dir, checkpoint_dir): int(f["size"]) for f in files if f["mtime"] >= since}


def compare(first: Dict[str, int], second: Dict[str, int], expected: List[str]) -> Dict[str, Any]:
    """Whether checkpoints are in place from two looks: every file the run wrote (and every one it
    reported, `expected`) exists in both, is not a temp file, and kept its size. Pure."""
    missing = sorted(p for p in expected if p not in second and not is_partial(os.path.basename(p)))
    temp = sorted(p for p in expected if is_partial(os.path.basename(p)))
    changing = sorted(p for p in set(first) | set(second) if first.get(p) != second.get(p))
    return {
        "held": not (missing or temp or changing),
        "files": [{"path": p, "size": second[p]} for p in sorted(second)],
        "missing": missing,
        "temp": temp,
        "changing": changing,
    }


def why_not(found: Dict[str, Any]) -> str:
    parts = []
    for key, text in (("changing", "still changing"), ("missing", "missing"), ("temp", "only a temp file")):
        if found.get(key):
            parts.append("%s: %s" % (text, ", ".join(found[key][:5])))
    return "; ".join(parts)


# ---- the command ---------------------------------------------------------------------------


def run_command(argv: List[str], cwd: str, env: Dict[str, str], timeout: float) -> Tuple[Optional[int], str, str]:
    """(exit code, the output's tail, an error) of `argv` run with no shell, stopped after `timeout`."""
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd if os.path.isdir(cwd) else "/",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError:
        return None, "", "cannot run %r: no such file or program" % argv[0]
    except PermissionError:
        return None, "", "cannot run %r: permission denied" % argv[0]
    except OSError as exc:
        return None, "", "cannot run %r: %s" % (argv[0], exc)
    error = ""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        out, _ = proc.communicate()
        error = "timed out after %gs; killed" % timeout
    tail = (out or b"")[-OUTPUT_TAIL_BYTES:].decode("utf-8", "replace")
    return proc.returncode, tail, error


def grace_left(grace: float, state: Dict[str, Any], now: Optional[float] = None) -> float:
    """What remains of a controller's grace, counted from the run's end: a controller following the
    run has had that long to claim, so time spent since (the final checkpoint upload) is not waited
    again. Pure."""
    ended = state.get("ended_at") or state.get("exited_at")
    if ended is None or not policies.is_finite(ended):
        return grace
    spent = (time.time() if now is None else now) - float(ended)
    return max(0.0, min(grace, grace - spent))


# ---- the agent's step ----------------------------------------------------------------------


class EndStep:
    """The agent's end-of-run step for one run dir; `event` appends to events.jsonl."""

    def __init__(
        self,
        run_dir: str,
        project_dir: str,
        checkpoint_dir: str,
        spec: Dict[str, Any],
        event: Callable[..., None],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.run_dir = run_dir
        self.project_dir = project_dir
        self.checkpoint_dir = checkpoint_dir
        self.spec = spec
        self.event = event
        self.sleep = sleep

    def claimed_by_other(self) -> Optional[Dict[str, Any]]:
        if not os.path.lexists(os.path.join(self.run_dir, layout.ON_END_CLAIM)):
            return None
        return read_claim(self.run_dir) or {"by": None}

    def perform(self, state: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Run the step for a run that has ended; the result written, or None when nothing ran."""
        try:
            cfg = settings(self.spec)
        except BadOnEnd as exc:
            self.event("on_end_refused", reason=str(exc))
            return None
        command = cfg["command"]
        if command is None:
            return None
        deadline = time.monotonic() + grace_left(cfg["controller_grace"], state)
        while time.monotonic() < deadline and self.claimed_by_other() is None:
            self.sleep(POLL_SECONDS)
        other = self.claimed_by_other()
        if other is not None:
            self.event("on_end_skipped", claimed_by=other.get("by"))
            return None
        proof, reason = self.prove(cfg, state)
        if reason == "claimed":
            return None
        if reason and cfg["proof_required"]:
            self.event("on_end_refused", reason=reason, proof=proof, command=command)
            return None
        if reason:
            # A step that keeps the disk (a stop) goes ahead without the proof: the files stay
            # where they are, and billing must end either way.
            self.event("on_end_unproven", reason=reason, proof=proof, command=command)
        claimed, holder = claim(self.run_dir, "agent")
        if not claimed:
            self.event("on_end_skipped", claimed_by=(holder or {}).get("by"))
            return None
        result = new_result("agent", proof, command)
        for key in ("action", "becomes"):
            if cfg.get(key) is not None:
                result[key] = cfg[key]
        write_result(self.run_dir, result)  # under way: a power-off may end this process mid-command
        self.event("on_end_started", command=command, proof=proof)
        code, tail, error = run_command(command, self.project_dir, self.environment(state), cfg["timeout"])
        result.update({"ended_at": time.time(), "exit_code": code, "output_tail": tail, "error": error or None})
        write_result(self.run_dir, result)
        self.event("on_end_finished", exit_code=code, error=error or None)
        return result

    def prove(self, cfg: Dict[str, Any], state: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
        """(the proof, why it does not hold: "" when it does, "claimed" when a controller took over)."""
        proof: Dict[str, Any] = {}
        if "checkpoints_in_place" in cfg["after"]:
            proof, reason = self.prove_in_place(cfg, state)
            if reason:
                return proof, reason
        if "checkpoints_in_s3" in cfg["after"]:
            return proof, self.prove_in_s3(cfg, proof)
        return proof, ""

    def prove_in_s3(self, cfg: Dict[str, Any], proof: Dict[str, Any]) -> str:
        """Wait (up to proof_timeout) for the uploader's record that every checkpoint is verified in S3."""
        from . import uploads

        globs = self.spec.get("checkpoint_globs") or None
        deadline = time.monotonic() + cfg["proof_timeout"]
        while True:
            found, reason = uploads.proof(self.run_dir, self.project_dir, self.checkpoint_dir, globs)
            proof["checkpoints_in_s3"] = found
            if not reason:
                return ""
            if self.claimed_by_other() is not None:
                return "claimed"
            if time.monotonic() >= deadline:
                return reason
            self.sleep(STABLE_SECONDS)

    def prove_in_place(self, cfg: Dict[str, Any], state: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
        proof: Dict[str, Any] = {}
        since = float(state.get("started_at") or 0)
        globs = self.spec.get("checkpoint_globs") or None
        expected = self.reported(state)
        deadline = time.monotonic() + cfg["proof_timeout"]
        first = look(self.project_dir, self.checkpoint_dir, globs, since)
        looks = 1
        while True:
            self.sleep(STABLE_SECONDS)
            second = look(self.project_dir, self.checkpoint_dir, globs, since)
            looks += 1
            found = compare(first, second, expected)
            if found["held"]:
                proof["checkpoints_in_place"] = {"held": True, "files": found["files"], "looks": looks}
                return proof, ""
            if self.claimed_by_other() is not None:
                return proof, "claimed"
            if time.monotonic() >= deadline:
                proof["checkpoints_in_place"] = dict(found, looks=looks)
                return proof, "checkpoints not in place after %gs (%s)" % (cfg["proof_timeout"], why_not(found))
            first = second

    def reported(self, state: Dict[str, Any]) -> List[str]:
        """The checkpoint the run named itself (last_checkpoint), as an absolute path."""
        named = state.get("last_checkpoint")
        if not isinstance(named, str) or not named:
            return []
        return [named if os.path.isabs(named) else os.path.join(self.project_dir, named)]

    def environment(self, state: Dict[str, Any]) -> Dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "RUNCTL_RUN_ID": str(self.spec.get("run_id", "")),
                "RUNCTL_RUN_DIR": self.run_dir,
                "RUNCTL_RUN_STATUS": str(state.get("status", "")),
            }
        )
        return env


# ---- what a controller asks (agent on-end-claim / on-end-result) -----------------------------


def controller_claim(run_dir: str, by: str = "controller") -> Dict[str, Any]:
    """Claim the step for a controller: {"claimed", "claim", "result"} (the result once written)."""
    if not os.path.isdir(run_dir):
        return {"claimed": False, "claim": None, "result": None, "error": "no run directory %s" % run_dir}
    claimed, holder = claim(run_dir, by)
    if claimed:
        _event(run_dir, "on_end_claimed", by=by)
    return {"claimed": claimed, "claim": holder, "result": read_result(run_dir)}


RESULT_KEYS = ("started_at", "ended_at", "proof", "command", "exit_code", "output_tail", "error")


def controller_result(run_dir: str, given: Any) -> Dict[str, Any]:
    """Record the result of the step a controller claimed; refused unless a controller holds the claim."""
    if not isinstance(given, dict):
        return {"ok": False, "error": "the result must be a JSON object"}
    holder = read_claim(run_dir) if os.path.isdir(run_dir) else None
    if holder is None or holder.get("by") != "controller":
        who = "nobody" if holder is None else "the %s" % holder.get("by")
        return {"ok": False, "error": "the end-of-run step was claimed by %s, not by a controller" % who}
    result = new_result("controller", None, None)
    result.update({k: given[k] for k in RESULT_KEYS if k in given})
    extra = {k: v for k, v in given.items() if k not in RESULT_KEYS and k != "by"}
    result.update(extra)  # provider details (release action, confirmed state) travel along
    if not policies.is_finite(result.get("ended_at")):
        result["ended_at"] = time.time()
    write_result(run_dir, result)
    _event(run_dir, "on_end_result", by="controller", exit_code=result.get("exit_code"), error=result.get("error"))
    return {"ok": True, "result": result}


def _event(run_dir: str, name: str, **data: Any) -> None:
    data.update({"t": time.time(), "event": name})
    try:
        append_json(os.path.join(run_dir, layout.EVENTS), data)
    except OSError:
        pass  # the claim and on_end.json are the record; events.jsonl is the history
