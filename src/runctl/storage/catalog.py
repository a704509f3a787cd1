"""What is in a checkpoint prefix: every run's manifest, its verified checkpoints, the latest one,
names and keys resolved to manifest entries, verified downloads, and the cleanup plan.

A checkpoint exists for runctl only as an entry of a run's manifest (storage.objects), and only
while S3 still holds exactly what the entry says (size and SHA-256, read back with HEAD): that is
what "verified" means here. Nothing outside a manifest is ever deleted, and nothing a live run
resumed from: a run that resumes writes a hidden marker under the source run's prefix,

    <prefix>/<source_run>/.runctl-resumed-by/<new_run>.json

and `cleanup` keeps every checkpoint named by a marker whose run is not known to have ended.

boto3 is imported lazily (through storage.s3): this module travels to hosts with `storage` and runs
in runctl's tool environment there (the host-side downloader may use `download_entry`), or on the
controller; standard library and typing only, Python 3.8+.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from . import checksums, objects

MARKER_DIR = ".runctl-resumed-by"
PARTIAL = ".runctl-partial"
RANGE_SIZE = 16 * 1024 * 1024
THREADS = 8


class NotVerified(Exception):
    """What S3 holds (or what was downloaded) is not what the manifest says: it must not be used."""


class RunManifest:
    """One run's manifest as read from the bucket: where it is, and the document itself."""

    def __init__(self, bucket: str, key: str, document: Dict[str, Any]) -> None:
        self.bucket = bucket
        self.key = key
        self.document = document

    @property
    def run_id(self) -> str:
        return str(self.document.get("run_id") or "")

    @property
    def run_prefix(self) -> str:
        """The run's key prefix, ending in '/' (where its manifest is)."""
        return self.key[: -len(objects.MANIFEST_NAME)]

    @property
    def uri(self) -> str:
        return "s3://%s/%s" % (self.bucket, self.run_prefix)

    def checkpoints(self) -> List[Dict[str, Any]]:
        """The verified entries, oldest first (the manifest's order: by the time each was written)."""
        return [e for e in self.document.get("checkpoints") or [] if isinstance(e, dict) and e.get("verified", True)]

    def ended(self) -> bool:
        return self.document.get("ended_at") is not None


Found = Tuple[RunManifest, Dict[str, Any]]


# ---- addresses -----------------------------------------------------------------------------------


def parse_object_uri(uri: str) -> Tuple[str, str]:
    """(bucket, key) of `s3://bucket/key`, the key as given (a trailing '/' names a directory)."""
    bucket, _ = objects.parse_uri(uri)
    key = uri[len("s3://") + len(bucket) :].lstrip("/")
    return bucket, key


def entry_keys(entry: Dict[str, Any]) -> List[str]:
    """Every object key a manifest entry stands for (one for a file, each file's for a directory)."""
    if entry.get("files"):
        return [str(f["key"]) for f in entry["files"]]
    return [str(entry["key"])]


def entry_uri(bucket: str, entry: Dict[str, Any]) -> str:
    return "s3://%s/%s" % (bucket, entry["key"])


def newest_first(found: Iterable[Found]) -> List[Found]:
    """By the time each checkpoint was written (then uploaded), newest first, across runs."""
    return sorted(
        found, key=lambda f: (float(f[1].get("mtime") or 0), float(f[1].get("time") or 0), f[1]["name"]), reverse=True
    )


# ---- finding manifests ---------------------------------------------------------------------------


def read_manifest(s3: Any, bucket: str, key: str) -> Optional[RunManifest]:
    """The runctl manifest at `key`, or None when there is none (or the object is not one)."""
    from . import s3 as s3api

    document = s3api.get_json(s3, bucket, key)
    if not document or document.get("format") is None or not isinstance(document.get("checkpoints"), list):
        return None
    return RunManifest(bucket, key, document)


def run_manifest(s3: Any, bucket: str, prefix: str, run_id: str) -> Optional[RunManifest]:
    return read_manifest(s3, bucket, objects.manifest_key(prefix, run_id))


def list_manifests(s3: Any, bucket: str, prefix: str) -> List[RunManifest]:
    """Every run's manifest directly under `prefix` (one level: `prefix/<run_id>/`), or the prefix's
    own when it is a run's prefix itself. Listed with a delimiter and paginated, read in parallel."""
    prefix = prefix.strip("/")
    own = read_manifest(s3, bucket, prefix + "/" + objects.MANIFEST_NAME) if prefix else None
    if own is not None:
        return [own]
    paginator = s3.get_paginator("list_objects_v2")
    dirs: List[str] = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/" if prefix else "", Delimiter="/"):
        dirs += [str(p["Prefix"]) for p in page.get("CommonPrefixes") or []]
    keys = [d + objects.MANIFEST_NAME for d in dirs if not d.rstrip("/").rsplit("/", 1)[-1].startswith(".")]
    if not keys:
        return []
    with ThreadPoolExecutor(max_workers=min(THREADS, len(keys))) as pool:
        found = list(pool.map(lambda key: read_manifest(s3, bucket, key), keys))
    return sorted((m for m in found if m is not None), key=lambda m: float(m.document.get("created_at") or 0))


