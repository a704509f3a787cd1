"""runctl.providers.ec2tags: run metadata in EC2 tags within AWS's limits, and --tag parsing."""

from __future__ import annotations

import json

import pytest

from runctl.core.errors import EXIT_USAGE, UsageError
from runctl.providers import ec2tags
from runctl.providers.ec2tags import (
    MAX_TAGS,
    MAX_VALUE,
    RUN_COUNT,
    TagLimitError,
    as_dict,
    as_list,
    chunk_key,
    metadata_tags,
    parse_user_tag,
    read_metadata,
    stale_metadata_keys,
    width,
)

RUNCTL_OWN = {
    ec2tags.MANAGED: "true",
    ec2tags.CREATED_BY: "runctl 0.9 on laptop",
    ec2tags.IDLE_STOP: "15m",
    ec2tags.ON_SHUTDOWN: "stop",
    ec2tags.SSH_USER: "ubuntu",
    ec2tags.ADDRESS: "private",
    ec2tags.KEY_FILE: "/home/me/.ssh/id_ed25519",
    "Name": "trainer",
}


def big_meta(size: int = 2048) -> dict[str, object]:
    """Run metadata of about `size` characters of JSON, with accents, CJK, emoji and JSON escapes."""
    note = ('Größe 学習率 😀 "quoted" \\ back\n' * 200)[: size - 200]
    return {
        "run_id": "20261202-061500-ab12",
        "script": "train/ünïcode_模型.py",
        "status": "running",
        "last_checkpoint": "checkpoints/step_000900.pt",
        "started": "2026-12-02T06:15:00Z",
        "ended": None,
        "note": note,
    }


def check_limits(tags: dict[str, str], others: dict[str, str]) -> None:
    assert all(width(value) <= MAX_VALUE for value in tags.values())
    assert all(value.encode("utf-8").decode("utf-8") == value for value in tags.values())  # valid alone
    assert len(set(tags) | set(others)) <= MAX_TAGS


def test_two_kilobytes_of_non_ascii_metadata_round_trip() -> None:
    meta = big_meta()
    assert len(json.dumps(meta, ensure_ascii=False)) >= 2000
    tags = metadata_tags(meta, {})
    check_limits(tags, {})
    assert int(tags[RUN_COUNT]) == len(tags) - 1 >= 8
    assert read_metadata(tags) == meta
    assert read_metadata(as_list(tags)) == meta  # straight from describe_instances' list form


def test_emoji_are_never_split_and_count_conservatively() -> None:
    meta = {"run_id": "r", "note": "😀" * 1000}
    tags = metadata_tags(meta, {})
    check_limits(tags, {})
    assert read_metadata(tags) == meta


def test_lone_surrogates_from_undecodable_names_survive() -> None:
    meta = {"run_id": "r", "script": "caf\udce9.py"}
    tags = metadata_tags(meta, {})
    for value in tags.values():
        value.encode("utf-8")  # would raise on a lone surrogate
    assert read_metadata(tags) == meta


def test_fits_beside_forty_user_tags_by_shortening_the_largest_text() -> None:
    others = dict(RUNCTL_OWN, **{"team-%d" % i: "x" for i in range(40)})
    existing = dict(others, **metadata_tags(big_meta(), {}))  # the previous, larger metadata
    tags = metadata_tags(big_meta(), existing)
    check_limits(tags, others)
    back = read_metadata(tags)
    assert back is not None
    for field in ("run_id", "status", "script", "last_checkpoint", "started", "ended"):
        assert back[field] == big_meta()[field]
    assert str(back["note"]).endswith("…")
    assert big_meta()["note"].startswith(str(back["note"])[:-1])


def test_kept_whole_when_it_fits_beside_the_user_tags() -> None:
    others = dict(RUNCTL_OWN, **{"team-%d" % i: "x" for i in range(30)})
    tags = metadata_tags(big_meta(), others)
    check_limits(tags, others)
    assert read_metadata(tags) == big_meta()


def test_aws_tags_do_not_count_toward_the_limit() -> None:
    others = {"u%d" % i: "v" for i in range(47)}
    others.update({"aws:cloudformation:stack-name": "s", "aws:ec2launchtemplate:id": "lt"})
    tags = metadata_tags({"run_id": "r", "status": "running"}, others)
    assert len(tags) == 2
    assert read_metadata(tags) == {"run_id": "r", "status": "running"}


