"""S3 calls for checkpoints: a client from the host's own credentials, verified uploads, the manifest.

boto3 is imported inside each function: this module travels in the agent artifact but runs only in
runctl's tool environment (or on the controller), never in the agent's own stdlib-only process.

An upload counts only once verified: S3 is given the SHA-256 computed here (of the whole file, or
of each part), so it refuses bytes that arrive altered, and HEAD with ChecksumMode=ENABLED must
then read back the same size and checksum (the composite `<b64>-<parts>` for a multipart object).
The local file's size and mtime are read before and after: a file that changed meanwhile was not
uploaded as it now is, and does not count (UploadChanged).

Credentials are the host's own: the SDK's chain (environment, profile, instance role). boto3
honours AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_S3) itself; `client(env=...)` passes them on too.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..core.errors import HostError
from . import checksums
from .objects import BadUri, parse_uri

DEFAULT_REGION = "us-east-1"
MULTIPART_THRESHOLD = 16 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024  # as boto3 TransferConfig: 8 MiB parts, 10 at once
THREADS = 10
# Answers that a later attempt may not get: S3's own codes for overload, timeouts and 5xx.
TRANSIENT_CODES = (
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "BadDigest",
    "XAmzContentSHA256Mismatch",
    "InvalidPart",
    "NoSuchUpload",
)
# Answers a retry cannot change: the fix is the user's.
CREDENTIAL_CODES = ("SignatureDoesNotMatch", "InvalidAccessKeyId", "ExpiredToken", "InvalidToken", "AccessDenied")


class VerifyFailed(Exception):
    """The object S3 holds is not the file that was sent (size or checksum differ): upload again."""


class UploadChanged(Exception):
    """The local file changed while it was being uploaded: what S3 got is not the finished file."""


def client(
    env: Optional[Mapping[str, str]] = None, region: Optional[str] = None, attempts: int = 3, timeout: float = 20.0
) -> Any:
    """An S3 client from `env`'s credentials and endpoint (os.environ by default) or the SDK's chain."""
    import boto3
    from botocore.config import Config

    source = os.environ if env is None else env
    keys: Dict[str, Any] = {}
    if source.get("AWS_ACCESS_KEY_ID") and source.get("AWS_SECRET_ACCESS_KEY"):
        keys = {
            "aws_access_key_id": source["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": source["AWS_SECRET_ACCESS_KEY"],
            "aws_session_token": source.get("AWS_SESSION_TOKEN") or None,
        }
    elif env is not None and source.get("AWS_PROFILE"):
        keys = {"profile_name": source["AWS_PROFILE"]}
    session = boto3.session.Session(**keys)
    region = region or source.get("AWS_REGION") or source.get("AWS_DEFAULT_REGION") or session.region_name
    config = Config(
        retries={"total_max_attempts": max(1, attempts), "mode": "standard"},
        connect_timeout=timeout,
        read_timeout=max(timeout, 60.0),
        max_pool_connections=THREADS * 2,
        # Every body runctl sends carries its SHA-256 in a signed checksum header that S3 checks, so
        # the SigV4 payload hash would hash each part a second time. botocore already skips it over
        # https; this skips it over plain http too (emulators, S3-compatible stores on a LAN).
        s3={"payload_signing_enabled": False},
    )
    endpoint = source.get("AWS_ENDPOINT_URL_S3") or source.get("AWS_ENDPOINT_URL") or None
    return session.client("s3", region_name=region or DEFAULT_REGION, endpoint_url=endpoint, config=config)


# ---- errors ------------------------------------------------------------------------------------


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(
            (response.get("Error") or {}).get("Code")
            or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            or ""
        )
    return ""


def is_transient(exc: BaseException) -> bool:
    """Whether trying again may succeed: connection trouble, timeouts, 5xx, throttling, a failed check."""
    if isinstance(exc, (VerifyFailed, UploadChanged)):
        return isinstance(exc, VerifyFailed)
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - boto3 is what this module runs with
        return False
    names = ("ConnectionError", "HTTPClientError", "ReadTimeoutError", "IncompleteReadError", "ResponseStreamingError")
    network = tuple(getattr(bx, name) for name in names if hasattr(bx, name))
    if isinstance(exc, network):
        return True
    if isinstance(exc, bx.ClientError):
        code = error_code(exc)
        status = (getattr(exc, "response", {}) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in TRANSIENT_CODES or int(status) >= 500 or (code.isdigit() and int(code) >= 500)
    return isinstance(exc, (ConnectionError, TimeoutError))


def describe(exc: BaseException) -> str:
    """One line for events and status: what failed, without a traceback."""
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover
        bx = None
    if bx is not None and isinstance(exc, bx.NoCredentialsError):
        return "no AWS credentials found (environment, profile or instance role)"
    if bx is not None and isinstance(exc, bx.EndpointConnectionError):
        return "cannot reach S3 at %s" % getattr(exc, "kwargs", {}).get("endpoint_url", "?")
    code = error_code(exc)
    if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId"):
        return "S3 rejected the credentials (%s): check the access key and secret" % code
    if code in ("ExpiredToken", "InvalidToken"):
        return "S3 rejected the session token (%s): get fresh credentials" % code
    if code in ("AccessDenied", "403"):
        return "S3 denied access (%s): the credentials lack permission for this bucket or prefix" % code
    if code in ("NoSuchBucket", "404"):
        return "the bucket does not exist (%s)" % code
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return "%s: %s" % (type(exc).__name__, text)


# ---- uploads -----------------------------------------------------------------------------------


def _identity(path: str) -> Tuple[int, int, int]:
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns, info.st_ino


def upload_file(
    s3: Any,
    bucket: str,
    key: str,
    path: str,
    threshold: int = MULTIPART_THRESHOLD,
    part_size: int = PART_SIZE,
    threads: int = THREADS,
) -> Dict[str, Any]:
    """Upload `path` to `key` and verify it: {"key", "size", "checksum", "parts", "part_size", "sha256"}.

    Raises VerifyFailed when S3's copy differs, UploadChanged when the file changed meanwhile, and
    boto3's errors as they come (the caller retries the transient ones).
    """
    before = _identity(path)
    size = before[0]
    if size < max(threshold, 1):
        with open(path, "rb") as handle:
            data = handle.read()
        if len(data) != size:
            raise UploadChanged("%s changed size while being read" % path)
        digest = hashlib.sha256(data).digest()
        checksum = checksums.b64(digest)
        s3.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm=checksums.ALGORITHM, ChecksumSHA256=checksum)
        result: Dict[str, Any] = {"parts": 1, "part_size": None, "sha256": digest.hex()}
    else:
        part = checksums.part_size_for(size, max(part_size, 1))
        checksum = _multipart(s3, bucket, key, path, size, part, threads)
        result = {"parts": checksums.part_count(size, part), "part_size": part, "sha256": None}
    if _identity(path) != before:
        raise UploadChanged("%s changed while being uploaded" % path)
    verify(s3, bucket, key, size, checksum)
    result.update({"key": key, "size": size, "checksum": checksum, "checksum_algorithm": checksums.ALGORITHM})
    return result


def _multipart(s3: Any, bucket: str, key: str, path: str, size: int, part_size: int, threads: int) -> str:
    """A multipart upload of `path`, each part with its SHA-256; the composite checksum it must have."""
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm=checksums.ALGORITHM)["UploadId"]
    count = checksums.part_count(size, part_size)
    fd = os.open(path, os.O_RDONLY)

    def send(index: int) -> Tuple[Dict[str, Any], bytes]:
        data = os.pread(fd, part_size, index * part_size)
        expected = min(part_size, size - index * part_size)
        if len(data) != expected:
            raise UploadChanged("%s changed size while being read" % path)
        digest = hashlib.sha256(data).digest()
        answer = s3.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=index + 1,
            Body=data,
            ChecksumAlgorithm=checksums.ALGORITHM,
            ChecksumSHA256=checksums.b64(digest),
        )
        return {"PartNumber": index + 1, "ETag": answer["ETag"], "ChecksumSHA256": checksums.b64(digest)}, digest

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(threads, count))) as pool:
            done: List[Tuple[Dict[str, Any], bytes]] = list(pool.map(send, range(count)))
        s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": [p for p, _ in done]}
        )
    except BaseException:
        try:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception:
            pass  # S3 itself may be what failed; lifecycle rules clean up abandoned parts
        raise
    finally:
        os.close(fd)
    return checksums.composite([digest for _, digest in done])


def verify(s3: Any, bucket: str, key: str, size: int, checksum: str) -> Dict[str, Any]:
    """HEAD the object with its checksum: it must have `size` bytes and the SHA-256 `checksum`."""
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    got_size = int(head.get("ContentLength", -1))
    got = head.get("ChecksumSHA256")
    if got_size != size:
        raise VerifyFailed("s3://%s/%s has %d bytes, not %d" % (bucket, key, got_size, size))
    if got is None:
        raise VerifyFailed("s3://%s/%s has no SHA-256 checksum to verify against" % (bucket, key))
    if got != checksum and got.split("-")[0] != checksum.split("-")[0]:
        raise VerifyFailed("s3://%s/%s has checksum %s, not %s" % (bucket, key, got, checksum))
    return dict(head)


def head_or_none(s3: Any, bucket: str, key: str) -> Optional[Dict[str, Any]]:
    """The object's HEAD, or None when there is no such object (other errors raise)."""
    try:
        return dict(s3.head_object(Bucket=bucket, Key=key))
    except Exception as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


