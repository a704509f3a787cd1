"""EC2 through boto3: one client per region, transient errors retried, every error said plainly.

boto3 is imported here (and only when a client is made), so no other command pays for it. The
region comes from `--region`, `AWS_REGION`/`AWS_DEFAULT_REGION` or the profile; credentials come the
boto3 way (`AWS_PROFILE`, environment, SSO, instance role); `AWS_ENDPOINT_URL` is honoured by boto3
itself (that is how the tests reach the emulator). botocore's own retries are off: `call` retries
with the one backoff helper (`core.retry`), so a stop or terminate is tried as long as it says.
"""

from __future__ import annotations

import os
from typing import Any

from ..core.errors import CloudError, HostError, RunctlError, UsageError
from ..core.retry import retry

READ_ATTEMPTS = 4
# Calls that end billing try for about half a minute before giving up (0.25 s doubling, capped at 5 s).
BILLING_ATTEMPTS = 9

TRANSIENT_CODES = frozenset(
    {
        "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
        "ServiceUnavailable", "Unavailable", "InternalError", "InternalFailure", "ServerInternal",
        "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
    }
)  # fmt: skip
AUTH_CODES = frozenset(
    {"AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
     "ExpiredToken", "RequestExpired", "OptInRequired"}
)  # fmt: skip
DENIED_CODES = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"})
# No capacity (or a bid too low) is an answer, not a glitch, though AWS sends some as 500: never
# retried here, so a spot launch can fall back to on-demand (or fail with the reason) at once.
CAPACITY_CODES = frozenset(
    {"InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
     "InsufficientReservedInstanceCapacity", "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded",
     "InsufficientFreeAddressesInSubnet", "Unsupported"}
)  # fmt: skip
# Errors in what the user asked for: exit 2, the cloud's own message kept, a fix added.
INPUT_HINTS = {
    "InvalidInstanceID.NotFound": "list your instances: runctl aws list --all (or pass --region)",
    "InvalidInstanceID.Malformed": "an instance id looks like i-0123456789abcdef0",
    "InvalidAMIID.NotFound": "find one: runctl aws create --image-name 'Deep Learning*Ubuntu*' ...",
    "InvalidAMIID.Malformed": "an AMI id looks like ami-0123456789abcdef0",
    "InvalidAMIID.Unavailable": "pick another AMI (--ami or --image-name)",
    "InvalidKeyPair.NotFound": "import one with --ssh-key ~/.ssh/id_ed25519.pub, or name an existing --key-name",
    "InvalidKeyPair.Duplicate": "use --key-name with the existing key pair",
    "InvalidKeyPair.Format": "pass the public half (.pub) of an RSA or ed25519 key",
    "InvalidInstanceType": "see the types in your region: aws ec2 describe-instance-types",
    "InvalidParameterValue": "check the value named above",
    "InvalidParameterCombination": "check the flags named above",
    "InvalidSubnetID.NotFound": "pass a subnet of this region (--subnet subnet-...)",
    "InvalidSubnetID.Malformed": "a subnet id looks like subnet-0123456789abcdef0",
    "InvalidGroup.NotFound": "pass a security group of the subnet's VPC (--security-group sg-...)",
    "InvalidGroupId.Malformed": "a security group id looks like sg-0123456789abcdef0",
    "InvalidIPAddress.InUse": "that --private-ip is taken; pick a free one or leave it out",
    "InvalidParameter": "check the flags named above",
    "MissingParameter": "check the flags named above",
    "UnsupportedOperation": "this instance cannot do that (e.g. stop a one-time spot instance)",
}
STATE_HINT = "see its state: runctl aws status ID"


def new_session(profile: str | None = None) -> Any:
    """A boto3 session (one per command: its loaders cache the service models the clients share)."""
    import boto3
    import botocore.exceptions

    try:
        session = boto3.Session(profile_name=profile or None)
    except botocore.exceptions.ProfileNotFound as exc:
        raise UsageError(str(exc), "list your profiles: aws configure list-profiles") from None
    # Timestamps parsed by the standard library: botocore's dateutil parser costs a third of a
    # 200-instance `aws list` (three timestamps per instance).
    factory = session._session.get_component("response_parser_factory")
    factory.set_parser_defaults(timestamp_parser=parse_timestamp)
    return session


def has_credentials(profile: str | None = None) -> bool:
    """Whether boto3 finds credentials (environment, profile, SSO, role) without calling AWS."""
    import botocore.exceptions

    try:
        return new_session(profile).get_credentials() is not None
    except (botocore.exceptions.BotoCoreError, UsageError):
        return False


def parse_timestamp(value: Any) -> Any:
    """An ISO 8601 timestamp as EC2 sends it (`2026-12-02T06:35:23.000Z`), else botocore's parser."""
    from datetime import datetime, timezone

    if isinstance(value, str):
        try:
            stamp = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
        except ValueError:
            stamp = None
        if stamp is not None:
            return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=timezone.utc)
    from botocore.utils import parse_timestamp as botocore_parse

    return botocore_parse(value)


