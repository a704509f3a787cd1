"""The controller's side of `--checkpoint-s3`: the spec's block, and the AWS credentials it forwards.

The uploads themselves run on the host (agent/uploads.py, storage/uploader.py), with the host's
own credentials and environment. What the host needs from here:

- The endpoint: a local run inherits this machine's environment (AWS_ENDPOINT_URL included); an SSH
  or Lambda host has none of the user's AWS configuration, so it gets the user's endpoint (and
  region) in the spec when one is set; an EC2 instance uses its own environment (instance role,
  region), unless credentials are forwarded to it, which belong with the user's endpoint.
- With `--forward-aws-credentials`: short-lived session credentials (STS GetSessionToken, or the
  user's own when they already are session credentials); the long-lived keys only with `=static`,
  said on stderr. They reach the host through the transport's stdin into a 0600 file in a 0700
  dir (never a command line, a log, the store or spec.json, which holds the file's path only), and
  the agent deletes that file once the uploads are over (agent/uploads.forget_credentials).

boto3 is imported only when credentials are forwarded.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .core.errors import HostError, UsageError

SECRETS_DIR = ".runctl/secrets"  # under the host's home; one 0700 dir per run
CREDENTIALS_NAME = "aws-credentials"
SESSION_SECONDS = 12 * 3600  # STS's default; a longer run's uploads need the host's own credentials
REMOTE_HOSTS = ("ssh", "lambda")  # hosts with none of the user's AWS configuration


@dataclass(frozen=True)
class Forwarded:
    """Credentials to put on a host, and what they are (for the line the user sees)."""

    access_key: str
    secret_key: str
    token: str | None
    kind: str  # "session (STS)", "session (yours)" or "static"
    expires: str | None = None

    def shared_file(self) -> bytes:
        """The AWS shared-credentials file the uploader reads (AWS_SHARED_CREDENTIALS_FILE)."""
        lines = ["[default]", "aws_access_key_id = " + self.access_key, "aws_secret_access_key = " + self.secret_key]
        if self.token:
            lines.append("aws_session_token = %s" % self.token)
        return ("\n".join(lines) + "\n").encode()


def endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def spec_block(provider: str, uri: str | None, forward: str | None) -> dict[str, Any] | None:
    """The spec's `checkpoint_s3` for a run on `provider`; UsageError for forwarding to this machine."""
    if not uri:
        return None
    if forward and provider == "local":
        raise UsageError(
            "--forward-aws-credentials is for remote hosts; a local run uploads with your own AWS environment",
            "drop --forward-aws-credentials",
        )
    block: dict[str, Any] = {"uri": uri, "region": None, "endpoint_url": None}
    if provider in REMOTE_HOSTS or forward:
        block.update(region=region(), endpoint_url=endpoint())
    return block


def start_hint(provider: str, error: str, forwarded: bool) -> str:
    """The fix for a host that cannot use the bucket at the start (exit 4)."""
    if "NoSuchBucket" in error or "does not exist" in error:
        return "create the bucket (aws s3 mb s3://BUCKET) or name an existing one in --checkpoint-s3"
    if forwarded:
        return (
            "the credentials forwarded from this machine were refused: check them (aws sts get-caller-identity)"
            " and AWS_ENDPOINT_URL, then start again"
        )
    if provider in REMOTE_HOSTS:
        return (
            "give the host credentials: add --forward-aws-credentials (short-lived, deleted after the run),"
            " or configure AWS credentials on the host"
        )
    if provider == "aws":
        return "give the instance a role (instance profile) that can use the bucket, or add --forward-aws-credentials"
    return "fix your AWS credentials (AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and AWS_ENDPOINT_URL"


# ---- the credentials ---------------------------------------------------------------------------


