"""The agent's command line: `python3 agent.pyz <command> ...`, one JSON document on stdout."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from ..core.fsutil import write_failed
from . import AGENT_PROTOCOL, ops, watchdog


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; a write the host refuses (disk full, read-only) is one JSON error, not a traceback."""
    try:
        return dispatch(argv)
    except OSError as exc:
        failure = write_failed(exc)
        if failure is None:
            raise
        fields = {"disk_full": failure.path} if failure.kind == "disk_full" else {}
        result = {"ok": False, "error": failure.message, "write_error": failure.to_dict(), **fields}
        sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
        return 1


def dispatch(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="runctl-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("launch", help="start a run detached; spec JSON on stdin with --spec-stdin")
    p.add_argument("run_dir")
    p.add_argument("--spec-stdin", action="store_true")
    p = sub.add_parser("probe")
    p.add_argument("run_dir")
    p = sub.add_parser("stop")
    p.add_argument("run_dir")
    p.add_argument("--grace", type=float, default=None)
    p.add_argument("--message", default="stopped by the user")
    p = sub.add_parser("wait")
    p.add_argument("run_dir")
    p.add_argument("--seq", type=int, default=0)
    p.add_argument("--timeout", type=float, default=30.0)
    p = sub.add_parser("log")
    p.add_argument("run_dir")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--limit", type=int, default=1 << 20)
    p = sub.add_parser("follow", help="stream log bytes and status changes as frames until the run ends")
    p.add_argument("run_dir")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--seq", type=int, default=0)
    p.add_argument("--heartbeat", type=float, default=2.0)
    p = sub.add_parser("checkpoints")
    p.add_argument("run_dir")
    p = sub.add_parser("digests", help="size and sha256 of checkpoint files; JSON list of paths on stdin")
    p.add_argument("run_dir")
    p.add_argument("--base", choices=("checkpoint_dir", "project"), default="checkpoint_dir")
    p = sub.add_parser("on-end-claim", help="claim the run's end-of-run step (on_end.claim, O_EXCL)")
    p.add_argument("run_dir")
    p.add_argument("--by", choices=("controller", "agent"), default="controller")
    p = sub.add_parser("on-end-result", help="record the result of the end-of-run step a controller claimed")
    p.add_argument("run_dir")
    p.add_argument("--json", dest="result_json", required=True, help="the result as a JSON object")
    p = sub.add_parser("s3-proof", help="whether every checkpoint is verified in S3 (waits for the final pass)")
    p.add_argument("run_dir")
    p.add_argument("--wait", type=float, default=0.0)
    p = sub.add_parser("plain")
    p.add_argument("project_dir")
    sub.add_parser("version")
    watchdog.add_parser(sub)
    if (argv if argv is not None else sys.argv[1:])[:1] == ["s3-upload"]:
        # The checkpoint uploader, run by the agent in runctl's tool environment (boto3): not a command
        # with one JSON answer, and its imports are paid only there.
        from ..storage.uploader import main as s3_upload

        return s3_upload(list(argv if argv is not None else sys.argv[1:])[1:])
    if (argv if argv is not None else sys.argv[1:])[:1] == ["s3-fetch"]:
        # What the run needs from S3 before its script starts (resume checkpoint), the same way.
        from ..storage.fetcher import main as s3_fetch

        return s3_fetch(list(argv if argv is not None else sys.argv[1:])[1:])
    args = parser.parse_args(argv)

    if args.command == "launch":
        from .launch import launch  # the supervisor's imports are paid only when starting a run

        spec = json.loads(sys.stdin.read()) if args.spec_stdin else None
        result = launch(args.run_dir, spec)
        code = 0 if result.get("ok") else 1
    elif args.command == "probe":
        result, code = ops.probe(args.run_dir), 0
    elif args.command == "stop":
        result = ops.request_stop(args.run_dir, args.grace, args.message)
        code = 0 if result.get("ok") else 1
    elif args.command == "wait":
        result, code = ops.wait_change(args.run_dir, args.seq, args.timeout), 0
    elif args.command == "log":
        out = ops.read_log(args.run_dir, args.offset, args.limit)
        os.write(1, out)
        return 0
    elif args.command == "follow":
        return stream_frames(args.run_dir, args.offset, args.seq, args.heartbeat)
    elif args.command == "checkpoints":
        result, code = ops.list_checkpoints(args.run_dir), 0
    elif args.command == "digests":
        try:
            paths = json.loads(sys.stdin.read() or "[]")
        except ValueError as exc:
            paths, result = None, {"ok": False, "error": "stdin is not a JSON list of paths: %s" % exc}
        if isinstance(paths, list) and all(isinstance(p, str) for p in paths):
            result = ops.checkpoint_digests(args.run_dir, args.base, paths)
        elif paths is not None:
            result = {"ok": False, "error": "stdin must be a JSON list of paths"}
        code = 0 if "files" in result else 1
    elif args.command == "on-end-claim":
        result = ops.on_end_claim(args.run_dir, args.by)
        code = 1 if result.get("error") else 0
    elif args.command == "on-end-result":
        try:
            given = json.loads(args.result_json)
        except ValueError as exc:
            result = {"ok": False, "error": "--json is not valid JSON: %s" % exc}
        else:
            result = ops.on_end_result(args.run_dir, given)
        code = 0 if result.get("ok") else 1
    elif args.command == "s3-proof":
        result, code = ops.s3_proof(args.run_dir, args.wait), 0
    elif args.command == "plain":
        result, code = ops.plain_status(args.project_dir), 0
    elif args.command == "watchdog":
        result, code = watchdog.run_command(args)
    else:
        result, code = {"protocol": AGENT_PROTOCOL, "python": sys.version.split()[0]}, 0
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return code


def stream_frames(run_dir: str, offset: int, seq: int, heartbeat: float) -> int:
    """Frames on stdout: `L <offset> <n>\\n<n bytes>`, `S <json>\\n`, `H\\n`, `E <json>\\n`.

    Every log frame names the byte offset it starts at, so a controller that reconnects after a
    dropped link can ask for exactly the bytes it lacks: no gap and no duplicate line.
    """
    out = sys.stdout.buffer
    if offset < 0:
        offset = 0
    position = offset
    for kind, payload in ops.follow(run_dir, offset, seq, heartbeat=heartbeat):
        if kind == "log":
            out.write(b"L %d %d\n" % (position, len(payload)))
            out.write(payload)
            position += len(payload)
        elif kind == "heartbeat":
            out.write(b"H\n")
        elif kind == "gone":
            out.write(b"G " + json.dumps(payload, sort_keys=True).encode() + b"\n")
        else:
            tag = b"E" if kind == "end" else b"S"
            out.write(tag + b" " + json.dumps(payload, sort_keys=True).encode() + b"\n")
        out.flush()
    return 0