def all_checkpoints(manifests: Sequence[RunManifest]) -> List[Found]:
    """Every verified checkpoint of these runs, newest first."""
    return newest_first((m, e) for m in manifests for e in m.checkpoints())


def find_name(manifests: Sequence[RunManifest], name: str) -> List[Found]:
    """The checkpoints called `name` in these runs, newest first (several: the name is ambiguous)."""
    return [f for f in all_checkpoints(manifests) if f[1].get("name") == name]


def find_key(s3: Any, bucket: str, key: str) -> Optional[Found]:
    """The manifest entry for the object or checkpoint dir at `key`: the manifest is looked for in
    each directory above it (a checkpoint is `<run prefix><name>`, its name may hold '/')."""
    wanted = key.rstrip("/")
    parts = wanted.split("/")
    for depth in range(len(parts) - 1, 0, -1):
        manifest = read_manifest(s3, bucket, "/".join(parts[:depth]) + "/" + objects.MANIFEST_NAME)
        if manifest is None:
            continue
        for entry in reversed(manifest.checkpoints()):
            if str(entry.get("key", "")).rstrip("/") == wanted:
                return manifest, entry
            for item in entry.get("files") or []:
                if item.get("key") == wanted:
                    return manifest, dict(item, name=entry["name"] + "/" + item["path"].split("/", 1)[-1])
    return None


# ---- verification --------------------------------------------------------------------------------


def check_entry(s3: Any, bucket: str, entry: Dict[str, Any]) -> Optional[str]:
    """Why S3 no longer holds exactly what `entry` says (size, SHA-256 read back), or None."""
    from . import s3 as s3api

    items = entry.get("files") or [entry]
    for item in items:
        try:
            s3api.verify(s3, bucket, item["key"], int(item["size"]), str(item["checksum"]))
        except s3api.VerifyFailed as exc:
            return str(exc)
        except Exception as exc:
            if s3api.error_code(exc) in ("NoSuchKey", "404"):
                return "s3://%s/%s is gone" % (bucket, item["key"])
            raise
    return None


def latest(s3: Any, manifests: Sequence[RunManifest], check: bool = True) -> Tuple[Optional[Found], List[str]]:
    """The newest checkpoint of these runs that S3 still holds as verified, and why newer ones were
    passed over (gone, or changed since they were uploaded)."""
    passed: List[str] = []
    for manifest, entry in all_checkpoints(manifests):
        problem = check_entry(s3, manifest.bucket, entry) if check else None
        if problem is None:
            return (manifest, entry), passed
        passed.append("%s/%s: %s" % (manifest.run_id, entry["name"], problem))
    return None, passed


def plain_entry(s3: Any, bucket: str, key: str) -> Optional[Dict[str, Any]]:
    """An entry for an object no manifest lists: its size and ETag only (what S3 says of it)."""
    from . import s3 as s3api

    head = s3api.head_or_none(s3, bucket, key)
    if head is None:
        return None
    return {
        "name": key.rstrip("/").rsplit("/", 1)[-1],
        "size": int(head.get("ContentLength", 0)),
        "key": key,
        "etag": str(head.get("ETag", "")).strip('"'),
    }


def has_objects_under(s3: Any, bucket: str, key: str) -> bool:
    answer = s3.list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1)
    return bool(answer.get("KeyCount") or answer.get("Contents"))


# ---- downloads -----------------------------------------------------------------------------------


def local_problem(path: str, item: Dict[str, Any]) -> Optional[str]:
    """Why the local file at `path` is not the object `item` describes, or None.

    A manifest entry carries S3's SHA-256 (of the whole file, or composite over its parts of
    `part_size`); an entry made for a plain object carries only its size and ETag (an MD5 when the
    object went in one piece)."""
    size = os.path.getsize(path)
    if size != int(item["size"]):
        return "%d bytes, not %d" % (size, int(item["size"]))
    if item.get("checksum"):
        got = checksums.file_checksum(path, item.get("part_size"))
        if got.split("-")[0] != str(item["checksum"]).split("-")[0]:
            return "SHA-256 %s, not %s" % (got, item["checksum"])
        return None
    etag = str(item.get("etag") or "")
    if len(etag) == 32 and "-" not in etag:
        try:
            digest = hashlib.md5(usedforsecurity=False)
        except TypeError:  # Python < 3.9
            digest = hashlib.md5()  # an ETag is an MD5: an integrity check, not security
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(checksums.READ_CHUNK), b""):
                digest.update(chunk)
        if digest.hexdigest() != etag:
            return "MD5 %s, not the ETag %s" % (digest.hexdigest(), etag)
    return None