def credentials(mode: str, say: Callable[[str], None]) -> Forwarded:
    """The credentials to forward: session ones (the user's own, or from STS), or with mode
    `static` the long-lived keys themselves (said). HostError (exit 4) when there are none."""
    import boto3

    session = boto3.session.Session()
    found = session.get_credentials()
    if found is None:
        raise HostError(
            "no AWS credentials on this machine to forward",
            "set them up (aws configure, aws sso login, AWS_PROFILE), or drop --forward-aws-credentials",
        )
    frozen = found.get_frozen_credentials()
    if frozen.token:
        return Forwarded(frozen.access_key, frozen.secret_key, frozen.token, "session (yours)")
    if mode == "static":
        say(
            "warning: --forward-aws-credentials=static puts your long-lived AWS keys on the host "
            "(0600, deleted when the run ends)"
        )
        return Forwarded(frozen.access_key, frozen.secret_key, None, "static")
    return from_sts(session)


def from_sts(session: Any) -> Forwarded:
    from botocore.config import Config

    try:
        sts = session.client(
            "sts",
            region_name=session.region_name or region() or "us-east-1",
            config=Config(retries={"total_max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=20),
        )
        answer = sts.get_session_token(DurationSeconds=SESSION_SECONDS)["Credentials"]
    except Exception as exc:
        from .storage.s3 import describe

        raise HostError(
            "could not get session credentials from STS to forward: %s" % describe(exc),
            "use session credentials (aws sso login, or AWS_SESSION_TOKEN set), or send your long-lived keys"
            " with --forward-aws-credentials=static",
        ) from None
    expires = answer.get("Expiration")
    return Forwarded(
        answer["AccessKeyId"],
        answer["SecretAccessKey"],
        answer["SessionToken"],
        "session (STS)",
        expires.isoformat() if hasattr(expires, "isoformat") else str(expires) if expires else None,
    )


# ---- on the host -------------------------------------------------------------------------------


def install(transport: Any, run_id: str, forwarded: Forwarded) -> str:
    """Write the credentials file on the host through the transport's stdin; its path."""
    folder = "%s/%s/%s" % (transport.home, SECRETS_DIR, run_id)
    path = "%s/%s" % (folder, CREDENTIALS_NAME)
    quoted = {"d": shlex.quote(folder), "f": shlex.quote(path), "s": shlex.quote(os.path.dirname(folder))}
    transport.run(
        "umask 077 && mkdir -p %(d)s && chmod 700 %(s)s %(d)s && cat > %(f)s && chmod 600 %(f)s" % quoted,
        input=forwarded.shared_file(),
    )
    return path


def remove(transport: Any, path: str) -> None:
    """Delete a credentials file a start that failed before its launch left (best effort)."""
    try:
        folder = os.path.dirname(path)
        transport.run("rm -f %s; rmdir %s 2>/dev/null; true" % (shlex.quote(path), shlex.quote(folder)), check=False)
    except Exception:
        pass  # the host is unreachable: so is the file, and its session credentials expire


# ---- what the user sees ------------------------------------------------------------------------


def describe(summary: dict[str, Any] | None) -> str | None:
    """One line of a run's uploads (status.json's `checkpoint_s3`, agent/uploads.summary), or None."""
    if not summary:
        return None
    from .storage.objects import BadUri, parse_uri

    count, last, uri = int(summary.get("uploaded") or 0), summary.get("last"), summary.get("uri")
    if summary.get("phase") == "failed":
        return "checkpoint uploads to %s failed: %s" % (uri, summary.get("error") or summary.get("message"))
    parts = []
    if count:
        try:
            bucket = parse_uri(str(uri))[0]
            where = " (s3://%s/%s%s)" % (bucket, summary.get("prefix") or "", last) if last else ""
        except BadUri:
            where = ""
        parts.append("checkpoint %d uploaded and verified: %s%s" % (count, last, where))
    else:
        parts.append("no checkpoint uploaded yet to %s" % uri)
    waiting = int(summary.get("pending") or 0) + (1 if summary.get("uploading") else 0)
    if waiting:
        parts.append("%d waiting" % waiting)
    if summary.get("error"):
        parts.append("upload failing: %s (retried)" % summary["error"])
    return "; ".join(parts)


def changed_line(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str | None:
    """The line to say while following a run when its uploads moved on (one more verified, a new
    failure, the uploads failed); None when nothing a user would notice changed."""
    if not after:
        return None
    old = before or {}
    moved = any(old.get(k) != after.get(k) for k in ("uploaded", "error"))
    failed = after.get("phase") == "failed" and old.get("phase") != "failed"
    return describe(after) if moved or failed else None
