"""Checkpoints in S3 as the controller sees them: where a run's are, `--resume` resolved to one
verified checkpoint, the link from a resumed run to its source, and what cleanup must keep.

The bucket side (manifests, verification, downloads, the cleanup plan) is storage.catalog; this
module adds what only the controller knows: the store (a RUN_ID's `--checkpoint-s3` location, the
runs that resumed from a checkpoint and whether they are still going) and the errors a user reads
(UsageError, exit 2: a bad URI, an unknown name; HostError, exit 4: S3 refused or is unreachable).

`--resume` (resolve_resume), one of:
  latest          the newest verified checkpoint in the run's --checkpoint-s3 prefix, across every
                  run there (by the time it was written): after a spot interruption or a crash the
                  newest work wins, whichever run wrote it.
  RUN_ID          that run's newest verified checkpoint (the run from the store, or a run dir of
                  the --checkpoint-s3 prefix: a run started from another machine).
  RUN_ID/NAME     that run's checkpoint NAME.
  NAME            the checkpoint NAME in the --checkpoint-s3 prefix; in several runs: exit 2,
                  listing them as RUN_ID/NAME.
  s3://bucket/key an object or checkpoint dir of a manifest (verified), or a plain object no
                  manifest lists (then only its size and ETag are known).
It becomes `spec.resume_s3` before anything is created; nothing verified found is exit 2.

Live resumes (what `checkpoint cleanup` never deletes): a run that resumed from RUN/NAME is live
until the store here says it ended, or its own manifest says so (`ended_at`, written by its
uploader's final pass), or its marker says so. When none can tell, it counts as live, and the
checkpoint stays.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .core import status as st
from .core.errors import HostError, RunctlError, UsageError
from .storage import catalog, objects
from .storage.catalog import Found, RunManifest

# ---- clients and errors --------------------------------------------------------------------------


def client(cfg: dict[str, Any] | None = None) -> Any:
    """An S3 client for the controller: its own credentials, the run's region and endpoint if set."""
    from .storage import s3

    cfg = cfg or {}
    return s3.client(env=_env(cfg), region=cfg.get("region"), attempts=3, timeout=10.0)