def test_with_one_chunk_left_fields_are_dropped_but_run_id_and_status_kept() -> None:
    others = {"u%d" % i: "v" for i in range(48)}
    meta = dict(big_meta(), args=["--lr", "0.1"] * 40, extra={"k%d" % i: i for i in range(40)})
    tags = metadata_tags(meta, others)
    check_limits(tags, others)
    back = read_metadata(tags)
    assert back is not None
    assert back["run_id"] == meta["run_id"] and back["status"] == "running"


def test_no_room_at_all_is_a_clear_error() -> None:
    others = {"u%d" % i: "v" for i in range(49)}
    with pytest.raises(TagLimitError, match="no room"):
        metadata_tags({"run_id": "r"}, others)
    assert issubclass(TagLimitError, ValueError)


def test_shrinking_from_nine_to_three_chunks_names_the_stale_ones() -> None:
    old = metadata_tags({"run_id": "r", "note": "a" * (9 * MAX_VALUE - 40)}, {})
    assert old[RUN_COUNT] == "9"
    existing = dict(RUNCTL_OWN, **old, **{"runctl:run": "{}"})
    new = metadata_tags({"run_id": "r", "note": "b" * (3 * MAX_VALUE - 40)}, existing)
    assert new[RUN_COUNT] == "3"
    stale = stale_metadata_keys(existing, new)
    assert stale == ["runctl:run", *[chunk_key(i) for i in range(3, 9)]]
    after = {k: v for k, v in existing.items() if k not in stale}
    after.update(new)
    assert read_metadata(after) == {"run_id": "r", "note": "b" * (3 * MAX_VALUE - 40)}
    assert set(RUNCTL_OWN) <= set(after)  # only metadata keys are ever deleted


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: t.pop(chunk_key(1)),
        lambda t: t.update({RUN_COUNT: "7"}),
        lambda t: t.update({RUN_COUNT: "many"}),
        lambda t: t.update({RUN_COUNT: "0"}),
        lambda t: t.update({RUN_COUNT: "-1"}),
        lambda t: t.update({chunk_key(0): "{not json"}),
        lambda t: t.pop(RUN_COUNT),
    ],
)
def test_damaged_metadata_reads_as_none(damage: object) -> None:
    tags = metadata_tags(big_meta(), {})
    damage(tags)  # type: ignore[operator]
    assert read_metadata(tags) is None


def test_absent_legacy_and_non_object_metadata() -> None:
    assert read_metadata({}) is None
    assert read_metadata([]) is None
    assert read_metadata({"Name": "x"}) is None
    assert read_metadata({"runctl:run": '{"run_id": "old", "status": "completed"}'}) == {
        "run_id": "old",
        "status": "completed",
    }
    assert read_metadata({"runctl:run": "[1, 2]"}) is None
    assert read_metadata({RUN_COUNT: "1", chunk_key(0): "42"}) is None
    assert read_metadata([{"Value": "no key"}]) is None  # a malformed tag list never raises


def test_tag_list_conversion() -> None:
    listed = [{"Key": "b", "Value": "2"}, {"Key": "a", "Value": "1"}]
    assert as_dict(listed) == {"a": "1", "b": "2"}
    assert as_dict(None) == {}
    assert as_list({"b": "2", "a": "1"}) == sorted(listed, key=lambda t: t["Key"])


def test_user_tag_parsing() -> None:
    assert parse_user_tag("team=nlp") == ("team", "nlp")
    assert parse_user_tag("cost-center=a=b") == ("cost-center", "a=b")
    assert parse_user_tag("empty=") == ("empty", "")
    assert parse_user_tag("k=" + "é" * 256) == ("k", "é" * 256)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("team", "no '='"),
        ("=nlp", "empty key"),
        ("  =nlp", "empty key"),
        ("k" * 129 + "=v", "129 characters"),
        ("k=" + "v" * 257, "257 characters"),
        ("k=" + "😀" * 129, "258 characters"),
        ("aws:owner=me", "reserved by AWS"),
        ("AWS:owner=me", "reserved by AWS"),
        ("runctl:managed=false", "runctl's own"),
    ],
)
def test_bad_user_tags_say_what_is_wrong_and_the_fix(text: str, says: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_user_tag(text)
    assert caught.value.exit_code == EXIT_USAGE
    assert says in caught.value.message
    assert caught.value.hint and "\n" not in caught.value.message + caught.value.hint
