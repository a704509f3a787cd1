"""The dashboard's pure parts: who the guard lets in, and the log window a run's feed keeps."""

from __future__ import annotations

import pytest

from runctl.dashboard import access, live

TOKEN = "s3cret-token"


def scope(method: str = "GET", host: str = "127.0.0.1:8765", query: str = "", **headers: str) -> dict[str, object]:
    pairs = [(b"host", host.encode())] + [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {"type": "http", "method": method, "headers": pairs, "query_string": query.encode()}


@pytest.fixture
def guard() -> access.Guard:
    return access.Guard(lambda *a: None, TOKEN, "127.0.0.1", 8765)  # type: ignore[arg-type,return-value]


def test_reads_take_the_header_the_cookie_of_this_port_or_the_url_token(guard: access.Guard) -> None:
    assert guard.problem(scope(x_runctl_token=TOKEN)) is None
    assert guard.problem(scope(cookie="a=b; runctl_token_8765=%s" % TOKEN)) is None
    assert guard.problem(scope(query="token=%s" % TOKEN)) is None
    assert guard.problem(scope(host="localhost:8765", x_runctl_token=TOKEN)) is None
    for refused in (
        scope(),
        scope(x_runctl_token="wrong"),
        scope(cookie="runctl_token_8766=%s" % TOKEN),  # another dashboard's cookie
        scope(query="token=%s" % TOKEN[:-1]),
        scope(host="evil.example:8765", x_runctl_token=TOKEN),  # a rebound DNS name
        scope(host="127.0.0.1:9999", x_runctl_token=TOKEN),
    ):
        assert guard.problem(refused) is not None


def test_a_post_needs_the_header_and_its_own_origin(guard: access.Guard) -> None:
    assert guard.problem(scope("POST", x_runctl_token=TOKEN)) is None  # curl: no Origin
    assert guard.problem(scope("POST", x_runctl_token=TOKEN, origin="http://127.0.0.1:8765")) is None
    assert "X-Runctl-Token" in str(guard.problem(scope("POST", cookie="runctl_token_8765=%s" % TOKEN)))
    assert "X-Runctl-Token" in str(guard.problem(scope("POST", query="token=%s" % TOKEN)))
    assert "Origin" in str(guard.problem(scope("POST", x_runctl_token=TOKEN, origin="http://evil.example")))
    assert "Origin" in str(guard.problem(scope("POST", x_runctl_token=TOKEN, origin="http://localhost:8765")))
    assert "cross-site" in str(guard.problem(scope("POST", x_runctl_token=TOKEN, sec_fetch_site="cross-site")))


def test_bound_to_every_address_any_host_name_reaches_it_but_the_token_still_counts() -> None:
    open_guard = access.Guard(lambda *a: None, TOKEN, "0.0.0.0", 8765)  # type: ignore[arg-type,return-value]
    assert open_guard.problem(scope(host="10.0.0.5:8765", x_runctl_token=TOKEN)) is None
    assert open_guard.problem(scope(host="10.0.0.5:8765")) is not None
    post = scope("POST", host="10.0.0.5:8765", x_runctl_token=TOKEN, origin="http://10.0.0.5:8765")
    assert open_guard.problem(post) is None
    assert access.is_loopback("127.0.0.1") and access.is_loopback("::1") and access.is_loopback("localhost")
    assert not access.is_loopback("0.0.0.0") and not access.is_loopback("example.com")
    assert access.url_host("::1") == "[::1]" and access.url_host("0.0.0.0") == "127.0.0.1"


def test_the_log_window_keeps_offsets_true_and_skips_what_it_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "LOG_WINDOW", 10)
    feed = live.RunFeed("r")
    feed.add_log(b"abcdef", 0)
    feed.add_log(b"defgh", 3)  # a follower started again streams from the start: held bytes are skipped
    assert feed.log_since(0) == {"offset": 0, "next_offset": 8, "text": "abcdefgh", "truncated": False}
    feed.add_log(b"ijklmn", 8)
    assert feed.log_end == 14 and bytes(feed.log) == b"efghijklmn"
    assert feed.log_since(0) == {"offset": 4, "next_offset": 14, "text": "efghijklmn", "truncated": True}
    assert feed.log_since(12)["text"] == "mn"
    assert feed.log_since(None, tail=3)["text"] == "lmn"
    assert feed.log_since(99) == {"offset": 99, "next_offset": 99, "text": "", "truncated": False}


def test_metrics_take_complete_lines_only_and_carry_their_series() -> None:
    feed = live.RunFeed("r")
    feed.add_metrics(b'{"step": 1, "loss": 2.0}\n{"step": 2, "loss": NaN}\n{"step": 3, "lo')
    assert feed.metrics_offset == len(b'{"step": 1, "loss": 2.0}\n{"step": 2, "loss": NaN}\n')
    feed.add_metrics(b'{"step": 3, "loss": 1.0, "acc": 0.5}\n')
    records, total = feed.metrics_since(1)
    assert total == 3 and [r["step"] for r in records] == [2, 3]
    assert feed.series("loss") == ("step", [(1.0, 2.0), (3.0, 1.0)])  # NaN left out
    assert feed.series("acc") == ("step", [(3.0, 0.5)])
    assert feed.series("nope") == ("step", [])
