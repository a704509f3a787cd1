"""The one model of the options every `train` command shares, stop policies included.

Each field carries, in its `Annotated` metadata, how it is written on the command line and in config
files (a `Flag`: its names, help, help panel, an example value, whether it is a `[policies]` key) and
how its value is checked (a validator). So an option or a policy is declared once, here:
`cli/trainopts.train_command` generates the Typer options of every `<provider> train` from
`TrainOptions`; `[policies]` in config files accepts the fields whose flag is a config key (a `Policy`,
and `notify`), under the field's name; and the defaults are the agent's own (`core.policies.DEFAULTS`,
stdlib, shipped to hosts), so each number lives in one place. A new policy is one field of
`PolicyParams` (plus its number in DEFAULTS and its rule in the agent).

A value is refused the same way, with the same words, wherever it was written; only the place named
in the message differs (`--hang-timeout` or `[policies] hang_timeout in FILE`). This module imports
pydantic: only commands that need it import it (`cli/main.py` loads command groups on demand), so
`runctl --help` never does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from .cli.common import Output
from .cli.options import OUTPUT, OUTPUT_HELP
from .core.durations import MAX_SECONDS, MAX_TEXT, duration_seconds, parse_duration, shown
from .core.errors import UsageError
from .core.policies import DEFAULTS, NOTIFY, STOP
from .core.stopping import MAX_GRACE

MAX_COUNT = 1_000_000
IGNORE = "ignore"
POLICY_PANEL = "Stop policies"


class Flag:
    """How a field is written on the command line; `example` is a good value as a flag and as TOML."""

    def __init__(
        self,
        *decls: str,
        help: str,
        panel: Optional[str] = None,
        parse: Any = None,
        metavar: Optional[str] = None,
        example: Optional[tuple[str, str]] = None,
        config: bool = False,
    ) -> None:
        self.decls = decls  # the long name first, then any short alias
        self.help = help
        self.panel = panel  # the help panel (rich_help_panel); None: the common "Options"
        self.parse = parse  # the type Click parses the value as, when not the field's own (text for a duration)
        self.metavar = metavar
        self.example = example
        self.config = config  # also a `[policies]` key of config files, under the field's name

    @property
    def name(self) -> str:
        return self.decls[0]


def Policy(name: str, help: str, example: str, text: bool = False) -> Flag:
    """A stop policy: a flag in the policies' help panel and a `[policies]` key, with an example for hints.

    `text`: the flag's value is read as text (a duration or a choice), so the TOML example is quoted.
    """
    toml = '"%s"' % example if text else example
    return Flag(name, help=help, panel=POLICY_PANEL, parse=str if text else None, example=(example, toml), config=True)


def flag_of(field: FieldInfo) -> Flag:
    return next(item for item in field.metadata if isinstance(item, Flag))


def _refuse(problem: str) -> PydanticCustomError:
    return PydanticCustomError("runctl", "{problem}", {"problem": problem})


def _number(value: Any) -> float:
    """A finite int or float; bools and strings are not numbers here, whatever pydantic would coerce."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _refuse("must be a number, got %s" % shown(value))
    if not math.isfinite(value):
        raise _refuse("must be a finite number, got %s" % value)
    return float(value)


def _seconds(value: Any, allow_zero: bool) -> float:
    """A duration (text like `15m`, or a number of seconds), finite and at most MAX_SECONDS."""
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        parsed = duration_seconds(text[1:] if sign < 0 else text)
        if parsed is None:
            raise _refuse("must be a duration like 90s, 15m or 2h, got %s" % shown(value))
        seconds = sign * parsed
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise _refuse("must be a duration like 90s, 15m or 2h, got %s" % shown(value))
    else:
        seconds = float(value)
    if seconds > MAX_SECONDS:
        raise _refuse("must be at most %s, got %s" % (MAX_TEXT, shown(value)))
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise _refuse("must be %s, got %s" % ("0 or more" if allow_zero else "more than 0", shown(value)))
    return seconds


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse("must be a whole number, got %s" % shown(value))
    if not 1 <= value <= MAX_COUNT:
        raise _refuse("must be between 1 and %d, got %s" % (MAX_COUNT, shown(value)))
    return value


