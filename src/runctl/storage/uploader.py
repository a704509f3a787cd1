"""The checkpoint uploader: a process beside the run that puts each finished checkpoint in S3, verified.

Started by the agent (agent/uploads.py) as `TOOL_PYTHON AGENT.pyz s3-upload RUN_DIR --since T`
in runctl's tool environment (boto3). It never blocks training: it only reads the checkpoint files.

- A checkpoint (core.checkpoints.units: a file, or a directory of the checkpoint dir) counts as
  finished when it is not a temp or hidden file, it has stopped changing (same files, sizes and
  mtimes for `stable_seconds`) and no process holds one of its files open for writing. An atomic
  save (runctl.training.atomic_path: write a temp, rename) is finished the moment it appears; a
  script writing in place is waited for while it still has the file open.
- When several wait, the newest goes first; after each upload the dir is looked at again, so a
  newer checkpoint never waits behind older ones, and the older ones follow: none is dropped.
- Each file is uploaded (multipart above `multipart_threshold`) and verified (s3.upload_file),
  retried with backoff on transient errors (core.retry), then tried again later, never given up
  while the run goes. A file that changed during its upload does not count and goes again.
- Once all of a checkpoint's files are verified, it is added to the run's manifest in the bucket
  (storage.objects), and only then counts: events.jsonl gets `checkpoint_uploaded`, and the
  state file (core.layout.S3_STATE, read by the agent for status.json and by the end-of-run proof
  `checkpoints_in_s3`) says "checkpoint N uploaded and verified".
- When the script has exited (status.json has `exited_at`) or the agent is gone, a final pass
  uploads what is left at once (no waiting for stability: nothing writes any more) and the process
  exits: 0 when everything is verified, 1 when `final_timeout` ran out first. At start it checks
  the bucket and writes the manifest; if that fails it exits 3 before the script starts.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from ..core import checkpoints, layout, retry
from ..core.fsutil import append_json, atomic_write_json, read_json, read_jsonl
from . import objects

SCAN_SECONDS = 0.5
FINAL_SCAN_SECONDS = 0.05
STABLE_SECONDS = 1.0
FINAL_TIMEOUT = 600.0
LATER_SECONDS = (2.0, 5.0, 10.0, 30.0)  # after a streak of retries failed: when to try that checkpoint again
EXIT_DONE, EXIT_UNFINISHED, EXIT_UNAVAILABLE = 0, 1, 3
MAX_STEPS = 200000  # step changes remembered to date checkpoints
_NUMBER_IN_NAME = {"epoch": re.compile(r"epoch[=_\-]?(\d+)", re.I), "step": re.compile(r"step[=_\-]?(\d+)", re.I)}


def settings(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The spec's checkpoint_s3 block with its defaults; raises objects.BadUri for a bad URI."""
    from . import s3

    given = dict(spec.get("checkpoint_s3") or {})
    objects.parse_uri(given.get("uri", ""))
    cfg: Dict[str, Any] = {
        "multipart_threshold": s3.MULTIPART_THRESHOLD,
        "part_size": s3.PART_SIZE,
        "threads": s3.THREADS,
        "stable_seconds": STABLE_SECONDS,
        "final_timeout": FINAL_TIMEOUT,
        "region": None,
    }
    cfg.update({k: v for k, v in given.items() if v is not None})
    return cfg


# ---- what the run's processes are doing to a file ------------------------------------------------


def open_for_writing(paths: List[str]) -> List[str]:
    """Those of `paths` some process (other than this one) holds open for writing (Linux /proc)."""
    wanted = {os.path.realpath(p) for p in paths}
    held = set()
    me = str(os.getpid())
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and p != me]
    except OSError:
        return []
    for pid in pids:
        fd_dir = "/proc/%s/fd" % pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target not in wanted:
                continue
            try:
                with open("/proc/%s/fdinfo/%s" % (pid, fd)) as handle:
                    flags = next((line.split()[1] for line in handle if line.startswith("flags:")), "0")
            except (OSError, IndexError):
                continue
            if int(flags, 8) & 0o3:  # O_WRONLY or O_RDWR
                held.add(target)
    return sorted(held)