# ---- JSON documents (the manifest) -------------------------------------------------------------


def put_json(s3: Any, bucket: str, key: str, document: Dict[str, Any]) -> None:
    """Write a JSON document, verified like a checkpoint (a manifest that lies is worse than none)."""
    data = (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()
    checksum = checksums.sha256_b64(data)
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=data,
        ContentType="application/json",
        ChecksumAlgorithm=checksums.ALGORITHM,
        ChecksumSHA256=checksum,
    )
    verify(s3, bucket, key, len(data), checksum)


def get_json(s3: Any, bucket: str, key: str) -> Optional[Dict[str, Any]]:
    """The JSON document at `key`, or None when there is none."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        if error_code(exc) in ("NoSuchKey", "404"):
            return None
        raise
    value = json.loads(body.decode("utf-8"))
    return value if isinstance(value, dict) else None


# ---- the start-time check ----------------------------------------------------------------------


def check_s3_access(
    uri: str,
    env: Optional[Mapping[str, str]] = None,
    where: str = "",
    write: bool = False,
    make_client: Callable[..., Any] = client,
) -> None:
    """Raise HostError (exit 4) unless the credentials in `env` can use `uri`; UsageError-worthy URIs
    raise BadUri. `write` also puts (and deletes) a small probe object under the prefix.

    Called before anything is trained, so a wrong secret or a missing bucket costs nothing.
    """
    bucket, prefix = parse_uri(uri)
    on = " from %s" % where if where else ""
    s3 = make_client(env, attempts=2, timeout=10.0)
    try:
        # A GET (not HEAD, whose refusals carry no code): SignatureDoesNotMatch, NoSuchBucket, AccessDenied.
        s3.list_objects_v2(Bucket=bucket, Prefix=(prefix + "/") if prefix else "", MaxKeys=1)
        if write:
            probe = "%s/.runctl-access-check" % prefix if prefix else ".runctl-access-check"
            s3.put_object(Bucket=bucket, Key=probe, Body=b"runctl\n")
            try:
                s3.delete_object(Bucket=bucket, Key=probe)
            except Exception:
                pass  # writing is what uploads need; a policy without delete is fine
    except Exception as exc:
        message = "cannot use %s%s: %s" % (uri, on, describe(exc))
        code = error_code(exc)
        if code in ("NoSuchBucket", "404"):
            hint = "create it (aws s3 mb s3://%s) or name an existing bucket" % bucket
        elif code in CREDENTIAL_CODES or code == "403" or "credentials" in message:
            hint = (
                "fix the host's AWS credentials (instance role, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or a profile)"
            )
        else:
            hint = "check AWS_ENDPOINT_URL and the network, then start again"
        raise HostError(message, hint) from None


__all__ = ["BadUri", "UploadChanged", "VerifyFailed", "check_s3_access", "client", "upload_file", "verify"]
