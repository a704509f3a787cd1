"""What a run needs from S3 before its script starts, put on the host and verified.

Started by the agent (agent/fetches.py) as `TOOL_PYTHON AGENT.pyz s3-fetch RUN_DIR` in runctl's
tool environment (boto3), with the same credentials and endpoint as the checkpoint uploader. Its
stdout is the run log, so its progress lines are there for `runs logs` and `--wait`.

- `resume_s3` in the spec (resolved and verified on the controller from `--resume`): the
  checkpoint, a file or a directory, is downloaded to `<run_dir>/resume/<name>` and verified
  against its manifest entry (every file's size and SHA-256; a plain object's size and ETag)
  before it is renamed into place (storage.catalog.download_entry). A checkpoint that changed in
  S3 since it was resolved, or arrived altered, fails the run: it never trains from scratch.

- `data_s3` (`--data-s3 s3://bucket/path/`): every object under the prefix is downloaded into the
  run's data dir (spec `data_dir`, else `<project>/data`; the script's RUNCTL_DATA_DIR), in
  parallel, with progress lines. An index of what was fetched (`.runctl-data-s3.json` in the data
  dir: each file's ETag, size and mtime) lets the next run skip every object still there unchanged
  with the same ETag and size. Each file lands under a hidden partial name and is renamed into place
  once its size (and MD5, for a single-part ETag) is right. A key that is not a safe relative path
  (`..`, empty parts) is skipped and said: nothing is ever written outside the data dir. A missing
  bucket, or a prefix with no objects, fails the run with the fix.

With `--check` it only looks (the resume checkpoint's HEAD, the data prefix's listing), so the
agent can fail the start itself (exit 4) on what can fail at once, then answer the launcher and
download while the controller follows the progress.

The outcome goes to `<run_dir>/s3_fetch.json` (FETCH_RESULT): {"ok": true, "env": {RUNCTL_*: path}}
or {"ok": false, "error": one line, "hint": the fix or null}. Exit 0 when ok, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..core import layout, retry
from ..core.fsutil import atomic_write_json, read_json

FETCH_RESULT = "s3_fetch.json"
RESUME_DIR = "resume"
DATA_DIR = "data"
DATA_INDEX = ".runctl-data-s3.json"
DATA_THREADS = 16
PROGRESS_SECONDS = 2.0
PARTIAL = ".runctl-partial"


class FetchFailed(Exception):
    """An input could not be put on the host as S3 holds it: the script must not start."""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def say(line: str) -> None:
    """A progress line in the run log (this process's stdout is the log)."""
    sys.stdout.write("[runctl] %s\n" % line)
    sys.stdout.flush()


def s3_client(cfg: Dict[str, Any]) -> Any:
    from . import s3

    return s3.client(region=cfg.get("region"), attempts=5, timeout=20.0)


def fetch_resume(run_dir: str, value: Dict[str, Any], tell: Callable[[str], None] = say) -> str:
    """The checkpoint of `spec.resume_s3` under <run_dir>/resume/, verified; its path."""
    from . import catalog, s3

    bucket, entry = str(value.get("bucket") or ""), value.get("entry") or {}
    uri = str(value.get("uri") or "s3://%s/%s" % (bucket, entry.get("key", "")))
    if not bucket or not entry.get("name"):
        raise FetchFailed("resume_s3 in the spec names no checkpoint (bucket and entry)")
    dest = os.path.join(run_dir, RESUME_DIR)
    os.makedirs(dest, exist_ok=True)
    tell("resuming from %s: downloading %s" % (uri, _size(entry)))
    started = time.monotonic()
    client = s3_client(value)
    try:
        path = retry.retry(
            lambda: catalog.download_entry(client, bucket, entry, dest, progress=tell),
            s3.is_transient,
            attempts=4,
            base=1.0,
        )
    except catalog.NotVerified as exc:
        raise FetchFailed(
            "the checkpoint to resume from is not what its manifest says: %s" % exc,
            "S3 no longer holds it as it was uploaded; resume from another one (runctl checkpoint list ...)",
        ) from None
    except FileExistsError as exc:
        raise FetchFailed("%s exists on the host and is not the checkpoint %s" % (exc, uri)) from None
    except Exception as exc:
        if s3.error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            raise FetchFailed(
                "the checkpoint to resume from is gone from S3: %s" % uri,
                "resume from another one: runctl checkpoint list ...",
            ) from None
        raise FetchFailed("cannot download %s: %s" % (uri, s3.describe(exc))) from None
    tell("resume checkpoint verified: %s (%.1fs)" % (path, time.monotonic() - started))
    return path


def check_resume(value: Dict[str, Any]) -> None:
    """Before the launch is answered: S3 still holds the checkpoint as its entry says (HEAD only)."""
    from . import catalog, s3

    bucket, entry = str(value.get("bucket") or ""), value.get("entry") or {}
    uri = str(value.get("uri") or "s3://%s/%s" % (bucket, entry.get("key", "")))
    if not bucket or not entry.get("name"):
        raise FetchFailed("resume_s3 in the spec names no checkpoint (bucket and entry)")
    client = s3_client(value)
    try:
        if entry.get("files") or entry.get("checksum"):
            problem = catalog.check_entry(client, bucket, entry)
        else:
            head = catalog.plain_entry(client, bucket, str(entry.get("key")))
            problem = "it is gone" if head is None else None
            if head is not None and (head["size"], head["etag"]) != (entry.get("size"), entry.get("etag")):
                problem = "%d bytes, ETag %s: not the object --resume found" % (head["size"], head["etag"])
    except Exception as exc:
        raise FetchFailed("cannot read %s: %s" % (uri, s3.describe(exc))) from None
    if problem:
        raise FetchFailed(
            "the checkpoint to resume from is not what its manifest says: %s" % problem,
            "S3 no longer holds it as it was uploaded; resume from another one (runctl checkpoint list ...)",
        )


def _size(entry: Dict[str, Any]) -> str:
    files = entry.get("files") or [entry]
    total = sum(int(f.get("size") or 0) for f in files)
    return "%d file%s, %.1f MB" % (len(files), "" if len(files) == 1 else "s", total / 1e6)


# ---- data ----------------------------------------------------------------------------------------


def data_dir_of(spec: Dict[str, Any]) -> str:
    return str(spec.get("data_dir") or os.path.join(str(spec["project_dir"]), DATA_DIR))


def safe_parts(relative: str) -> Optional[List[str]]:
    """The path parts of a key below the prefix, or None when it is not a plain relative path."""
    parts = relative.split("/")
    if not relative or relative == DATA_INDEX or "\0" in relative or any(p in ("", ".", "..") for p in parts):
        return None
    return parts


def inside(real_root: str, path: str) -> bool:
    """Whether `path` resolves (symlinks followed) to a place under `real_root` (a realpath)."""
    return os.path.realpath(path).startswith(real_root + os.sep)


def list_prefix(client: Any, bucket: str, prefix: str) -> List[Dict[str, Any]]:
    """Every object under `prefix` (directory placeholders, keys ending in '/', left out)."""
    found: List[Dict[str, Any]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.extend(o for o in page.get("Contents") or [] if not str(o["Key"]).endswith("/"))
    return found


def _listing(client: Any, uri: str) -> Tuple[str, List[Tuple[str, Dict[str, Any]]]]:
    """(bucket, [(path below the prefix, object)]) of a --data-s3 URI; FetchFailed with the fix."""
    from . import objects, s3

    try:
        bucket, prefix = objects.parse_uri(uri)
    except objects.BadUri as exc:
        raise FetchFailed("--data-s3: %s" % exc) from None
    listed = prefix + "/" if prefix else ""
    try:
        found = retry.retry(lambda: list_prefix(client, bucket, listed), s3.is_transient, attempts=4, base=1.0)
        if not found and prefix:  # s3://bucket/file.csv: that one object
            single = _head(client, bucket, prefix)
            if single is not None:
                return bucket, [(prefix.rsplit("/", 1)[-1], single)]
    except Exception as exc:
        if s3.error_code(exc) == "NoSuchBucket":
            raise FetchFailed(
                "--data-s3 %s: the bucket %s does not exist" % (uri, bucket),
                "name an existing bucket in --data-s3 (aws s3 ls), or create it and upload the data:"
                " aws s3 sync DIR s3://%s/%s/" % (bucket, prefix),
            ) from None
        raise FetchFailed("cannot list %s: %s" % (uri, s3.describe(exc))) from None
    if not found:
        raise FetchFailed(
            "--data-s3 %s: no objects under s3://%s/%s" % (uri, bucket, listed),
            "check the path (aws s3 ls s3://%s/%s), or upload the data first: aws s3 sync DIR s3://%s/%s"
            % (bucket, listed, bucket, listed),
        )
    return bucket, [(str(o["Key"])[len(listed) :], o) for o in found]


def _head(client: Any, bucket: str, key: str) -> Optional[Dict[str, Any]]:
    from . import s3

    head = s3.head_or_none(client, bucket, key)
    if head is None:
        return None
    return {"Key": key, "Size": head.get("ContentLength", 0), "ETag": head.get("ETag", "")}


class DataFetch:
    """One --data-s3 download: the plan (what to fetch, what is unchanged), the parallel fetch, the index."""

    def __init__(self, uri: str, data_dir: str, client: Any, tell: Callable[[str], None] = say) -> None:
        self.uri, self.data_dir, self.client, self.tell = uri, data_dir, client, tell
        self.index_path = os.path.join(data_dir, DATA_INDEX)
        self.real_root = os.path.realpath(data_dir)
        index = read_json(self.index_path) or {}
        known = index.get("objects") if isinstance(index.get("objects"), dict) else {}
        self.index: Dict[str, Dict[str, Any]] = dict(known or {})
        self.lock = threading.Lock()
        self.done_files = self.done_bytes = 0
        self.failed = threading.Event()

    def unchanged(self, relative: str, path: str, etag: str, size: int) -> bool:
        known = self.index.get(relative) or {}
        if known.get("etag") != etag or known.get("size") != size:
            return False
        try:
            info = os.stat(path)
        except OSError:
            return False
        return info.st_size == size and info.st_mtime_ns == known.get("mtime_ns")

    def plan(
        self, listing: List[Tuple[str, Dict[str, Any]]]
    ) -> Tuple[List[Tuple[str, str, str, Dict[str, Any]]], List[str], int]:
        """(what to fetch: (relative, local path, ETag, {key, size}), keys refused as unsafe, unchanged count)."""
        jobs: List[Tuple[str, str, str, Dict[str, Any]]] = []
        unsafe: List[str] = []
        same = 0
        for relative, obj in listing:
            parts = safe_parts(relative)
            path = os.path.join(self.data_dir, *parts) if parts else ""
            if not parts or not inside(self.real_root, path):
                unsafe.append(str(obj["Key"]))
                continue
            etag, size = str(obj.get("ETag") or "").strip('"'), int(obj.get("Size") or 0)
            if self.unchanged(relative, path, etag, size):
                same += 1
            else:
                jobs.append((relative, path, etag, {"key": obj["Key"], "size": size}))
        return jobs, unsafe, same

    def run(self, threads: int = DATA_THREADS) -> Dict[str, Any]:
        started = time.monotonic()
        bucket, listing = _listing(self.client, self.uri)
        os.makedirs(self.data_dir, exist_ok=True)
        jobs, unsafe, same = self.plan(listing)
        if unsafe:
            self.tell(
                "data: skipped %d object(s) whose key is not a safe path under %s: %s"
                % (len(unsafe), self.data_dir, ", ".join(repr(k) for k in unsafe[:5]))
            )
        total = sum(int(job[3]["size"]) for job in jobs)
        self.tell(
            "data from %s: %d object(s), %d to fetch (%.1f MB), %d unchanged -> %s"
            % (self.uri, len(listing) - len(unsafe), len(jobs), total / 1e6, same, self.data_dir)
        )
        try:
            self.fetch_all(bucket, jobs, total, threads, started)
        finally:
            self.save()
        seconds = time.monotonic() - started
        self.tell(
            "data ready in %s: %d fetched (%.1f MB in %.1fs), %d unchanged"
            % (self.data_dir, len(jobs), total / 1e6, seconds, same)
        )
        return {"fetched": len(jobs), "unchanged": same, "skipped_unsafe": unsafe, "bytes": total}

    def fetch_all(
        self, bucket: str, jobs: List[Tuple[str, str, str, Dict[str, Any]]], total: int, threads: int, began: float
    ) -> None:
        if not jobs:
            return
        pool = ThreadPoolExecutor(max_workers=max(1, min(threads, len(jobs))))
        try:
            futures = [pool.submit(self.one, bucket, *job) for job in jobs]
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=PROGRESS_SECONDS, return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        self.failed.set()  # the jobs not started yet return at once
                        for other in pending:
                            other.cancel()
                        raise future.exception()  # type: ignore[misc]
                if pending:
                    with self.lock:
                        files, got = self.done_files, self.done_bytes
                    rate = got / 1e6 / max(0.001, time.monotonic() - began)
                    self.tell(
                        "data: %d/%d objects, %.1f/%.1f MB (%.1f MB/s)"
                        % (files, len(jobs), got / 1e6, total / 1e6, rate)
                    )
        finally:
            pool.shutdown(wait=True)

    def one(self, bucket: str, relative: str, path: str, etag: str, item: Dict[str, Any]) -> None:
        from . import catalog, s3

        if self.failed.is_set():
            return
        key, size = str(item["key"]), int(item["size"])
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        if not inside(self.real_root, folder + os.sep + "x"):
            raise FetchFailed("--data-s3: %r would land outside %s" % (key, self.data_dir))
        partial = os.path.join(folder, ".%s.%s-%s" % (os.path.basename(path), PARTIAL, uuid.uuid4().hex[:8]))
        try:
            try:
                retry.retry(
                    lambda: catalog._fetch(self.client, bucket, key, size, partial, 4, catalog.RANGE_SIZE),
                    s3.is_transient,
                    attempts=4,
                    base=1.0,
                )
            except Exception as exc:
                raise FetchFailed("cannot download s3://%s/%s: %s" % (bucket, key, s3.describe(exc))) from None
            problem = catalog.local_problem(partial, {"size": size, "etag": etag})
            if problem:
                raise FetchFailed(
                    "s3://%s/%s arrived as %s (it changed during the download?): start the run again"
                    % (bucket, key, problem)
                )
            if os.path.isdir(path):
                raise FetchFailed("--data-s3: %s is a directory on the host, and %r a file in S3" % (path, key))
            os.replace(partial, path)
        finally:
            if os.path.lexists(partial):
                os.unlink(partial)
        mtime = os.stat(path).st_mtime_ns
        with self.lock:
            self.index[relative] = {"etag": etag, "size": size, "mtime_ns": mtime, "key": key}
            self.done_files += 1
            self.done_bytes += size

    def save(self) -> None:
        with self.lock:
            document = {"format": 1, "uri": self.uri, "objects": dict(self.index)}
        atomic_write_json(self.index_path, document)


def fetch_data(spec: Dict[str, Any], tell: Callable[[str], None] = say) -> str:
    """The objects of `spec.data_s3` in the run's data dir; that dir."""
    value = spec["data_s3"]
    data_dir = data_dir_of(spec)
    try:
        DataFetch(str(value.get("uri") or ""), data_dir, s3_client(value), tell).run(
            int(value.get("threads") or DATA_THREADS)
        )
    except OSError as exc:
        raise FetchFailed("--data-s3: cannot write into %s: %s" % (data_dir, exc)) from None
    return data_dir


def check(spec: Dict[str, Any]) -> None:
    """What can fail at once, checked before the launch is answered: the resume checkpoint as its
    entry says, the data prefix holding objects. FetchFailed with the fix."""
    if isinstance(spec.get("resume_s3"), dict):
        check_resume(spec["resume_s3"])
    if isinstance(spec.get("data_s3"), dict):
        _listing(s3_client(spec["data_s3"]), str(spec["data_s3"].get("uri") or ""))


def fetch(run_dir: str, spec: Dict[str, Any]) -> Dict[str, str]:
    """Everything the spec asks for; the RUNCTL_* variables that point the script at it."""
    env: Dict[str, str] = {}
    if isinstance(spec.get("resume_s3"), dict):
        env["RUNCTL_RESUME_FROM"] = fetch_resume(run_dir, spec["resume_s3"])
    if isinstance(spec.get("data_s3"), dict):
        env["RUNCTL_DATA_DIR"] = fetch_data(spec)
    return env


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="runctl-agent s3-fetch")
    parser.add_argument("run_dir")
    parser.add_argument("--check", action="store_true", help="only check that S3 holds what the spec names")
    args = parser.parse_args(argv)
    run_dir = os.path.abspath(args.run_dir)
    spec = read_json(os.path.join(run_dir, layout.SPEC)) or {}
    try:
        if args.check:
            check(spec)
            result: Dict[str, Any] = {"ok": True, "env": {}}
        else:
            result = {"ok": True, "env": fetch(run_dir, spec)}
    except FetchFailed as exc:
        say(exc.message)
        result = {"ok": False, "error": exc.message, "hint": exc.hint}
    except Exception as exc:
        import traceback

        traceback.print_exc(file=sys.stdout)
        result = {"ok": False, "error": "the download from S3 failed: %s: %s" % (type(exc).__name__, exc), "hint": None}
    atomic_write_json(os.path.join(run_dir, FETCH_RESULT), result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