def _fetch(s3: Any, bucket: str, key: str, size: int, path: str, threads: int, range_size: int) -> None:
    """The object at `key` into `path`: one GET, or ranged GETs in parallel written in place."""
    if size <= range_size:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        with open(path, "wb") as handle:
            shutil.copyfileobj(body, handle, checksums.READ_CHUNK)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)

        def part(start: int) -> None:
            end = min(size, start + range_size) - 1
            body = s3.get_object(Bucket=bucket, Key=key, Range="bytes=%d-%d" % (start, end))["Body"]
            offset = start
            for chunk in iter(lambda: body.read(checksums.READ_CHUNK), b""):
                os.pwrite(fd, chunk, offset)
                offset += len(chunk)
            if offset != end + 1:
                raise NotVerified("s3://%s/%s: range %d-%d came back short" % (bucket, key, start, end))

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            list(pool.map(part, range(0, size, range_size)))
    finally:
        os.close(fd)


def download_entry(
    s3: Any,
    bucket: str,
    entry: Dict[str, Any],
    dest_dir: str,
    threads: int = THREADS,
    range_size: int = RANGE_SIZE,
    progress: Optional[Callable[[str], None]] = None,
) -> str:
    """Download a checkpoint (a file, or a directory's files) into `dest_dir/<name>`, verified.

    Everything lands under a hidden partial name first and is checked against the entry (every
    file's size and SHA-256); only then is it renamed into place, so `dest_dir/<name>` is either the
    verified checkpoint or absent. A mismatch removes the partial and raises NotVerified. A target
    that exists already is kept when it verifies (nothing is fetched) and refused otherwise
    (FileExistsError): a download never overwrites local files.
    """
    name = str(entry["name"]).replace("\\", "/").strip("/")
    if not name or any(part in ("", ".", "..") for part in name.split("/")):
        raise NotVerified("the checkpoint name %r is not a safe local path" % entry.get("name"))
    target = os.path.join(dest_dir, *name.split("/"))
    items = _local_items(entry, name)
    if os.path.lexists(target):
        if all(os.path.isfile(os.path.join(target, rel)) if rel else os.path.isfile(target) for rel, _ in items):
            if not any(local_problem(os.path.join(target, rel) if rel else target, item) for rel, item in items):
                return target
        raise FileExistsError(target)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    partial = os.path.join(parent, ".%s.%s-%s" % (os.path.basename(target), PARTIAL, uuid.uuid4().hex[:8]))
    try:
        jobs = []
        for rel, item in items:
            path = os.path.join(partial, rel) if rel else partial
            os.makedirs(os.path.dirname(path), exist_ok=True)
            jobs.append((path, item))
        # Files of a directory go in parallel; a big file's ranges go in parallel inside _fetch.
        per_file = max(1, threads // max(1, min(threads, len(jobs))))

        def one(job: Tuple[str, Dict[str, Any]]) -> None:
            path, item = job
            _fetch(s3, bucket, str(item["key"]), int(item["size"]), path, per_file, range_size)
            problem = local_problem(path, item)
            if problem:
                raise NotVerified("s3://%s/%s does not match its manifest entry: %s" % (bucket, item["key"], problem))
            if progress is not None:
                progress("verified %s (%d bytes)" % (item["key"], int(item["size"])))

        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(jobs)))) as pool:
            list(pool.map(one, jobs))
        os.rename(partial, target)
    except BaseException:
        if os.path.isdir(partial):
            shutil.rmtree(partial, ignore_errors=True)
        elif os.path.lexists(partial):
            os.unlink(partial)
        raise
    return target


def _local_items(entry: Dict[str, Any], name: str) -> List[Tuple[str, Dict[str, Any]]]:
    """(path inside the checkpoint, file entry) for each file; '' for a checkpoint that is one file."""
    if not entry.get("files"):
        return [("", entry)]
    out = []
    for item in entry["files"]:
        path = str(item["path"]).replace("\\", "/")
        rel = path[len(name) + 1 :] if path.startswith(name + "/") else path.rsplit("/", 1)[-1]
        if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
            raise NotVerified("the file %r of checkpoint %r is not a safe local path" % (item.get("path"), name))
        out.append((os.path.join(*rel.split("/")), item))
    return out


# ---- resume markers ------------------------------------------------------------------------------


