"""runctl's tags on EC2 resources: what they are called, and the run's metadata split into tag values.

Tags are how an instance remembers, without the controller's store, that runctl made it, how to
reach it and what ran on it last (`aws status` from another machine reads them back). EC2 allows
50 user tags per resource (`aws:` tags do not count), keys of at most 128 and values of at most 256
characters, so the run's metadata is compact JSON cut into `runctl:run:0`, `runctl:run:1`, ... with
their count in `runctl:run:n`. Lengths are counted in UTF-16 code units, which is never less than
the character count AWS applies: a value that passes here is never refused there.

When the metadata does not fit beside the tags already on the resource, the longest text fields are
shortened first (cut to end in "…"), then whole fields are dropped, largest first; `run_id` and
`status` are shortened and dropped last. So the result always fits; only when the other tags leave no
room for the count and one chunk is `TagLimitError` raised. Pure and standard-library only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Union

from ..core.errors import UsageError

MANAGED = "runctl:managed"  # "true" on everything runctl created: the only things it may destroy
CREATED_BY = "runctl:created-by"
IDLE_STOP = "runctl:idle-stop"
ON_SHUTDOWN = "runctl:on-shutdown"
SSH_USER = "runctl:ssh-user"
ADDRESS = "runctl:address"  # "public" or "private"
KEY_FILE = "runctl:identity"  # the private key's path on the controller (a path, never key material)
PROTECT = "runctl:protect"
RELEASE_FAILED = "runctl:release-failed"
RUN_PREFIX = "runctl:run:"
RUN_COUNT = "runctl:run:n"
LEGACY_RUN = "runctl:run"  # one tag holding the whole JSON, as older versions wrote it

MAX_TAGS = 50
MAX_KEY = 128
MAX_VALUE = 256
KEEP_LAST = ("run_id", "status")  # the fields dropped only when nothing else is left
_MIN_TEXT = 16  # a field is not shortened below this many characters before fields are dropped
_ELLIPSIS = "…"

Tags = Union[Mapping[str, str], Iterable[Mapping[str, str]]]


class TagLimitError(ValueError):
    """Not even one metadata chunk fits beside the tags already on the resource."""


def chunk_key(index: int) -> str:
    return "%s%d" % (RUN_PREFIX, index)


def is_metadata_key(key: str) -> bool:
    """Whether `key` belongs to the run metadata (chunks, count, or the legacy single tag)."""
    if key in (RUN_COUNT, LEGACY_RUN):
        return True
    return key.startswith(RUN_PREFIX) and key[len(RUN_PREFIX) :].isdigit()


def as_dict(tag_list: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    """EC2's [{"Key": k, "Value": v}, ...] as {k: v} (a missing list is no tags)."""
    return {str(tag["Key"]): str(tag.get("Value", "")) for tag in tag_list or ()}


def as_list(mapping: Mapping[str, str]) -> list[dict[str, str]]:
    """{k: v} as EC2's [{"Key": k, "Value": v}, ...], in key order so calls are reproducible."""
    return [{"Key": key, "Value": mapping[key]} for key in sorted(mapping)]


