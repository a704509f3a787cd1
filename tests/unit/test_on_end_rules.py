"""The on_end block, its claim and its proof, without processes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from runctl.agent import onend
from runctl.core.fsutil import is_partial, parse_jsonl, read_jsonl, temp_path


def test_defaults_and_bad_blocks() -> None:
    cfg = onend.settings({})
    assert cfg["command"] is None and cfg["after"] == ["checkpoints_in_place"] and cfg["controller_grace"] == 0
    assert onend.settings({"on_end": {"command": ["true"], "controller_grace": 1e9}})["controller_grace"] == 3600
    for bad in ("poweroff", ["poweroff", 3], [], {"x": 1}):
        with pytest.raises(onend.BadOnEnd, match="argv"):
            onend.settings({"on_end": {"command": bad}})
    with pytest.raises(onend.BadOnEnd, match="checkpoints_in_place"):
        onend.settings({"on_end": {"command": ["true"], "after": ["uploaded"]}})


def test_compare_needs_two_equal_looks_and_every_reported_file() -> None:
    assert onend.compare({"/c/a.pt": 1}, {"/c/a.pt": 1}, [])["held"] is True
    growing = onend.compare({"/c/a.pt": 1}, {"/c/a.pt": 2}, [])
    assert growing["held"] is False and growing["changing"] == ["/c/a.pt"]
    missing = onend.compare({}, {}, ["/c/best.pt"])
    assert missing["held"] is False and missing["missing"] == ["/c/best.pt"]
    temp = onend.compare({}, {}, ["/c/.best.tmp-1-2.pt"])
    assert temp["held"] is False and temp["temp"] == ["/c/.best.tmp-1-2.pt"]
    assert "still changing: /c/a.pt" in onend.why_not(growing)


def test_look_counts_only_finished_files_of_this_run(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    (ckpt / "a.pt").write_bytes(b"12")
    (ckpt / ".a.tmp-1-2.pt").write_bytes(b"123")
    (ckpt / "b.pt.tmp").write_bytes(b"1")
    assert onend.look(str(tmp_path), str(ckpt), None, 0.0) == {str(ckpt / "a.pt"): 2}
    assert onend.look(str(tmp_path), str(ckpt), None, 2e9) == {}


def test_only_the_first_claim_wins_even_when_racing(tmp_path: Path) -> None:
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda by=by: results.append(onend.claim(str(tmp_path), by)[0]))
        for by in ("agent", "controller") * 4
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    holder = json.loads((tmp_path / "on_end.claim").read_text())
    assert holder["by"] in ("agent", "controller") and (tmp_path / "on_end.claim").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError):
        onend.claim(str(tmp_path), "someone")


def test_a_controller_records_its_result_only_under_its_own_claim(tmp_path: Path) -> None:
    onend.claim(str(tmp_path), "agent")
    assert onend.controller_result(str(tmp_path), {"exit_code": 0})["ok"] is False
    other = tmp_path / "other"
    other.mkdir()
    assert onend.controller_claim(str(other))["claimed"] is True
    done = onend.controller_result(str(other), {"exit_code": 0, "by": "agent", "release": "terminate"})
    assert done["ok"] is True and done["result"]["by"] == "controller" and done["result"]["release"] == "terminate"
    assert onend.controller_claim(str(other))["result"]["exit_code"] == 0


def test_run_command_bounds_time_and_keeps_the_output_tail(tmp_path: Path) -> None:
    path = {"PATH": "/bin:/usr/bin"}
    code, tail, error = onend.run_command(["sh", "-c", "echo hello; exit 3"], str(tmp_path), path, 5)
    assert (code, tail, error) == (3, "hello\n", "")
    code, _, error = onend.run_command(["sleep", "30"], str(tmp_path), path, 0.3)
    assert code == -9 and "timed out" in error
    code, _, error = onend.run_command(["/no/such/program"], str(tmp_path), {}, 1)
    assert code is None and "no such file" in error


def test_the_one_temp_file_rule() -> None:
    assert temp_path("/d/status.json").startswith("/d/.status.tmp-") and temp_path("/d/x.pt").endswith(".pt")
    for name in (".hidden.pt", ".ckpt.tmp-1-2.pt", "ckpt.pt.tmp", "x.tmp-3"):
        assert is_partial(name), name
    assert not is_partial("checkpoint_epoch_3.pt")
    assert is_partial(Path(temp_path("/d/checkpoint_epoch_3.pt")).name)


def test_jsonl_reading_keeps_an_unfinished_last_line_for_later(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"a": 1}\nnot json\n[1]\n{"b": 2')
    records, offset = read_jsonl(str(path))
    assert records == [{"a": 1}] and offset == len(b'{"a": 1}\nnot json\n[1]\n')
    with open(path, "ab") as handle:
        handle.write(b"}\n")
    assert read_jsonl(str(path), offset) == ([{"b": 2}], path.stat().st_size)
    assert read_jsonl(str(tmp_path / "missing"), 5) == ([], 5)
    assert parse_jsonl(b'{"x": 1}\n\n{"y"') == [{"x": 1}]
