"""`runctl checkpoint`: see and fetch a run's checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..core.errors import HostError, UsageError
from . import options as o
from .common import Output, emit_json, say, store, table

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
RunId = Annotated[str, typer.Argument(help="Run id or a unique prefix of it")]


@app.command("list")
def list_(
    run_id: Annotated[str | None, typer.Argument(help="Run id (or a unique prefix), or s3://bucket/prefix")] = None,
    instance_id: Annotated[
        str | None, typer.Option("--instance-id", help="The latest run on this EC2 instance (id or Name tag)")
    ] = None,
    region: Annotated[str | None, typer.Option("--region", help="AWS region, for --instance-id by Name")] = None,
    output: o.OutputOpt = Output.text,
) -> None:
    """A run's checkpoints: verified in S3 (a run with --checkpoint-s3, or every run under
    s3://bucket/prefix), else the files in its checkpoint dir, newest first (* = written by this run)."""
    import time

    from ..checkpointing import checkpoints

    if (run_id is None) == (instance_id is None):
        raise UsageError(
            "name one run: a RUN_ID or --instance-id" + (", not both" if run_id else ""),
            "for example: runctl checkpoint list RUN_ID, or: runctl checkpoint list --instance-id i-0123456789abcdef0",
        )
    if run_id is not None and run_id.startswith("s3://"):
        _list_s3(run_id, None, output)
        return
    db = store()
    if instance_id is not None:
        from ..providers.aws import latest_run

        row = latest_run(db, instance_id, region)[1]
    else:
        assert run_id is not None
        row = db.resolve(run_id)
    from ..s3checkpoints import run_cfg

    cfg = run_cfg(row)
    if cfg is not None:
        _list_s3(str(cfg["uri"]), row, output)
        return
    listing = checkpoints(row)
    if output == Output.json:
        emit_json(listing)
        return
    say("checkpoint dir %s on %s" % (listing["checkpoint_dir"], row["host"]))
    if not listing["files"]:
        say("no checkpoints yet")
    for item in listing["files"]:
        print(
            "%s %10.1f MB  %s  %s"
            % ("*" if item["this_run"] else " ", item["size"] / 1e6, time.strftime("%Y-%m-%d %H:%M:%S",
               time.localtime(item["mtime"])), item["path"])
        )  # fmt: skip


@app.command()
def download(
    run_id: RunId,
    dest: Annotated[str | None, typer.Option("--dest", help="Local dir (default ./checkpoints/<run_id>/)")] = None,
    all_files: Annotated[bool, typer.Option("--all", help="Also files written before this run")] = False,
    latest_only: Annotated[bool, typer.Option("--latest", help="Only the newest verified checkpoint (S3)")] = False,
    name: Annotated[str | None, typer.Option("--name", help="Only the checkpoint NAME (S3)")] = None,
) -> None:
    """Pull the run's checkpoints: from S3, each verified against its manifest (SHA-256) before it
    is put in place (a mismatch keeps nothing: exit 4); without --checkpoint-s3, with rsync from the
    host (resumable, with progress)."""
    import sys

    from .. import providers
    from ..checkpointing import download_checkpoints, skipped_warning
    from ..providers.base import DOWNLOAD_CHECKPOINTS, require
    from ..s3checkpoints import run_cfg

    if latest_only and name is not None:
        raise UsageError("--latest and --name both choose the checkpoint", "keep one of them")
    db = store()
    row = db.resolve(run_id)
    if run_cfg(row) is not None:
        _download_s3(row, Path(dest).expanduser().absolute() if dest else None, latest_only, name)
        return
    if latest_only or name is not None:
        raise UsageError(
            "run %s kept no checkpoints in S3: --latest and --name choose among those" % row["run_id"],
            "pull its checkpoint dir from the host: runctl checkpoint download %s" % row["run_id"],
        )
    require(providers.get(row["provider"]), DOWNLOAD_CHECKPOINTS, run_id=row["run_id"])
    target, done = download_checkpoints(
        db, row, Path(dest).expanduser().absolute() if dest else None, all_files, progress=sys.stderr.isatty()
    )
    print(target)
    if done.allowed:
        say("%d file(s) in %s" % (len(done.allowed), target))
    elif not done.skipped:
        say("no checkpoints to download for run %s" % row["run_id"])
    if done.skipped:
        say(skipped_warning(target, done.skipped))


