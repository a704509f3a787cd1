"""Where a run's checkpoints go in a bucket, and the manifest that lists the verified ones. Pure.

    s3://bucket/prefix/<run_id>/<checkpoint name>[/<file in a checkpoint dir>]
    s3://bucket/prefix/<run_id>/.runctl-manifest.json

The manifest's name is hidden, and no checkpoint ever is (core.checkpoints skips hidden and temp
names), so it can never collide with one. One writer per run (that run's uploader) keeps it
consistent without locking; `checkpoint list s3://bucket/prefix` finds every run's manifest.
"""

from __future__ import annotations

import re
import time
from typing import Any, Dict, List, Optional, Tuple

MANIFEST_NAME = ".runctl-manifest.json"
MANIFEST_FORMAT = 1
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class BadUri(ValueError):
    """An s3:// URI runctl cannot use; the message says what is wrong and shows a good one."""


def parse_uri(uri: str) -> Tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`; the prefix without slashes at either end ('' for none)."""
    example = "for example s3://my-bucket/checkpoints"
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise BadUri("%r is not an s3:// URI (%s)" % (uri, example))
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket):
        raise BadUri(
            "%r is not a valid bucket name: 3-63 lowercase letters, digits, '.' or '-' (%s)" % (bucket, example)
        )
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise BadUri("the prefix of %r has an empty, '.' or '..' part (%s)" % (uri, example))
    return bucket, prefix


def run_prefix(prefix: str, run_id: str) -> str:
    """The key prefix of one run's checkpoints, ending in '/'."""
    return "%s/%s/" % (prefix, run_id) if prefix else "%s/" % run_id


def object_key(prefix: str, run_id: str, relative: str) -> str:
    return run_prefix(prefix, run_id) + relative.replace("\\", "/").lstrip("/")


def manifest_key(prefix: str, run_id: str) -> str:
    return run_prefix(prefix, run_id) + MANIFEST_NAME


def new_manifest(bucket: str, prefix: str, run_id: str) -> Dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "run_id": run_id,
        "bucket": bucket,
        "prefix": run_prefix(prefix, run_id),
        "created_at": time.time(),
        "updated_at": time.time(),
        "latest": None,
        "checkpoints": [],
    }


def record(manifest: Dict[str, Any], entry: Dict[str, Any]) -> Dict[str, Any]:
    """The manifest with `entry` (a verified checkpoint) in it, replacing one of the same name.

    Entries stay ordered by the time their checkpoint was written, and `latest` names the newest
    one, whatever order the uploads finished in (the newest goes first when several wait).
    """
    entries: List[Dict[str, Any]] = [e for e in manifest.get("checkpoints", []) if e.get("name") != entry["name"]]
    entries.append(entry)
    entries.sort(key=lambda e: (float(e.get("mtime") or 0), e["name"]))
    updated = dict(manifest, checkpoints=entries, updated_at=time.time())
    updated["latest"] = entries[-1]["name"] if entries else None
    return updated


def find_entry(manifest: Optional[Dict[str, Any]], name: str) -> Optional[Dict[str, Any]]:
    for entry in (manifest or {}).get("checkpoints", []):
        if entry.get("name") == name:
            return entry
    return None


def take_removed(manifest: Dict[str, Any], remote: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """`manifest` without the checkpoints `remote` (the same run's manifest as the bucket holds it)
    says were removed by a cleanup: same name and checksum; a checkpoint saved again under that
    name since is a new one and stays."""
    removed = (remote or {}).get("removed") or []
    if not removed or (remote or {}).get("run_id") != manifest.get("run_id"):
        return manifest
    gone = {(r.get("name"), r.get("checksum")) for r in removed if isinstance(r, dict)}
    entries = [e for e in manifest.get("checkpoints", []) if (e.get("name"), e.get("checksum")) not in gone]
    updated = dict(manifest, checkpoints=entries, removed=removed)
    updated["latest"] = entries[-1]["name"] if entries else None
    return updated
