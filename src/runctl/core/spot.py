"""Spot interruptions as pure decisions: the notice, the compressed stop that fits it, the token's life.

EC2 gives a spot instance about two minutes between the notice in the instance metadata service
(`spot/instance-action`: `{"action": "terminate"|"stop"|"hibernate", "time": "...Z"}`) and the
action. In that window the script must see STOP_TRAINING and save its checkpoint, be signalled if
it does not, and the uploader must verify the final checkpoint in S3. `stop_plan` cuts the run's
usual graces so that all of it ends before the notice's `time`; nothing here reads a clock or a
socket (agent/spotwatch.py does, and passes the times in), so each rule is unit-tested.

Standard library only: this module travels to hosts with the agent.
"""

from __future__ import annotations

import calendar
import time
from typing import Any, Dict, NamedTuple, Optional

DEFAULT_ENDPOINT = "http://169.254.169.254"
IPV6_ENDPOINT = "http://[fd00:ec2::254]"
TOKEN_PATH = "/latest/api/token"
ACTION_PATH = "/latest/meta-data/spot/instance-action"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TOKEN_TTL = 21600  # seconds, what the AWS SDKs ask for
POLL_SECONDS = 5.0  # AWS recommends polling the notice every 5 s
NOTICE_SECONDS = 120.0  # a notice whose time cannot be read is taken as the documented two minutes
UPLOAD_RESERVE = 30.0  # seconds kept for the final checkpoint's verified upload (with checkpoint_s3)
MARGIN = 10.0  # seconds for the agent's own loop, the process exit and the end record
ACTIONS = ("terminate", "stop", "hibernate")


class Notice(NamedTuple):
    action: str
    time_text: str  # as the service wrote it
    at: float  # epoch seconds

    def describe(self) -> str:
        return "spot interruption notice: EC2 will %s this instance at %s" % (self.action, self.time_text)


class StopPlan(NamedTuple):
    grace: float  # seconds from STOP_TRAINING to SIGTERM
    term_grace: float  # seconds from SIGTERM to SIGKILL
    upload_deadline: float  # epoch seconds by which the final upload must be verified


def parse_time(text: Any) -> Optional[float]:
    """`2026-12-01T12:00:00Z` (the form the service writes; fractions tolerated) as epoch seconds."""
    if not isinstance(text, str):
        return None
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1]
    value = value.split(".", 1)[0]
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def parse_notice(body: Any, now: float) -> Optional[Notice]:
    """The notice in a `spot/instance-action` answer (its JSON text, or the parsed document); None
    when it is not one. A notice with an unknown action or an unreadable time is still a notice:
    the instance is going, so the stop goes ahead with the documented two minutes."""
    import json

    document = body
    if isinstance(body, (bytes, str)):
        try:
            document = json.loads(body)
        except ValueError:
            return None
    if not isinstance(document, dict):
        return None
    action = str(document.get("action") or "terminate")
    text = str(document.get("time") or "")
    at = parse_time(text)
    if at is None:
        at = now + NOTICE_SECONDS
    return Notice(action, text or "(no time given)", at)


def stop_plan(
    notice_at: float,
    now: float,
    stop_grace: float,
    term_grace: float,
    upload_reserve: float = UPLOAD_RESERVE,
    margin: float = MARGIN,
) -> StopPlan:
    """The run's graces cut so that stop, exit and final upload all end by the notice's time.

    The window is what is left before `notice_at`, less the upload's reserve and a margin for the
    agent itself. Two thirds of it at most go to the script's own stop (STOP_TRAINING to SIGTERM),
    the rest at most to SIGTERM's (to SIGKILL); neither is ever longer than the run asked for. A
    notice already past leaves no grace: SIGTERM now, SIGKILL at the next tick.
    """
    window = max(0.0, notice_at - now - max(0.0, upload_reserve) - max(0.0, margin))
    grace = max(0.0, min(float(stop_grace), window * 2.0 / 3.0))
    term = max(0.0, min(float(term_grace), window - grace))
    return StopPlan(grace, term, notice_at)


def finish_timeout(notice_at: float, now: float, usual: float, floor: float = 5.0) -> float:
    """How long the agent waits for the final upload after a notice: until the notice's time (the
    instance goes then), never less than `floor`, never more than the usual wait."""
    return max(floor, min(float(usual), notice_at - now))


def token_due(issued_at: Optional[float], ttl: float, now: float) -> bool:
    """Whether a new IMDSv2 token is needed: none yet, or within a tenth of its life (at most a
    minute) of expiring, so a GET never goes out with a token about to lapse."""
    if issued_at is None:
        return True
    refresh_before = min(60.0, ttl / 10.0)
    return now >= issued_at + ttl - refresh_before


def endpoint(env: Dict[str, str], config_value: Optional[str] = None) -> str:
    """The metadata service's base URL as the AWS SDKs find it: AWS_EC2_METADATA_SERVICE_ENDPOINT,
    else `ec2_metadata_service_endpoint` of the AWS config file, else the link-local address
    (its IPv6 form with AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6)."""
    value = (env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or config_value or "").strip()
    if value:
        return value.rstrip("/")
    mode = (env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE") or "").strip().lower()
    return IPV6_ENDPOINT if mode == "ipv6" else DEFAULT_ENDPOINT


def settings(spec_value: Any) -> Dict[str, float]:
    """The spec's `spot` block with defaults: poll interval, upload reserve, margin (seconds)."""
    given = spec_value if isinstance(spec_value, dict) else {}

    def number(key: str, default: float, low: float) -> float:
        try:
            value = float(given.get(key, default))
        except (TypeError, ValueError):
            return default
        return value if value == value and value >= low else default

    return {
        "interval": number("interval", POLL_SECONDS, 0.05),
        "upload_reserve": number("upload_reserve", UPLOAD_RESERVE, 0.0),
        "margin": number("margin", MARGIN, 0.0),
    }