def marker_key(source_run_prefix: str, new_run_id: str) -> str:
    return "%s%s/%s.json" % (source_run_prefix, MARKER_DIR, new_run_id)


def write_marker(s3: Any, bucket: str, source_run_prefix: str, document: Dict[str, Any]) -> str:
    """Say under the source run's prefix that run `document["run_id"]` resumed from a checkpoint of it."""
    from . import s3 as s3api

    key = marker_key(source_run_prefix, str(document["run_id"]))
    s3api.put_json(s3, bucket, key, document)
    return key


def markers(s3: Any, bucket: str, run_prefix: str) -> List[Dict[str, Any]]:
    """The resume markers under one run's prefix (the runs that resumed from its checkpoints)."""
    from . import s3 as s3api

    paginator = s3.get_paginator("list_objects_v2")
    keys: List[str] = []
    for page in paginator.paginate(Bucket=bucket, Prefix=run_prefix + MARKER_DIR + "/"):
        keys += [str(item["Key"]) for item in page.get("Contents") or [] if str(item["Key"]).endswith(".json")]
    found = []
    for key in keys:
        document = s3api.get_json(s3, bucket, key)
        if document is not None:
            found.append(dict(document, marker_key=key))
    return found


# ---- cleanup -------------------------------------------------------------------------------------


def cleanup_plan(manifests: Sequence[RunManifest], keep: int, protected: Set[Tuple[str, str]]) -> List[Dict[str, Any]]:
    """Per run: the newest `keep` verified checkpoints stay, and every (run_id, name) in `protected`
    (a live run resumed from it); the rest are to be removed. Only keys inside the run's own prefix
    are ever named, whatever a manifest says.

    [{"manifest", "keep": [entries], "remove": [entries], "protected": [names], "keys": [keys]}]
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    plan = []
    for manifest in manifests:
        entries = list(reversed(manifest.checkpoints()))  # newest first
        kept, removed, held = [], [], []
        for index, entry in enumerate(entries):
            if index < keep:
                kept.append(entry)
            elif (manifest.run_id, str(entry["name"])) in protected:
                kept.append(entry)
                held.append(str(entry["name"]))
            else:
                removed.append(entry)
        keys = [k for e in removed for k in entry_keys(e) if k.startswith(manifest.run_prefix)]
        plan.append({"manifest": manifest, "keep": kept, "remove": removed, "protected": held, "keys": keys})
    return plan


def apply_cleanup(s3: Any, item: Dict[str, Any]) -> int:
    """Carry out one run's part of a cleanup plan: the manifest first (rewritten without the removed
    entries, which it remembers under `removed`), then the objects. Returns the objects deleted.

    The manifest is read again just before it is written, so a checkpoint its uploader verified
    meanwhile stays listed."""
    from . import s3 as s3api

    manifest: RunManifest = item["manifest"]
    if not item["remove"]:
        return 0
    names = {str(e["name"]) for e in item["remove"]}
    checks = {str(e["name"]): e.get("checksum") for e in item["remove"]}
    current = read_manifest(s3, manifest.bucket, manifest.key) or manifest
    document = dict(current.document)
    document["checkpoints"] = [
        e
        for e in current.document.get("checkpoints") or []
        if not (e.get("name") in names and e.get("checksum") == checks.get(str(e.get("name"))))
    ]
    document["removed"] = list(document.get("removed") or []) + [
        {"name": e["name"], "checksum": e.get("checksum"), "removed_at": time.time()} for e in item["remove"]
    ]
    listed = document["checkpoints"]
    document["latest"] = listed[-1]["name"] if listed else None
    document["updated_at"] = time.time()
    s3api.put_json(s3, manifest.bucket, manifest.key, document)
    still = {k for e in listed for k in entry_keys(e)}
    keys = [k for k in item["keys"] if k not in still]
    for start in range(0, len(keys), 1000):
        batch = keys[start : start + 1000]
        answer = s3.delete_objects(
            Bucket=manifest.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
        )
        errors = answer.get("Errors") or []
        if errors:
            first = errors[0]
            raise RuntimeError(
                "could not delete s3://%s/%s: %s" % (manifest.bucket, first.get("Key"), first.get("Code"))
            )
    return len(keys)


__all__ = [
    "MARKER_DIR",
    "NotVerified",
    "RunManifest",
    "all_checkpoints",
    "apply_cleanup",
    "check_entry",
    "cleanup_plan",
    "download_entry",
    "entry_keys",
    "find_key",
    "find_name",
    "has_objects_under",
    "latest",
    "list_manifests",
    "local_problem",
    "markers",
    "parse_object_uri",
    "plain_entry",
    "read_manifest",
    "run_manifest",
    "write_marker",
]