class Steps:
    """The run's step and epoch over time (metrics.jsonl), to say which step a checkpoint holds."""

    def __init__(self, path: str, saved_path: Optional[str] = None) -> None:
        self.path = path
        self.offset = 0
        self.saved_path = saved_path
        self.saved_offset = 0
        self.saved: Dict[str, Tuple[Any, Any]] = {}  # realpath -> (step, epoch) of its latest commit
        self.times: List[float] = []
        self.values: List[Tuple[Any, Any]] = []

    def read(self) -> None:
        records, self.offset = read_jsonl(self.path, self.offset)
        last = self.values[-1] if self.values else (None, None)
        for record in records:
            t = record.get("t")
            if not isinstance(t, (int, float)):
                continue
            value = (record.get("step", last[0]), record.get("epoch", last[1]))
            if value != last:
                self.times.append(float(t))
                self.values.append(value)
                last = value
        if len(self.times) > MAX_STEPS:  # a run of millions of steps: keep the recent half
            del self.times[: MAX_STEPS // 2], self.values[: MAX_STEPS // 2]

    def read_saved(self) -> None:
        if self.saved_path is None:
            return
        records, self.saved_offset = read_jsonl(self.saved_path, self.saved_offset)
        for record in records:
            if isinstance(record.get("path"), str):
                self.saved[record["path"]] = (record.get("step"), record.get("epoch"))

    def at(self, when: float, name: str, path: Optional[str] = None) -> Tuple[Any, Any]:
        """(step, epoch) the helper noted when it committed `path`, else reported last before
        `when`, else numbers in the name (`epoch=3-step=500`)."""
        self.read_saved()
        noted = self.saved.get(os.path.realpath(path)) if path else None
        if noted is not None:
            return noted
        self.read()
        index = bisect.bisect_right(self.times, when + 0.001) - 1
        step, epoch = self.values[index] if index >= 0 else (None, None)
        found = {k: rx.search(name) for k, rx in _NUMBER_IN_NAME.items()}
        if step is None and found["step"]:
            step = int(found["step"].group(1))
        if epoch is None and found["epoch"]:
            epoch = int(found["epoch"].group(1))
        return step, epoch


signature = checkpoints.unit_signature


# ---- the uploader --------------------------------------------------------------------------------


class _Woken(Exception):
    """SIGUSR1 while asleep: the agent says the script has exited; look now, not at the next scan."""


class Uploader:
    def __init__(self, run_dir: str, since: float, client: Any = None) -> None:
        self.run_dir = os.path.abspath(run_dir)
        spec = read_json(os.path.join(self.run_dir, layout.SPEC))
        if spec is None:
            raise SystemExit("runctl s3-upload: no readable %s in %s" % (layout.SPEC, self.run_dir))
        self.spec = spec
        self.cfg = settings(spec)
        self.uri = self.cfg["uri"]
        self.bucket, self.prefix = objects.parse_uri(self.uri)
        self.run_id = str(spec["run_id"])
        self.project_dir = spec["project_dir"]
        self.checkpoint_dir = layout.checkpoint_dir(self.project_dir, spec.get("checkpoint_dir"))
        self.globs = spec.get("checkpoint_globs") or None
        self.since = since
        self.ppid = os.getppid()
        self.client = client
        self.steps = Steps(os.path.join(self.run_dir, layout.METRICS), os.path.join(self.run_dir, layout.SAVED))
        self.manifest: Dict[str, Any] = objects.new_manifest(self.bucket, self.prefix, self.run_id)
        self.verified: Dict[str, Dict[str, Any]] = {}  # name -> {"signature", "key", "checksum", ...}
        self.seen: Dict[str, Tuple[Dict[str, List[float]], float]] = {}  # name -> (signature, since when)
        self.failures: Dict[str, Dict[str, Any]] = {}
        self.gone_reported: set = set()
        self.final_deadline: Optional[float] = None
        self.state: Dict[str, Any] = {
            "pid": os.getpid(),
            "phase": "starting",
            "uri": self.uri,
            "bucket": self.bucket,
            "prefix": objects.run_prefix(self.prefix, self.run_id),
            "manifest_key": objects.manifest_key(self.prefix, self.run_id),
            "since": since,
            "uploaded": 0,
            "last": None,
            "message": None,
            "error": None,
            "pending": [],
            "uploading": None,
        }
        self.written: Optional[str] = None
        self.sleeping = False
        self.woken = False

    def wake(self, signum: int = 0, frame: Any = None) -> None:
        """The SIGUSR1 handler: interrupts a nap only (never an upload), else the next nap is skipped."""
        self.woken = True
        if self.sleeping:
            raise _Woken()

    def nap(self, seconds: float) -> None:
        if self.woken:
            self.woken = False
            return
        self.sleeping = True
        try:
            time.sleep(seconds)
        except _Woken:
            pass
        finally:
            self.sleeping = False
            self.woken = False

    # -- the record ---------------------------------------------------------------------------------

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def event(self, kind: str, **data: Any) -> None:
        data.update({"t": time.time(), "event": kind, "source": "s3-upload"})
        try:
            append_json(self.path(layout.EVENTS), data)
        except OSError:
            pass  # the state file and the manifest are the record

    def save(self, **changes: Any) -> None:
        self.state.update(changes)
        self.state["verified"] = self.verified
        self.state["failures"] = {k: {"error": v["error"], "attempts": v["attempts"]} for k, v in self.failures.items()}
        text = json.dumps(self.state, sort_keys=True)
        if text == self.written:
            return
        self.state["updated_at"] = time.time()
        atomic_write_json(self.path(layout.S3_STATE), self.state, fsync=False)
        self.written = text

    # -- start --------------------------------------------------------------------------------------

    def connect(self) -> bool:
        """Check the bucket and write (or take up) the run's manifest; False (recorded) when S3 refuses."""
        from . import s3

        key = objects.manifest_key(self.prefix, self.run_id)

        def begin() -> None:
            # A GET first: unlike HEAD its refusal names the reason (SignatureDoesNotMatch, NoSuchBucket).
            existing = s3.get_json(self.client, self.bucket, key)
            if existing and existing.get("run_id") == self.run_id:
                self.take_up(existing)  # an earlier uploader of this run (it was restarted)
            else:
                s3.put_json(self.client, self.bucket, key, self.manifest)

        try:
            if self.client is None:
                self.client = s3.client(region=self.cfg.get("region"))
            retry.retry(begin, s3.is_transient, attempts=6, base=0.5)  # about 12 s of S3 trouble at start
        except Exception as exc:
            error = "cannot use %s: %s" % (self.uri, s3.describe(exc))
            self.event("checkpoint_s3_unavailable", uri=self.uri, error=error)
            self.save(phase="failed", error=error, message=error)
            return False
        self.event("checkpoint_s3_ready", uri=self.uri, prefix=self.state["prefix"])
        self.save(phase="ready")
        return True

    def take_up(self, manifest: Dict[str, Any]) -> None:
        self.manifest = manifest
        previous = read_json(self.path(layout.S3_STATE)) or {}
        for name, info in (previous.get("verified") or {}).items():
            if objects.find_entry(manifest, name) is not None:
                self.verified[name] = info
        self.state["uploaded"] = len(self.verified)

    # -- the loop -----------------------------------------------------------------------------------

    def final(self) -> bool:
        if self.final_deadline is not None:
            return True
        status = read_json(self.path(layout.STATUS)) or {}
        if status.get("exited_at") is None and os.getppid() == self.ppid:
            return False
        self.final_deadline = time.monotonic() + float(self.cfg["final_timeout"])
        self.event("checkpoint_final_pass", reason="script exited" if status.get("exited_at") else "agent gone")
        self.save(phase="final")
        return True

    def scan(self) -> Dict[str, Dict[str, Any]]:
        files = checkpoints.find(self.project_dir, self.checkpoint_dir, self.globs)
        return checkpoints.units([f for f in files if float(f["mtime"]) >= self.since])

    def ready(self, units: Dict[str, Dict[str, Any]], final: bool) -> List[Dict[str, Any]]:
        """Finished checkpoints not yet verified as they are now, newest first."""
        now = time.monotonic()
        waiting = []
        for name, unit in units.items():
            sig = signature(unit)
            if (self.verified.get(name) or {}).get("signature") == sig:
                continue
            seen = self.seen.get(name)
            if seen is None or seen[0] != sig:
                self.seen[name] = (sig, now)
                seen = self.seen[name]
            failure = self.failures.get(name)
            if failure is not None and now < failure["next_try"]:
                continue
            if not final and now - seen[1] < float(self.cfg["stable_seconds"]):
                continue
            waiting.append(unit)
        if waiting:
            held = set(
                open_for_writing(
                    [
                        checkpoints.absolute(f, self.project_dir, self.checkpoint_dir)
                        for unit in waiting
                        for f in unit["files"]
                    ]
                )
            )
            if held:
                waiting = [
                    u
                    for u in waiting
                    if not any(
                        os.path.realpath(checkpoints.absolute(f, self.project_dir, self.checkpoint_dir)) in held
                        for f in u["files"]
                    )
                ]
        return sorted(waiting, key=lambda u: (u["mtime"], u["name"]), reverse=True)

    def pending(self, units: Dict[str, Dict[str, Any]]) -> List[str]:
        out = []
        for name, unit in units.items():
            if (self.verified.get(name) or {}).get("signature") != signature(unit):
                out.append(name)
        for name in list(self.seen):
            if name not in units and name not in self.verified and name not in self.gone_reported:
                self.gone_reported.add(name)
                self.event("checkpoint_deleted_before_upload", name=name)
        return sorted(out, key=lambda n: units[n]["mtime"], reverse=True)

    def run(self) -> int:
        if not self.connect():
            return EXIT_UNAVAILABLE
        while True:
            final = self.final()
            units = self.scan()
            ready = self.ready(units, final)
            if ready:
                self.upload(ready[0])
                continue  # look again: a newer checkpoint may have been written meanwhile
            pending = self.pending(units)
            self.save(pending=pending, uploading=None)
            if final and not pending:
                self.close_manifest()
                self.save(phase="done")
                self.event("checkpoint_uploads_done", uploaded=self.state["uploaded"], last=self.state["last"])
                return EXIT_DONE
            if final and self.final_deadline is not None and time.monotonic() >= self.final_deadline:
                error = "not verified in S3 after %gs: %s" % (self.cfg["final_timeout"], ", ".join(pending[:5]))
                self.save(phase="failed", error=error, message=error)
                self.event("checkpoint_uploads_unfinished", pending=pending, error=error)
                return EXIT_UNFINISHED
            self.nap(FINAL_SCAN_SECONDS if final else SCAN_SECONDS)

    def close_manifest(self) -> None:
        """Say in the manifest that the run's uploads are over (`ended_at`): from then on no run is
        counted live because of it (checkpoint cleanup, from any machine). Best effort."""
        from . import s3

        self.merge_remote()
        ended = dict(self.manifest, ended_at=time.time())
        try:
            retry.retry(
                lambda: s3.put_json(self.client, self.bucket, self.state["manifest_key"], ended),
                s3.is_transient,
                attempts=3,
                base=0.5,
            )
        except Exception as exc:
            self.event("checkpoint_manifest_not_closed", error=s3.describe(exc))
            return
        self.manifest = ended

    def merge_remote(self) -> None:
        """Take up what `checkpoint cleanup` removed from the manifest in the bucket meanwhile (its
        `removed` list), so the next write does not list deleted checkpoints again."""
        from . import s3

        try:
            remote = s3.get_json(self.client, self.bucket, self.state["manifest_key"])
        except Exception:
            return  # the write that follows is retried and says what is wrong
        self.manifest = objects.take_removed(self.manifest, remote)

    # -- one checkpoint -----------------------------------------------------------------------------

    def upload(self, unit: Dict[str, Any]) -> None:
        from . import s3

        name = unit["name"]
        sig = signature(unit)
        self.save(uploading=name)
        started = time.monotonic()
        results = []
        try:
            for entry in unit["files"]:
                local = checkpoints.absolute(entry, self.project_dir, self.checkpoint_dir)
                key = objects.object_key(self.prefix, self.run_id, entry["path"])
                results.append(dict(self.send(local, key, name), path=entry["path"]))
            document = self.entry(unit, results)
            self.merge_remote()
            manifest = objects.record(self.manifest, document)
            retry.retry(
                lambda: s3.put_json(self.client, self.bucket, self.state["manifest_key"], manifest),
                s3.is_transient,
                attempts=5,
                base=0.5,
                on_retry=lambda n, exc, delay: self.retrying(name, n, exc, delay),
            )
        except s3.UploadChanged as exc:
            self.seen.pop(name, None)  # wait for it to settle again
            self.event("checkpoint_changed_during_upload", name=name, detail=str(exc))
            return
        except FileNotFoundError:
            self.seen.pop(name, None)  # deleted or replaced meanwhile: the next look decides
            return
        except Exception as exc:
            self.failed(name, exc)
            return
        self.manifest = manifest
        self.failures.pop(name, None)
        self.verified[name] = {
            "signature": sig,
            "key": document["key"],
            "checksum": document["checksum"],
            "size": document["size"],
            "step": document.get("step"),
            "epoch": document.get("epoch"),
        }
        count = len(self.verified)
        message = "checkpoint %d uploaded and verified (%s)" % (count, name)
        seconds = round(time.monotonic() - started, 3)
        self.event(
            "checkpoint_uploaded",
            name=name,
            key=document["key"],
            size=document["size"],
            checksum=document["checksum"],
            step=document.get("step"),
            epoch=document.get("epoch"),
            seconds=seconds,
            verified=True,
            n=count,
        )
        # `last` is the newest verified checkpoint (what a resume takes), whatever order uploads finished in.
        self.save(uploaded=count, last=manifest.get("latest"), message=message, error=None, uploading=None)

    def send(self, local: str, key: str, name: str) -> Dict[str, Any]:
        from . import s3

        return retry.retry(
            lambda: s3.upload_file(
                self.client,
                self.bucket,
                key,
                local,
                threshold=int(self.cfg["multipart_threshold"]),
                part_size=int(self.cfg["part_size"]),
                threads=int(self.cfg["threads"]),
            ),
            s3.is_transient,
            attempts=5,
            base=0.5,
            on_retry=lambda n, exc, delay: self.retrying(name, n, exc, delay),
        )

    def retrying(self, name: str, attempt: int, exc: BaseException, delay: float) -> None:
        from . import s3

        self.event("checkpoint_upload_retry", name=name, attempt=attempt, error=s3.describe(exc), delay=delay)

    def failed(self, name: str, exc: BaseException) -> None:
        """A streak of attempts failed: try this checkpoint again later (never dropped)."""
        from . import s3

        failure = self.failures.setdefault(name, {"attempts": 0})
        failure["attempts"] += 1
        failure["error"] = s3.describe(exc)
        later = LATER_SECONDS[min(failure["attempts"], len(LATER_SECONDS)) - 1]
        failure["next_try"] = time.monotonic() + later
        message = "checkpoint upload failing (%s): %s; trying again in %gs" % (name, failure["error"], later)
        self.event("checkpoint_upload_failed", name=name, error=failure["error"], attempts=failure["attempts"])
        self.save(error=failure["error"], message=message, uploading=None)

    def entry(self, unit: Dict[str, Any], results: List[Dict[str, Any]]) -> Dict[str, Any]:
        """The checkpoint's manifest entry (a directory lists its files; its checksum covers them all)."""
        from . import checksums

        step, epoch = self.steps.at(unit["mtime"], unit["name"], os.path.join(self.checkpoint_dir, unit["name"]))
        document: Dict[str, Any] = {
            "name": unit["name"],
            "size": unit["size"],
            "mtime": unit["mtime"],
            "time": time.time(),
            "step": step,
            "epoch": epoch,
            "checksum_algorithm": checksums.ALGORITHM,
            "verified": True,
        }
        if unit["is_dir"]:
            listing = "".join("%s\t%s\n" % (r["path"], r["checksum"]) for r in results)
            document.update(
                {
                    "key": objects.object_key(self.prefix, self.run_id, unit["name"]) + "/",
                    "checksum": checksums.sha256_b64(listing.encode()),
                    "files": [
                        {k: r[k] for k in ("path", "key", "size", "checksum", "parts", "part_size", "sha256")}
                        for r in results
                    ],
                }
            )
        else:
            only = results[0]
            document.update({k: only[k] for k in ("key", "checksum", "parts", "part_size", "sha256")})
        return document


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="runctl-agent s3-upload")
    parser.add_argument("run_dir")
    parser.add_argument("--since", type=float, required=True, help="only checkpoints written at or after this time")
    args = parser.parse_args(argv)
    uploader = Uploader(args.run_dir, args.since)
    signal.signal(signal.SIGUSR1, uploader.wake)
    return uploader.run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