def _url(value: Any) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
        raise _refuse("must be an http:// or https:// URL, got %s" % shown(value, 48))
    return str(value)


def _choice(*allowed: str) -> BeforeValidator:
    def check(value: Any) -> str:
        if value not in allowed:
            raise _refuse("must be %s, got %s" % (" or ".join(allowed), shown(value)))
        return str(value)

    return BeforeValidator(check)


def _stop_grace(value: Any) -> float:
    seconds = _seconds(value, allow_zero=True)
    if seconds > MAX_GRACE:
        raise _refuse("must be at most 1h (the agent's cap on any grace), got %s" % shown(value))
    return seconds


def _hooks(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise _refuse("must be a list of URLs, got %s" % shown(value))
    return [_url(item) for item in value]


def _globs(value: Any) -> list[str]:
    """Checkpoint globs, checked before anything starts (a bad glob starts nothing)."""
    from .core.checkpoints import check_glob

    for pattern in value:
        problem = check_glob(pattern)
        if problem:
            raise UsageError(
                "--checkpoint-glob %r %s" % (pattern, problem), "for example: --checkpoint-glob 'out/*.pt'"
            )
    return list(value)


def _s3_uri(value: Any) -> str:
    """An s3://bucket/prefix for checkpoints, checked here so a bad one starts nothing."""
    from .storage.objects import BadUri, parse_uri

    try:
        parse_uri(value)
    except BadUri as exc:
        raise _refuse(str(exc)) from None
    return str(value).rstrip("/")


FORWARD_SESSION, FORWARD_STATIC = "session", "static"


def _dollars(value: Any) -> float:
    """A budget in USD: a finite number above 0 (there is no "off" value; leave the flag out)."""
    number = _number(value)
    if number <= 0:
        raise _refuse("must be more than 0 dollars, got %s" % shown(value))
    return number


Number = BeforeValidator(_number)  # 0 or negative is a valid loss threshold: it turns the threshold off
Count = BeforeValidator(_count)
Grace = BeforeValidator(lambda value: _seconds(value, allow_zero=True))
Period = BeforeValidator(lambda value: _seconds(value, allow_zero=False))


class PolicyParams(BaseModel):
    """Stop policies and notification hooks of a run, as the agent applies them: the `[policies]` keys."""

    model_config = ConfigDict(extra="forbid")

    notify: Annotated[
        list[str],
        Flag(
            "--notify",
            help="POST run events as JSON to URL (repeatable; Slack-compatible)",
            example=("https://hooks.slack.com/services/...", '["https://hooks.slack.com/services/..."]'),
            config=True,
        ),
        BeforeValidator(_hooks),
    ] = Field(default_factory=list)
    auto_stop_loss: Annotated[
        Optional[float], Policy("--auto-stop-loss", "Stop when loss < X (0 or negative: off)", "0.05"), Number
    ] = DEFAULTS["auto_stop_loss"]
    auto_stop_patience: Annotated[
        int,
        Policy(
            "--auto-stop-patience", "...for N consecutive reports (default %d)" % DEFAULTS["auto_stop_patience"], "3"
        ),
        Count,
    ] = DEFAULTS["auto_stop_patience"]
    exit_grace: Annotated[
        float,
        Policy(
            "--exit-grace",
            "Stop a process still alive this long after its marker (%gs)" % DEFAULTS["exit_grace"],
            "60s",
            text=True,
        ),
        Grace,
    ] = DEFAULTS["exit_grace"]
    stall_polls: Annotated[
        int,
        Policy(
            "--stall-polls", "Final epoch, step unchanged for N polls: complete (%d)" % DEFAULTS["stall_polls"], "3"
        ),
        Count,
    ] = DEFAULTS["stall_polls"]
    poll_interval: Annotated[
        float,
        Policy("--poll-interval", "Seconds between stall polls (%gs)" % DEFAULTS["poll_interval"], "5s", text=True),
        Period,
    ] = DEFAULTS["poll_interval"]
    hang_timeout: Annotated[
        Optional[float],
        Policy("--hang-timeout", "No log output and no metric for DURATION: hang", "20m", text=True),
        Period,
    ] = DEFAULTS["hang_timeout"]
    on_hang: Annotated[
        Literal["stop", "notify"],
        Policy("--on-hang", "stop (default) or notify", "notify", text=True),
        _choice(STOP, NOTIFY),
    ] = DEFAULTS["on_hang"]
    max_duration: Annotated[
        Optional[float], Policy("--max-duration", "Stop after DURATION", "6h", text=True), Period
    ] = DEFAULTS["max_duration"]
    on_nan: Annotated[
        Literal["stop", "ignore"],
        Policy("--on-nan", "NaN/inf loss: stop (default) or ignore", "ignore", text=True),
        _choice(STOP, IGNORE),
    ] = DEFAULTS["on_nan"]
    max_cost: Annotated[
        Optional[float],
        Policy(
            "--max-cost",
            "Stop gracefully before the run costs USD (host's $/hr x time; local/SSH: with --hourly-price)",
            "25",
        ),
        BeforeValidator(_dollars),
    ] = DEFAULTS["max_cost"]
    stop_grace: Annotated[
        float,
        Policy(
            "--stop-grace",
            "After STOP_TRAINING, wait this long before SIGTERM (%gs)" % DEFAULTS["stop_grace"],
            "30s",
            text=True,
        ),
        BeforeValidator(_stop_grace),
    ] = DEFAULTS["stop_grace"]

    @classmethod
    def config_keys(cls) -> tuple[str, ...]:
        """The fields a config file's `[policies]` may set (their flags are marked `config`)."""
        return tuple(name for name, field in cls.model_fields.items() if flag_of(field).config)


POLICY_KEYS = PolicyParams.config_keys()


class TrainOptions(PolicyParams):
    """Everything a `<provider> train` command takes besides its own flags, validated once.

    A flag not given is not set (`model_fields_set`), so a config file may still fill that policy.
    """

    name: Annotated[Optional[str], Flag("--name", help="Run name (default: the script's name)")] = None
    env: Annotated[list[str], Flag("--env", "-e", help="KEY=VALUE for the script (repeatable)")] = Field(
        default_factory=list
    )
    wait: Annotated[bool, Flag("--wait", help="Stream the log and return when the run ends")] = False
    timeout: Annotated[
        Optional[float],
        Flag("--timeout", help="With --wait: stop waiting after DURATION (exit 3; the run goes on)", parse=str),
        BeforeValidator(lambda value: parse_duration(value, "--timeout")),
    ] = None
    output: Annotated[Output, Flag(*OUTPUT, help=OUTPUT_HELP)] = Output.text
    checkpoint_dir: Annotated[
        Optional[str], Flag("--checkpoint-dir", help="Checkpoint dir (default: checkpoints/ in the project)")
    ] = None
    resume_from: Annotated[
        Optional[str], Flag("--resume-from", help="Checkpoint to resume from (RUNCTL_RESUME_FROM for the script)")
    ] = None
    resume: Annotated[
        Optional[str],
        Flag(
            "--resume",
            metavar="WHICH",
            help="Resume from a verified checkpoint in S3: latest (in the --checkpoint-s3 prefix), "
            "a checkpoint NAME, RUN_ID[/NAME], or s3://bucket/key",
        ),
    ] = None
    metrics_regex: Annotated[
        Optional[str],
        Flag("--metrics-regex", help=r"Regex with named groups for metrics in log lines, e.g. 'acc=(?P<acc>[\d.]+)'"),
    ] = None
    tty: Annotated[
        bool,
        Flag(
            "--tty",
            help="Run the script under a pseudo-terminal, for libraries that print progress only to a terminal",
        ),
    ] = False
    checkpoint_glob: Annotated[
        list[str],
        Flag(
            "--checkpoint-glob",
            metavar="PATTERN",
            help="Checkpoints outside the checkpoint dir, relative to the project (repeatable; "
            "default: lightning_logs/*/checkpoints/* and *.pt|*.ckpt|... directly under out*/)",
        ),
        BeforeValidator(_globs),
    ] = Field(default_factory=list)

    checkpoint_s3: Annotated[
        Optional[str],
        Flag(
            "--checkpoint-s3",
            metavar="S3_URI",
            help="Upload each finished checkpoint from the host to S3_URI/<run_id>/, verified (size + SHA-256) "
            "while the run goes; AWS_ENDPOINT_URL is honoured",
            example=("s3://my-bucket/checkpoints", '"s3://my-bucket/checkpoints"'),
        ),
        BeforeValidator(_s3_uri),
    ] = None
    data_s3: Annotated[
        Optional[str],
        Flag(
            "--data-s3",
            metavar="S3_URI",
            help="Download the objects under S3_URI into the run's data dir (RUNCTL_DATA_DIR) on the host "
            "before training, in parallel; objects already there (same size and ETag) are skipped",
            example=("s3://my-bucket/datasets/mnist/", '"s3://my-bucket/datasets/mnist/"'),
        ),
        BeforeValidator(_s3_uri),
    ] = None
    forward_aws_credentials: Annotated[
        Optional[Literal["session", "static"]],
        Flag(
            "--forward-aws-credentials",
            parse=str,
            metavar="[session|static]",
            help="With --checkpoint-s3 on an SSH or Lambda host: give it short-lived session credentials "
            "(STS, or yours when they already are session ones) in a 0600 file deleted after the run; "
            "--forward-aws-credentials=static sends your long-lived keys instead",
        ),
        _choice(FORWARD_SESSION, FORWARD_STATIC),
    ] = None

    dashboard: Annotated[
        bool, Flag("--dashboard", help="Start (or reuse) the web dashboard and print the run's page URL")
    ] = False
    open_dashboard: Annotated[bool, Flag("--open", help="With --dashboard: open the run's page in the browser")] = False

    @model_validator(mode="after")
    def _open_needs_dashboard(self) -> TrainOptions:
        if self.open_dashboard and not self.dashboard:
            raise UsageError("--open only applies with --dashboard", "add --dashboard, or drop --open")
        return self

    @model_validator(mode="after")
    def _forwarding_needs_a_bucket(self) -> TrainOptions:
        uses_s3 = self.checkpoint_s3 is not None or self.data_s3 is not None or self.resume is not None
        if self.forward_aws_credentials is not None and not uses_s3:
            raise UsageError(
                "--forward-aws-credentials only applies with --checkpoint-s3, --data-s3 or --resume",
                "add --checkpoint-s3 s3://BUCKET/PREFIX, or drop --forward-aws-credentials",
            )
        return self

    @model_validator(mode="after")
    def _timeout_needs_wait(self) -> TrainOptions:
        if self.timeout is not None and not self.wait:
            raise UsageError("--timeout only applies with --wait", "to limit the run itself use --max-duration")
        return self

    @model_validator(mode="after")
    def _one_resume(self) -> TrainOptions:
        if self.resume is not None and self.resume_from is not None:
            raise UsageError(
                "--resume and --resume-from both name a checkpoint to resume from",
                "keep one: --resume for a checkpoint in S3, --resume-from for a file on the host",
            )
        return self

    @classmethod
    def flags(cls) -> list[tuple[str, FieldInfo, Flag]]:
        """Every field with its flag, in the order `--help` lists them: the run's options, then the policies."""
        fields, keys = cls.model_fields, cls.config_keys()
        order = [name for name in fields if name not in keys] + list(keys)
        return [(name, fields[name], flag_of(fields[name])) for name in order]

    @classmethod
    def from_flags(cls, values: dict[str, Any]) -> TrainOptions:
        """The options from the flags' values (None = not given), validated; an error names the flag."""
        return _checked(cls, values)

    def policies(self) -> dict[str, Any]:
        """The policies given as flags (they win over config files); `notify` travels in the spec instead."""
        return self.model_dump(include=(set(self.config_keys()) & self.model_fields_set) - {"notify"})


Model = TypeVar("Model", bound=BaseModel)


def _checked(model: type[Model], values: dict[str, Any]) -> Model:
    """`model` of the flags given (None = not given), or the first bad one as a usage error naming its flag."""
    try:
        return model(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]  # a check across fields raises its own UsageError (see _timeout_needs_wait)
        flag = flag_of(model.model_fields[str(first["loc"][0])])
        hint = "for example: %s %s" % (flag.name, flag.example[0]) if flag.example else None
        raise UsageError("%s %s" % (flag.name, first["msg"]), hint) from None


def from_flags(values: dict[str, Any]) -> dict[str, Any]:
    """The policy flags that were given (None = not given, so a config file may fill it), validated."""
    return _checked(PolicyParams, values).model_dump(exclude_unset=True)


def from_config(section: Any, path: Path, model: type[PolicyParams] = PolicyParams) -> dict[str, Any]:
    """`[policies]` of one config file, validated by `model`; errors name the file and the key."""
    if not isinstance(section, dict):
        raise UsageError(
            "[policies] in %s must be a table, got %s" % (path, shown(section)),
            "write it as a [policies] section of key = value lines",
        )
    keys = model.config_keys()
    unknown = [key for key in section if key not in keys]
    if unknown:
        raise UsageError(
            "[policies] %s in %s is not a known policy" % (unknown[0], path), "known policies: %s" % ", ".join(keys)
        )
    try:
        return model(**section).model_dump(include=set(section))
    except ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][0])
        example = flag_of(model.model_fields[key]).example
        hint = "for example: %s = %s, or remove the line" % (key, example[1]) if example else "remove the line"
        raise UsageError("[policies] %s in %s %s" % (key, path, first["msg"]), hint) from None


