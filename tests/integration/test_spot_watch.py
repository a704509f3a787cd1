"""The agent's spot watcher (runctl.agent.spotwatch) against the IMDSv2 fake over real HTTP.

The fake (tests/support/imds.py) checks the token flow as the service does; the watcher must find
it through AWS_EC2_METADATA_SERVICE_ENDPOINT or the AWS config file, treat 404 as "nothing
scheduled", renew a lapsed token without calling it an error, and survive a service that is not
there (one recorded error, polls go on, the recovery recorded).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runctl.agent.spotwatch import SpotWatch, WatchError
from tests.support.imds import Imds
from tests.support.runs import poll

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake() -> Iterator[Imds]:
    service = Imds()
    try:
        yield service
    finally:
        service.stop()


class Events:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def __call__(self, name: str, **data: Any) -> None:
        self.seen.append({"event": name, **data})

    def names(self) -> list[str]:
        return [e["event"] for e in self.seen]


def watch(endpoint: str, events: Events, **env: str) -> SpotWatch:
    return SpotWatch({"interval": 0.05}, events, {"AWS_EC2_METADATA_SERVICE_ENDPOINT": endpoint, **env})


def test_a_scheduled_interruption_is_seen_within_a_poll_and_404_is_no_notice(fake: Imds) -> None:
    events = Events()
    watcher = watch(fake.endpoint, events)
    watcher.start()
    try:
        poll(lambda: watcher.polls >= 3, 10, "three polls")
        assert watcher.notice is None, "404: nothing scheduled"
        notice = fake.schedule("terminate", at=1796190000)
        found = poll(lambda: watcher.notice, 10, "the notice")
    finally:
        watcher.stop()
    assert (found.action, found.time_text, found.at) == ("terminate", notice["time"], 1796190000.0)
    assert events.names() == ["spot_watch_started"], "no error along the way"
    tokens = [r for r in fake.requests if r[0] == "PUT"]
    assert len(tokens) == 1, "one token for every poll (its TTL is six hours)"
    gets = [r for r in fake.requests if r[0] == "GET"]
    assert {path for _, path, _ in gets} == {"/latest/meta-data/spot/instance-action"}
    assert all(status in (404, 200) for _, _, status in gets), "every GET carried a valid token"


def test_a_lapsed_token_is_renewed_without_an_error(fake: Imds) -> None:
    events = Events()
    watcher = watch(fake.endpoint, events)
    assert watcher.poll_once() is None
    fake.expire_tokens()
    assert watcher.poll_once() is None
    statuses = [(method, status) for method, _, status in fake.requests]
    assert statuses == [("PUT", 200), ("GET", 404), ("GET", 401), ("PUT", 200), ("GET", 404)]
    assert watcher.failing is None and events.names() == []


def test_the_endpoint_comes_from_the_aws_config_file_as_the_sdks_read_it(fake: Imds, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[default]\nregion = us-east-1\nec2_metadata_service_endpoint = %s\n" % fake.endpoint)
    watcher = SpotWatch({"interval": 0.05}, Events(), {"AWS_CONFIG_FILE": str(config)})
    assert watcher.endpoint == fake.endpoint
    fake.schedule("stop")
    notice = watcher.poll_once()
    assert notice is not None and notice.action == "stop"
    named = tmp_path / "named"
    named.write_text("[profile trainer]\nec2_metadata_service_endpoint = http://10.9.9.9:80\n")
    profiled = SpotWatch(None, Events(), {"AWS_CONFIG_FILE": str(named), "AWS_PROFILE": "trainer"})
    assert profiled.endpoint == "http://10.9.9.9:80"
    assert SpotWatch(None, Events(), {"AWS_CONFIG_FILE": str(tmp_path / "none")}).endpoint == "http://169.254.169.254"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_service_that_is_not_there_is_recorded_once_and_polled_until_it_answers(fake: Imds) -> None:
    events = Events()
    watcher = watch("http://127.0.0.1:%d" % free_port(), events)
    watcher.start()
    try:
        poll(lambda: watcher.polls >= 5, 10, "five failed polls")
        errors = [e for e in events.seen if e["event"] == "spot_watch_error"]
        assert len(errors) == 1, events.seen
        assert "refused" in errors[0]["error"].lower() or "urlopen" in errors[0]["error"].lower()
        watcher.endpoint = fake.endpoint  # the service comes up
        fake.schedule("hibernate")
        notice = poll(lambda: watcher.notice, 10, "the notice once the service answers")
    finally:
        watcher.stop()
    assert notice.action == "hibernate"
    assert events.names() == ["spot_watch_started", "spot_watch_error", "spot_watch_recovered"]


def test_an_answer_that_is_not_a_notice_is_an_error_not_a_stop(fake: Imds) -> None:
    events = Events()
    watcher = watch(fake.endpoint, events)
    fake._action = {"unexpected": "x"}  # type: ignore[assignment]  # a JSON object with no action: taken as terminate
    notice = watcher.poll_once()
    assert notice is not None and notice.action == "terminate", "the instance is going: stop all the same"
    watcher2 = watch(fake.endpoint + "/nothing-here", Events())
    with pytest.raises(WatchError, match="no IMDSv2 token"):
        watcher2.poll_once()