def width(text: str) -> int:
    """Length in UTF-16 code units: a character outside the BMP counts twice (conservative)."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def _encode(meta: Mapping[str, Any]) -> str:
    text = json.dumps(dict(meta), ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str)
    # A lone surrogate (an undecodable file name) cannot be sent as UTF-8: keep it as a JSON \\u escape.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _split(text: str) -> list[str]:
    """Cut `text` between characters (never inside one) into values of at most MAX_VALUE units."""
    chunks: list[str] = []
    start = used = 0
    for index, char in enumerate(text):
        cost = 2 if ord(char) > 0xFFFF else 1
        if used + cost > MAX_VALUE:
            chunks.append(text[start:index])
            start, used = index, 0
        used += cost
    if start < len(text) or not chunks:
        chunks.append(text[start:])
    return chunks


def _shrink(meta: dict[str, Any], room: int) -> list[str]:
    """Chunks of `meta`, fields shortened then dropped (see the module docstring) until at most `room`.

    Always ends: each step makes the JSON shorter, and `{}` fits in one chunk.
    """
    while True:
        text = _encode(meta)
        chunks = _split(text)
        if len(chunks) <= room:
            return chunks
        excess = width(text) - room * (MAX_VALUE - 1)  # -1: an astral character may end a chunk early
        for protected in (False, True):
            fields = [k for k in meta if (k in KEEP_LAST) == protected]
            texts = [k for k in fields if isinstance(meta[k], str) and len(meta[k]) > _MIN_TEXT]
            if texts:
                key = max(texts, key=lambda k: (width(meta[k]), k))
                value = meta[key]
                meta[key] = value[: max(_MIN_TEXT - 1, min(len(value) - 2, len(value) - excess))] + _ELLIPSIS
                break
            if fields:
                del meta[max(fields, key=lambda k: (width(_encode({k: meta[k]})), k))]
                break


def metadata_tags(meta: Mapping[str, Any], existing: Mapping[str, str]) -> dict[str, str]:
    """The tags holding `meta` (chunks + count), sized to fit the 50-tag limit beside `existing`.

    `existing` is the resource's current tags; its metadata tags are replaced by these, so only the
    others (minus `aws:` ones, which AWS does not count) take room. Raises TagLimitError when those
    leave no room for the count and one chunk.
    """
    others = [k for k in existing if not is_metadata_key(k) and not k.startswith("aws:")]
    room = MAX_TAGS - len(others) - 1
    if room < 1:
        raise TagLimitError(
            "no room for the run's metadata: the resource has %d tags, EC2 allows %d" % (len(others), MAX_TAGS)
        )
    chunks = _shrink(dict(meta), room)
    tags = {chunk_key(index): chunk for index, chunk in enumerate(chunks)}
    tags[RUN_COUNT] = str(len(chunks))
    return tags


def stale_metadata_keys(existing: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """Metadata keys on the resource that `new` does not set: delete them before creating `new`."""
    stale = [key for key in existing if is_metadata_key(key) and key not in new]
    return sorted(stale, key=lambda k: (len(k), k))


def read_metadata(tags: Tags) -> dict[str, Any] | None:
    """The metadata stored by `metadata_tags` (or a legacy `runctl:run` tag), or None; never raises.

    None when there is none, or it is inconsistent: a chunk missing, a bad count, JSON that does not
    parse (e.g. read between deleting stale chunks and writing new ones).
    """
    try:
        found = dict(tags) if isinstance(tags, Mapping) else as_dict(tags)
        if RUN_COUNT in found:
            count = int(found[RUN_COUNT])
            if not 0 < count <= MAX_TAGS:
                return None
            parts = [found.get(chunk_key(index)) for index in range(count)]
            if any(part is None for part in parts):
                return None
            text = "".join(str(part) for part in parts)
        elif LEGACY_RUN in found:
            text = found[LEGACY_RUN]
        else:
            return None
        value = json.loads(text)
    except Exception:
        return None
    return value if isinstance(value, dict) else None


def parse_user_tag(text: str) -> tuple[str, str]:
    """`--tag KEY=VALUE` as (key, value); UsageError naming the fix for anything EC2 or runctl refuses."""
    example = "--tag team=nlp"
    if "=" not in text:
        raise UsageError("--tag %r has no '='" % text, "write it as --tag KEY=VALUE, e.g. %s" % example)
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise UsageError("--tag %r has an empty key" % text, "put a key before '=', e.g. %s" % example)
    if width(key) > MAX_KEY:
        raise UsageError("--tag key is %d characters long" % width(key), "EC2 allows %d: shorten it" % MAX_KEY)
    if width(value) > MAX_VALUE:
        raise UsageError(
            "--tag %s: the value is %d characters long" % (key, width(value)), "EC2 allows %d: shorten it" % MAX_VALUE
        )
    if key.lower().startswith("aws:"):
        raise UsageError("--tag %s: the 'aws:' prefix is reserved by AWS" % key, "choose a key without it")
    if key.lower().startswith("runctl:"):
        raise UsageError("--tag %s: 'runctl:' tags are runctl's own" % key, "choose a key without that prefix")
    return key, value