def _env(cfg: dict[str, Any]) -> dict[str, str]:
    """This machine's environment, with the run's endpoint when it names one and the environment does not."""
    env = dict(os.environ)
    if cfg.get("endpoint_url") and not (env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")):
        env["AWS_ENDPOINT_URL"] = str(cfg["endpoint_url"])
    return env


def parse(uri: str, flag: str = "") -> tuple[str, str]:
    """(bucket, prefix) of an s3:// URI; a bad one is a usage error."""
    try:
        return objects.parse_uri(uri)
    except objects.BadUri as exc:
        raise UsageError(("%s %s" % (flag, exc)).strip(), "for example: s3://my-bucket/checkpoints") from None


@contextmanager
def s3_errors(where: str) -> Iterator[None]:
    """S3's refusals as HostError (exit 4) naming `where`, with the fix; runctl's own errors pass."""
    try:
        yield
    except (RunctlError, catalog.NotVerified, FileExistsError):
        raise
    except Exception as exc:
        from .storage import s3

        code = s3.error_code(exc)
        if code in ("NoSuchBucket",):
            bucket = where[len("s3://") :].split("/", 1)[0] if where.startswith("s3://") else where
            hint = "name an existing bucket (or create it: aws s3 mb s3://%s)" % bucket
        elif code in s3.CREDENTIAL_CODES or code == "403" or "credentials" in s3.describe(exc):
            hint = "fix this machine's AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile)"
        else:
            hint = "check AWS_ENDPOINT_URL and the network, then try again"
        raise HostError("cannot read %s: %s" % (where, s3.describe(exc)), hint) from None


# ---- where a run's checkpoints are ---------------------------------------------------------------


def run_cfg(row: dict[str, Any]) -> dict[str, Any] | None:
    """The run's `checkpoint_s3` block (from `--checkpoint-s3`), or None when it kept none in S3."""
    cfg = (row.get("spec") or {}).get("checkpoint_s3")
    return cfg if isinstance(cfg, dict) and cfg.get("uri") else None


def run_location(row: dict[str, Any]) -> tuple[str, str] | None:
    cfg = run_cfg(row)
    return objects.parse_uri(str(cfg["uri"])) if cfg else None


def manifests_at(s3: Any, uri: str) -> list[RunManifest]:
    """Every run's manifest under `uri` (or the one run's, when `uri` is a run's own prefix)."""
    bucket, prefix = parse(uri)
    with s3_errors(uri):
        return catalog.list_manifests(s3, bucket, prefix)


def manifest_of(s3: Any, row: dict[str, Any]) -> RunManifest | None:
    location = run_location(row)
    assert location is not None
    bucket, prefix = location
    with s3_errors("s3://%s/%s" % (bucket, objects.run_prefix(prefix, row["run_id"]))):
        return catalog.run_manifest(s3, bucket, prefix, row["run_id"])


def label(found: Found) -> str:
    return "%s/%s" % (found[0].run_id, found[1]["name"])


# ---- --resume ------------------------------------------------------------------------------------


def resolve_resume(
    value: str, checkpoint_s3: dict[str, Any] | None, store: Any = None, make_client: Callable[..., Any] = client
) -> dict[str, Any]:
    """`--resume VALUE` as the `spec.resume_s3` the host's downloader takes (see RunSpec.resume_s3).

    `checkpoint_s3` is the new run's own block (its prefix is where `latest` and bare names are
    looked for). Raises UsageError (exit 2) when nothing verified matches, HostError (exit 4) when
    S3 cannot be read."""
    text = (value or "").strip()
    if not text:
        raise UsageError("--resume needs a value", "for example: --resume latest, RUN_ID/NAME or s3://bucket/key")
    cfg = checkpoint_s3 or {}
    s3 = make_client(cfg)
    if text.startswith("s3://"):
        return _by_uri(s3, text, cfg)
    home = str(cfg["uri"]) if cfg.get("uri") else None
    if text == "latest":
        if home is None:
            raise UsageError(
                "--resume latest needs --checkpoint-s3 s3://bucket/prefix: the prefix to look in",
                "add --checkpoint-s3, or name the checkpoint: --resume s3://bucket/key",
            )
        found, passed = _latest(s3, manifests_at(s3, home), home)
        if found is None:
            raise UsageError(
                _none_verified(home, passed), "start without --resume, or name one: --resume s3://bucket/key"
            )
        return _spec_value(found, cfg)
    run_part, _, name = text.partition("/")
    source = _source_run(s3, run_part, home, store)
    if source is not None:
        manifest, source_cfg = source
        if name:
            entry = objects.find_entry(manifest.document, name)
            if entry is None or entry not in manifest.checkpoints():
                names = ", ".join(e["name"] for e in reversed(manifest.checkpoints())[:5]) or "none"
                raise UsageError(
                    "run %s has no verified checkpoint %r in S3 (it has: %s)" % (manifest.run_id, name, names),
                    "list them: runctl checkpoint list %s" % manifest.run_id,
                )
            _must_verify(s3, manifest, entry)
            return _spec_value((manifest, entry), {**source_cfg, **cfg})
        found, passed = _latest(s3, [manifest], manifest.uri)
        if found is None:
            raise UsageError(_none_verified(manifest.uri, passed), "start without --resume, or resume another run")
        return _spec_value(found, {**source_cfg, **cfg})
    if home is None:
        raise UsageError(
            "--resume %s: no run with that id, and no --checkpoint-s3 prefix to look for a checkpoint of that name"
            % text,
            "name a run (runctl runs list --all), or add --checkpoint-s3 s3://bucket/prefix",
        )
    candidates = [f for f in catalog.find_name(manifests_at(s3, home), text)]
    if not candidates:
        raise UsageError(
            "no checkpoint or run %r in %s" % (text, home), "see what is there: runctl checkpoint list %s" % home
        )
    if len(candidates) > 1:
        raise UsageError(
            "checkpoint %r is in %d runs: %s" % (text, len(candidates), ", ".join(label(f) for f in candidates[:6])),
            "say which with --resume RUN_ID/NAME",
        )
    _must_verify(s3, *candidates[0])
    return _spec_value(candidates[0], cfg)


def _latest(s3: Any, manifests: Sequence[RunManifest], where: str) -> tuple[Found | None, list[str]]:
    with s3_errors(where):
        return catalog.latest(s3, manifests)


def _none_verified(where: str, passed: list[str]) -> str:
    if passed:
        return "no checkpoint in %s is still verified in S3 (%s)" % (where, passed[0])
    return "no verified checkpoint in %s to resume from" % where


def _must_verify(s3: Any, manifest: RunManifest, entry: dict[str, Any]) -> None:
    with s3_errors(catalog.entry_uri(manifest.bucket, entry)):
        problem = catalog.check_entry(s3, manifest.bucket, entry)
    if problem:
        raise HostError(
            "checkpoint %s/%s is no longer what was verified: %s" % (manifest.run_id, entry["name"], problem),
            "resume from another one: runctl checkpoint list %s" % manifest.run_id,
        )


def _source_run(s3: Any, run_part: str, home: str | None, store: Any) -> tuple[RunManifest, dict[str, Any]] | None:
    """The run `run_part` names (its manifest and checkpoint_s3 block): a run of the store, exact or
    a unique prefix, else a run dir of the `home` prefix. None when it names no run."""
    row = None
    if store is not None:
        row = store.get(run_part)
        if row is None and home is None:
            try:
                row = store.resolve(run_part)
            except UsageError:
                row = None
    if row is None and home is not None:
        bucket, prefix = parse(home)
        with s3_errors(home):
            manifest = catalog.run_manifest(s3, bucket, prefix, run_part)
        if manifest is not None:
            return manifest, {}
        if store is not None:
            try:
                row = store.resolve(run_part)
            except UsageError:
                return None
    if row is None:
        return None
    cfg = run_cfg(row)
    if cfg is None:
        raise UsageError(
            "run %s kept no checkpoints in S3 (it ran without --checkpoint-s3)" % row["run_id"],
            "resume from a file on the host instead: --resume-from PATH",
        )
    manifest = manifest_of(s3, row)
    if manifest is None:
        raise UsageError(
            "run %s has no checkpoint manifest in %s yet" % (row["run_id"], cfg["uri"]),
            "wait for its first verified upload, or resume another run",
        )
    return manifest, cfg


def _by_uri(s3: Any, uri: str, cfg: dict[str, Any]) -> dict[str, Any]:
    try:
        bucket, key = catalog.parse_object_uri(uri)
    except objects.BadUri as exc:
        raise UsageError("--resume %s" % exc, "for example: --resume s3://my-bucket/ckpts/RUN_ID/model.pt") from None
    if not key.strip("/"):
        raise UsageError(
            "--resume %s names a bucket, not a checkpoint" % uri, "see what is there: runctl checkpoint list %s" % uri
        )
    with s3_errors(uri):
        found = catalog.find_key(s3, bucket, key)
        if found is not None:
            _must_verify(s3, *found)
            return _spec_value(found, cfg)
        plain = None if key.endswith("/") else catalog.plain_entry(s3, bucket, key)
        if plain is None:
            if catalog.has_objects_under(s3, bucket, key):
                raise UsageError(
                    "%s is a directory that no runctl manifest lists" % uri,
                    "name one object in it, or a checkpoint a run uploaded (runctl checkpoint list s3://%s/...)"
                    % bucket,
                )
            parent = key.rstrip("/").rsplit("/", 1)[0] if "/" in key.rstrip("/") else ""
            raise UsageError(
                "there is no object %s" % uri, "see what is there: runctl checkpoint list s3://%s/%s" % (bucket, parent)
            )
    return {
        "uri": uri,
        "bucket": bucket,
        "entry": plain,
        "run_id": None,
        "region": cfg.get("region"),
        "endpoint_url": _endpoint(cfg),
    }


def _endpoint(cfg: dict[str, Any]) -> str | None:
    return (
        cfg.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    )


def _spec_value(found: Found, cfg: dict[str, Any]) -> dict[str, Any]:
    manifest, entry = found
    return {
        "uri": catalog.entry_uri(manifest.bucket, entry),
        "bucket": manifest.bucket,
        "entry": entry,
        "run_id": manifest.run_id,
        "region": cfg.get("region"),
        "endpoint_url": _endpoint(cfg),
    }


def apply_resume(spec: Any, value: str | None, store: Any = None) -> None:
    """Resolve `--resume` for `spec` (a RunSpec with its checkpoint_s3 already set): sets resume_s3."""
    if value is None:
        return
    if store is None:
        from .store import Store

        store = Store()
    spec.resume_s3 = resolve_resume(value, spec.checkpoint_s3, store)


# ---- the link from a resumed run to its source ---------------------------------------------------


def source_run_prefix(resume_s3: dict[str, Any]) -> str | None:
    """The source run's key prefix (`<prefix>/<run_id>/`) of a resume from a manifest entry."""
    entry = resume_s3.get("entry") or {}
    key, name = str(entry.get("key") or "").rstrip("/"), str(entry.get("name") or "")
    if not resume_s3.get("run_id") or not name or not key.endswith(name):
        return None
    return key[: len(key) - len(name)]


def resumed_from(spec: dict[str, Any]) -> dict[str, Any] | None:
    """What `runs status` shows: {"run_id", "name", "step", "uri"} of the checkpoint a run resumed from."""
    value = spec.get("resume_s3")
    if not isinstance(value, dict):
        return None
    entry = value.get("entry") or {}
    return {
        "run_id": value.get("run_id"),
        "name": entry.get("name"),
        "step": entry.get("step"),
        "uri": value.get("uri"),
    }


def marker_document(spec: Any) -> dict[str, Any]:
    value = spec.resume_s3
    return {
        "format": 1,
        "run_id": spec.run_id,
        "source_run_id": value.get("run_id"),
        "name": (value.get("entry") or {}).get("name"),
        "key": (value.get("entry") or {}).get("key"),
        "started_at": spec.created_at,
        "provider": spec.provider,
        "host": spec.host,
        "checkpoint_s3": (spec.checkpoint_s3 or {}).get("uri"),
        "ended_at": None,
    }


def mark_resumed(spec: Any, say: Callable[[str], None] | None = None) -> str | None:
    """Write the marker under the source run's prefix; a failure is said, not fatal (this machine's
    store still holds the link)."""
    value = spec.resume_s3 or {}
    prefix = source_run_prefix(value)
    if prefix is None:
        return None
    try:
        s3 = client(value)
        return catalog.write_marker(s3, str(value["bucket"]), prefix, marker_document(spec))
    except Exception as exc:
        from .storage import s3 as s3api

        if say is not None:
            say("warning: could not mark %s as resumed from in S3 (%s)" % (value.get("uri"), s3api.describe(exc)))
        return None


def unmark_resumed(spec: Any) -> None:
    """A start that failed never resumed: its marker goes."""
    value = spec.resume_s3 or {}
    prefix = source_run_prefix(value)
    if prefix is None:
        return
    try:
        client(value).delete_object(Bucket=value["bucket"], Key=catalog.marker_key(prefix, spec.run_id))
    except Exception:
        pass  # a leftover marker only keeps a checkpoint longer


def mark_resume_ended(spec: dict[str, Any], status: str) -> None:
    """Say in the run's marker that it has ended, so cleanups from any machine may now remove what
    it resumed from. Best effort, quick: a cleanup that cannot tell keeps the checkpoint."""
    from .storage import s3 as s3api

    value = spec.get("resume_s3") or {}
    prefix = source_run_prefix(value)
    if prefix is None:
        return
    try:
        s3 = s3api.client(env=_env(value), region=value.get("region"), attempts=1, timeout=5.0)
        key = catalog.marker_key(prefix, str(spec["run_id"]))
        document = s3api.get_json(s3, str(value["bucket"]), key) or {"format": 1, "run_id": spec["run_id"]}
        s3api.put_json(s3, str(value["bucket"]), key, dict(document, ended_at=time.time(), status=status))
    except Exception:
        pass


# ---- what cleanup keeps --------------------------------------------------------------------------


def run_ended(s3: Any, run_id: str, store: Any, own_uri: str | None, marker: dict[str, Any] | None) -> bool:
    """Whether run `run_id` is known to have ended: by the store here, its marker, or its manifest."""
    if marker is not None and marker.get("ended_at"):
        return True
    row = store.get(run_id) if store is not None else None
    if row is not None:
        return st.is_terminal(row["status"])
    if own_uri:
        try:
            bucket, prefix = objects.parse_uri(own_uri)
            manifest = catalog.run_manifest(s3, bucket, prefix, run_id)
        except Exception:
            return False
        return manifest is not None and manifest.ended()
    return False


def protected(s3: Any, manifests: Sequence[RunManifest], store: Any) -> dict[tuple[str, str], str]:
    """(source run, checkpoint name) -> the live run that resumed from it, for these runs: from the
    markers in the bucket and from this machine's store. A marker whose run is seen to have ended is
    updated to say so, for cleanups from other machines."""
    held: dict[tuple[str, str], str] = {}
    ids = {m.run_id for m in manifests}
    for manifest in manifests:
        for marker in catalog.markers(s3, manifest.bucket, manifest.run_prefix):
            new_run = str(marker.get("run_id") or "")
            if run_ended(s3, new_run, store, marker.get("checkpoint_s3"), marker):
                if not marker.get("ended_at"):
                    _mark_ended(s3, manifest.bucket, marker)
                continue
            held[(manifest.run_id, str(marker.get("name")))] = new_run
    if store is not None:
        for row in store.list(include_all=True):
            value = (row.get("spec") or {}).get("resume_s3")
            if isinstance(value, dict) and value.get("run_id") in ids and not st.is_terminal(row["status"]):
                held.setdefault((str(value["run_id"]), str((value.get("entry") or {}).get("name"))), row["run_id"])
    return held


def _mark_ended(s3: Any, bucket: str, marker: dict[str, Any]) -> None:
    from .storage import s3 as s3api

    key = str(marker.pop("marker_key"))
    try:
        s3api.put_json(s3, bucket, key, dict(marker, ended_at=time.time()))
    except Exception:
        pass  # the next cleanup looks again
