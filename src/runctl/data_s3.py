"""The controller's side of `--data-s3`: the spec's block, and a look at the bucket before anything starts.

The download itself runs on the host, before the script (storage/fetcher.py), with the host's
credentials or the forwarded ones, like the checkpoint uploads (checkpoint_s3.py). From here:

- the spec's `data_s3` block: the URI, and for SSH and Lambda hosts (or with forwarded credentials)
  this machine's endpoint and region, which such a host does not have;
- when this machine can read the bucket, a missing bucket or a prefix with no objects is a usage
  error here (exit 2), before any host is acquired. When it cannot (no credentials here, access
  denied, endpoint unreachable), the host checks with its own and fails the run before training.
"""

from __future__ import annotations

from typing import Any

from . import checkpoint_s3
from .core.errors import UsageError


def spec_block(provider: str, uri: str | None, forward: str | None) -> dict[str, Any] | None:
    if not uri:
        return None
    if forward and provider == "local":
        raise UsageError(
            "--forward-aws-credentials is for remote hosts; a local run downloads with your own AWS environment",
            "drop --forward-aws-credentials",
        )
    block: dict[str, Any] = {"uri": uri, "region": None, "endpoint_url": None}
    if provider in checkpoint_s3.REMOTE_HOSTS or forward:
        block.update(region=checkpoint_s3.region(), endpoint_url=checkpoint_s3.endpoint())
    return block


def check(block: dict[str, Any] | None) -> None:
    """UsageError when this machine sees the bucket missing or nothing under the prefix; else nothing."""
    if not block:
        return
    from .storage import objects, s3

    uri = str(block["uri"])
    bucket, prefix = objects.parse_uri(uri)
    listed = prefix + "/" if prefix else ""
    try:
        client = s3.client(region=block.get("region"), attempts=2, timeout=5.0)
        answer = client.list_objects_v2(Bucket=bucket, Prefix=listed, MaxKeys=2)
        if answer.get("KeyCount") or answer.get("Contents"):
            return
        if prefix:  # s3://bucket/file.csv: one object
            client.head_object(Bucket=bucket, Key=prefix)
            return
    except Exception as exc:
        code = s3.error_code(exc)
        if code == "NoSuchBucket":
            raise UsageError(
                "--data-s3 %s: the bucket %s does not exist" % (uri, bucket),
                "name an existing bucket (aws s3 ls), or create it and upload the data: aws s3 sync DIR s3://%s/%s"
                % (bucket, listed),
            ) from None
        if code not in ("404", "NoSuchKey", "NotFound"):
            return  # this machine cannot tell (credentials, network): the host checks with its own
    raise UsageError(
        "--data-s3 %s: no objects under s3://%s/%s" % (uri, bucket, listed),
        "check the path (aws s3 ls s3://%s/%s), or upload the data first: aws s3 sync DIR s3://%s/%s"
        % (bucket, listed, bucket, listed),
    )