def resolve_region(region: str | None, profile: str | None = None, session: Any = None) -> str:
    """The region to use, or UsageError naming the three ways to set one."""
    session = session or new_session(profile)
    found = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or session.region_name
    if not found:
        raise UsageError("no AWS region is set", "pass --region us-east-1, set AWS_REGION, or set one in your profile")
    known = session.get_available_regions("ec2")
    if found not in known:  # the other partitions only when needed: each costs a lookup
        known += session.get_available_regions("ec2", "aws-us-gov") + session.get_available_regions("ec2", "aws-cn")
    if known and found not in known:
        import difflib

        close = difflib.get_close_matches(found, known, n=3)
        raise UsageError(
            "unknown AWS region %r" % found,
            "pass --region %s" % (" or ".join(close) if close else "us-east-1 (all: aws ec2 describe-regions)"),
        )
    return str(found)


def client(service: str, region: str, timeout: float = 20.0, session: Any = None) -> Any:
    import botocore.config

    config = botocore.config.Config(
        retries={"total_max_attempts": 1, "mode": "standard"},  # botocore retries nothing: `call` does
        connect_timeout=5,
        read_timeout=timeout,
        user_agent_extra="runctl",
    )
    return (session or new_session()).client(service, region_name=region, config=config)


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or "")
    return ""


def is_transient(exc: BaseException) -> bool:
    """Throttling, a 5xx answer, or the connection failing: worth another try."""
    import botocore.exceptions

    if isinstance(
        exc,
        (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionClosedError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ReadTimeoutError,
        ),
    ):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
        code = error_code(exc)
        return code not in CAPACITY_CODES and (code in TRANSIENT_CODES or int(status) >= 500)
    return False


def translate(exc: BaseException, operation: str, region: str, attempts: int = 1) -> RunctlError:
    """The one or two lines a user sees for a failed EC2 call (exit 2 for input, 4 for the cloud)."""
    import botocore.exceptions

    if isinstance(exc, RunctlError):
        return exc
    if isinstance(exc, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return HostError(
            "no AWS credentials found",
            "set AWS_PROFILE (aws configure, or aws sso login), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        )
    if isinstance(exc, botocore.exceptions.TokenRetrievalError):
        return HostError("your AWS SSO session has expired", "log in again: aws sso login")
    if isinstance(exc, botocore.exceptions.ClientError):
        code = error_code(exc)
        message = str((exc.response.get("Error") or {}).get("Message") or code)
        tried = " (after %d attempts)" % attempts if attempts > 1 else ""
        if code in AUTH_CODES:
            hint = "check AWS_PROFILE, or: aws sso login"
            return CloudError("AWS rejected the credentials: %s" % message, hint, code)
        if code in DENIED_CODES:
            return CloudError(
                "not allowed to call ec2:%s: %s" % (operation, _short(message)),
                "use credentials whose policy allows ec2:%s" % operation,
                code,
            )
        if code in INPUT_HINTS:
            return UsageError("%s (in %s)" % (_short(message), region), INPUT_HINTS[code])
        if code == "IncorrectInstanceState":
            return CloudError(_short(message), STATE_HINT, code)
        return CloudError("EC2 %s failed%s: %s: %s" % (operation, tried, code, _short(message)), None, code)
    if is_transient(exc):
        return CloudError(
            "cannot reach EC2 in %s%s: %s" % (region, " after %d attempts" % attempts if attempts > 1 else "", exc),
            "check your network (and AWS_ENDPOINT_URL if you set it), then retry",
            "connection",
        )
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return CloudError("EC2 %s failed: %s" % (operation, exc), None, type(exc).__name__)
    raise exc


def _short(message: str) -> str:
    return message if len(message) <= 300 else message[:297] + "..."


class Ec2:
    """EC2 in one region: `call` runs an operation with retries and turns failures into RunctlErrors."""

    def __init__(self, region: str | None = None, profile: str | None = None, session: Any = None) -> None:
        """`session`: another Ec2's (one per command: making one costs tens of milliseconds)."""
        session = session or new_session(profile)
        self.session = session
        self.region = resolve_region(region, profile, session)
        if profile:
            os.environ["AWS_PROFILE"] = profile
        self.client = client("ec2", self.region, session=session)

    def call(self, operation: str, attempts: int = READ_ATTEMPTS, **params: Any) -> dict[str, Any]:
        method = getattr(self.client, operation)
        tries = {"n": 0}

        def once() -> dict[str, Any]:
            tries["n"] += 1
            return dict(method(**params))

        try:
            return retry(once, is_transient, attempts=attempts)
        except Exception as exc:
            raise translate(exc, _camel(operation), self.region, tries["n"]) from None

    def paginate(self, operation: str, key: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a paginated describe call (`key` names the list in each page)."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self.call(operation, READ_ATTEMPTS, **params, **({"NextToken": token} if token else {}))
            items.extend(page.get(key) or [])
            token = page.get("NextToken")
            if not token:
                return items


def _camel(operation: str) -> str:
    return "".join(part.capitalize() for part in operation.split("_"))