@app.command()
def latest(
    target: Annotated[str, typer.Argument(metavar="RUN_ID|S3_URI", help="Run id, or s3://bucket/prefix")],
    output: o.OutputOpt = Output.text,
) -> None:
    """The newest checkpoint that S3 still holds as verified (size and SHA-256 read back): of a run,
    or across every run under s3://bucket/prefix. A run without --checkpoint-s3: its newest file."""
    from .. import s3checkpoints as sc
    from ..storage import catalog

    row = None if target.startswith("s3://") else store().resolve(target)
    if row is not None and sc.run_cfg(row) is None:
        _latest_local(row, output)
        return
    uri = target if row is None else str(sc.run_cfg(row)["uri"])  # type: ignore[index]
    s3 = sc.client(None if row is None else sc.run_cfg(row))
    manifests = _manifests(s3, uri, row)
    with sc.s3_errors(uri):
        found, passed = catalog.latest(s3, manifests)
    for line in passed:
        say("passed over %s" % line)
    if found is None:
        raise UsageError(
            "no verified checkpoint in %s" % _where(uri, row),
            "see what is there: runctl checkpoint list %s" % (row["run_id"] if row else uri),
        )
    manifest, entry = found
    if output == Output.json:
        emit_json(_entry_view(manifest, entry))
        return
    print(catalog.entry_uri(manifest.bucket, entry))
    say("%s/%s, %s, written %s" % (manifest.run_id, entry["name"], _step(entry), _when(entry.get("mtime"))))


@app.command()
def cleanup(
    target: Annotated[str, typer.Argument(metavar="RUN_ID|S3_URI", help="Run id, or s3://bucket/prefix")],
    keep: Annotated[int, typer.Option("--keep", help="Keep the newest N verified checkpoints of each run")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing")] = False,
    output: o.OutputOpt = Output.text,
) -> None:
    """Remove all but the newest N verified checkpoints of a run (or of each run under a prefix) from
    S3, and from its manifest. Never a checkpoint a live run resumed from, never an object that no
    runctl manifest lists."""
    from .. import s3checkpoints as sc
    from ..storage import catalog

    if keep < 1:
        raise UsageError("--keep must be 1 or more, got %d" % keep, "for example: --keep 3 (the newest three stay)")
    db = store()
    row = None if target.startswith("s3://") else db.resolve(target)
    if row is not None and sc.run_cfg(row) is None:
        raise UsageError(
            "run %s kept no checkpoints in S3 (it ran without --checkpoint-s3): nothing to clean up" % row["run_id"],
            "cleanup works on checkpoints in S3: runctl checkpoint cleanup s3://bucket/prefix --keep N",
        )
    uri = target if row is None else str(sc.run_cfg(row)["uri"])  # type: ignore[index]
    s3 = sc.client(None if row is None else sc.run_cfg(row))
    manifests = _manifests(s3, uri, row)
    with sc.s3_errors(uri):
        held = sc.protected(s3, manifests, db)
        plan = catalog.cleanup_plan(manifests, keep, set(held))
        deleted = 0
        if not dry_run:
            for item in plan:
                deleted += catalog.apply_cleanup(s3, item)
    report = [
        {
            "run_id": item["manifest"].run_id,
            "uri": item["manifest"].uri,
            "keep": [e["name"] for e in item["keep"]],
            "remove": [e["name"] for e in item["remove"]],
            "protected": {n: held[(item["manifest"].run_id, n)] for n in item["protected"]},
            "objects": item["keys"],
        }
        for item in plan
    ]
    if output == Output.json:
        emit_json({"dry_run": dry_run, "keep": keep, "runs": report, "objects_deleted": deleted})
        return
    verb = "would remove" if dry_run else "removed"
    for part in report:
        for n in part["remove"]:
            print("%s %s/%s" % (verb, part["run_id"], n))
        for n, by in part["protected"].items():
            say("kept %s/%s: run %s resumed from it and has not ended" % (part["run_id"], n, by))
    removed = sum(len(p["remove"]) for p in report)
    say(
        "%s %d checkpoint(s) (%d object(s)) in %d run(s); the newest %d of each run stay"
        % (verb, removed, sum(len(p["objects"]) for p in report), len(report), keep)
    )


# ---- S3 -------------------------------------------------------------------------------------------


def _manifests(s3: Any, uri: str, row: dict[str, Any] | None) -> list[Any]:
    """The manifests a command works on: the run's own, or every run's under the prefix."""
    from .. import s3checkpoints as sc

    if row is None:
        return sc.manifests_at(s3, uri)
    manifest = sc.manifest_of(s3, row)
    return [] if manifest is None else [manifest]


def _where(uri: str, row: dict[str, Any] | None) -> str:
    return "run %s (%s)" % (row["run_id"], uri) if row is not None else uri


def _when(t: Any) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t))) if t else "-"


def _step(entry: dict[str, Any]) -> str:
    parts = []
    if entry.get("step") is not None:
        parts.append("step %s" % entry["step"])
    if entry.get("epoch") is not None:
        parts.append("epoch %s" % entry["epoch"])
    return ", ".join(parts) or "step unknown"