# ---- aws train: relaunch after spot interruptions ------------------------------------------------

MAX_AUTO_RESUME = 100
SPOT_FALLBACKS = ("on-demand", "none")


def _relaunches(value: Any) -> int:
    """A count of relaunches: a whole number from 0 (off) to MAX_AUTO_RESUME, given as text or int."""
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.lstrip("-").isdigit():
        text = int(text)
    if isinstance(text, bool) or not isinstance(text, int):
        raise _refuse("must be a whole number of relaunches, got %s" % shown(value))
    if not 0 <= text <= MAX_AUTO_RESUME:
        raise _refuse("must be between 0 and %d relaunches, got %s" % (MAX_AUTO_RESUME, shown(value)))
    return text


class AutoResume(BaseModel):
    """`--auto-resume N` and `--spot-fallback` of `aws train`: what the controller does when a run
    ends by a spot interruption (runctl.spotresume). Checked before anything is asked of AWS."""

    model_config = ConfigDict(extra="forbid")

    auto_resume: Annotated[
        int,
        Flag(
            "--auto-resume",
            metavar="N",
            parse=str,
            help="After a spot interruption, relaunch (spot again) and resume from the latest checkpoint "
            "verified in S3, up to N times; needs --checkpoint-s3 and the controller running (--wait)",
            example=("2", "2"),
        ),
        BeforeValidator(_relaunches),
    ] = 0
    spot_fallback: Annotated[
        Literal["on-demand", "none"],
        Flag(
            "--spot-fallback",
            parse=str,
            metavar="[on-demand|none]",
            help="With --auto-resume: when spot has no capacity for a relaunch, on-demand (launch that) "
            "or none (the chain ends, exit 4)",
            example=("on-demand", '"on-demand"'),
        ),
        _choice(*SPOT_FALLBACKS),
    ] = "none"


def auto_resume_options(
    auto_resume: Optional[str], spot_fallback: Optional[str], wait: bool, checkpoint_s3: Optional[str]
) -> AutoResume:
    """The two flags, validated, and the combinations they need; a usage error (exit 2) otherwise."""
    chosen = _checked(AutoResume, {"auto_resume": auto_resume, "spot_fallback": spot_fallback})
    if spot_fallback is not None and not chosen.auto_resume:
        raise UsageError(
            "--spot-fallback applies to --auto-resume relaunches",
            "add --auto-resume N (for a new instance: runctl aws create --spot --spot-fallback on-demand)",
        )
    if chosen.auto_resume and not wait:
        raise UsageError(
            "--auto-resume needs the controller running to relaunch after an interruption",
            "add --wait (this command then follows the run and each relaunch; keep it running)",
        )
    if chosen.auto_resume and checkpoint_s3 is None:
        raise UsageError(
            "--auto-resume resumes from checkpoints verified in S3",
            "add --checkpoint-s3 s3://BUCKET/PREFIX",
        )
    return chosen