def _entry_view(manifest: Any, entry: dict[str, Any]) -> dict[str, Any]:
    from ..storage import catalog

    return {
        "run_id": manifest.run_id,
        "name": entry["name"],
        "uri": catalog.entry_uri(manifest.bucket, entry),
        "bucket": manifest.bucket,
        "size": entry.get("size"),
        "step": entry.get("step"),
        "epoch": entry.get("epoch"),
        "mtime": entry.get("mtime"),
        "uploaded_at": entry.get("time"),
        "checksum": entry.get("checksum"),
        "entry": entry,
    }


def _list_s3(uri: str, row: dict[str, Any] | None, output: Output) -> None:
    from .. import s3checkpoints as sc

    s3 = sc.client(None if row is None else sc.run_cfg(row))
    manifests = _manifests(s3, uri, row)
    runs = [
        {
            "run_id": m.run_id,
            "uri": m.uri,
            "created_at": m.document.get("created_at"),
            "ended_at": m.document.get("ended_at"),
            "latest": m.document.get("latest"),
            "checkpoints": [_entry_view(m, e) for e in reversed(m.checkpoints())],
        }
        for m in manifests
    ]
    if output == Output.json:
        emit_json({"uri": uri, "runs": runs})
        return
    if row is None and not runs:
        say("no runctl checkpoints under %s" % uri)
        return
    rows = []
    for run in runs:
        for item in run["checkpoints"]:
            rows.append(
                [
                    "*" if item["name"] == run["latest"] else " ",
                    run["run_id"],
                    item["name"],
                    "%.1f MB" % ((item["size"] or 0) / 1e6),
                    "-" if item["step"] is None else str(item["step"]),
                    "-" if item["epoch"] is None else str(item["epoch"]),
                    _when(item["mtime"]),
                ]
            )
    say("verified checkpoints in %s (* = the run's latest)" % _where(uri, row))
    if rows:
        table([" ", "RUN", "NAME", "SIZE", "STEP", "EPOCH", "WRITTEN"], rows)
    else:
        say("no verified checkpoints yet")


def _latest_local(row: dict[str, Any], output: Output) -> None:
    from ..checkpointing import checkpoints

    listing = checkpoints(row)
    files = [f for f in listing.get("files", []) if f.get("this_run")]
    if not files:
        raise UsageError(
            "run %s has written no checkpoint yet (in %s on %s)"
            % (row["run_id"], listing["checkpoint_dir"], row["host"]),
            "see its files: runctl checkpoint list %s" % row["run_id"],
        )
    newest = max(files, key=lambda f: f["mtime"])
    if output == Output.json:
        emit_json({"run_id": row["run_id"], "host": row["host"], "checkpoint_dir": listing["checkpoint_dir"], **newest})
        return
    print(newest["path"])
    say(
        "on %s in %s, written %s (not in S3: the run has no --checkpoint-s3)"
        % (row["host"], listing["checkpoint_dir"], _when(newest["mtime"]))
    )


def _download_s3(row: dict[str, Any], dest: Path | None, latest_only: bool, name: str | None) -> None:
    import sys

    from .. import s3checkpoints as sc
    from ..checkpointing import default_target
    from ..storage import catalog

    cfg = sc.run_cfg(row)
    s3 = sc.client(cfg)
    manifest = sc.manifest_of(s3, row)
    entries = [] if manifest is None else list(reversed(manifest.checkpoints()))
    where = _where(str((cfg or {}).get("uri")), row)
    if name is not None:
        entries = [e for e in entries if e["name"] == name]
        if not entries:
            raise UsageError(
                "no verified checkpoint %r in %s" % (name, where),
                "list them: runctl checkpoint list %s" % row["run_id"],
            )
    if not entries:
        raise UsageError(
            "no verified checkpoint in %s yet" % where, "list them: runctl checkpoint list %s" % row["run_id"]
        )
    if latest_only:
        entries = entries[:1]
    assert manifest is not None
    target = dest or default_target(row)
    progress = say if sys.stderr.isatty() else None
    done = []
    for entry in entries:
        uri = catalog.entry_uri(manifest.bucket, entry)
        try:
            with sc.s3_errors(uri):
                done.append(catalog.download_entry(s3, manifest.bucket, entry, str(target), progress=progress))
        except catalog.NotVerified as exc:
            raise HostError(
                "%s: nothing kept" % exc, "the object changed in S3 after its upload; use another checkpoint"
            ) from None
        except FileExistsError as exc:
            raise UsageError(
                "%s exists and is not checkpoint %s" % (exc, entry["name"]), "move it aside, or choose another --dest"
            ) from None
    print(target)
    say("%d checkpoint(s) from %s verified in %s" % (len(done), where, target))
