"""Log records (lines and bar redraws), control sequences, progress, and failure messages."""

from __future__ import annotations

import time

from runctl.agent.logtail import LogTail
from runctl.core import failure, logstream


def test_carriage_return_ends_a_record_and_only_the_last_redraw_counts() -> None:
    chunk = b"start\n\r 1/10 [00:00<\r 2/10 [00:00<\r     \r{'loss': 0.5}\n\r 3/10 [00:01<\r 4/10 [00:01<\r 5/1"
    recs, rest = logstream.records(chunk)
    assert recs == [("start", False), (" 2/10 [00:00<", True), ("{'loss': 0.5}", False), (" 4/10 [00:01<", True)]
    assert rest == b" 5/1"


def test_control_sequences_are_stripped_and_a_cut_one_waits_for_the_next_read() -> None:
    raw = b"\x1b[2K\x1b[35mEpoch 0/2\x1b[0m \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ loss: 1\x1b[?25l\r"
    assert logstream.strip_controls(raw) == b"Epoch 0/2 link loss: 1\r"
    assert logstream.split_partial_control(b"text\x1b[3") == (b"text", b"\x1b[3")
    assert logstream.split_partial_control(b"text\x1b[3m") == (b"text\x1b[3m", b"")
    assert logstream.strip_text("\x1b[1mbold\x1b[0m") == "bold"


def test_a_bar_redrawn_with_the_same_counter_is_not_progress() -> None:
    progress = logstream.Progress()
    assert progress.advanced([("Epoch 0/2  ━━━╸ 3/16 0:00:01 • 0:00:05", True)])
    assert not progress.advanced([("Epoch 0/2  ━━━╸ 3/16 0:00:02 • 0:00:05", True)])
    assert progress.advanced([("Epoch 0/2  ━━━━╸ 4/16 0:00:02 • 0:00:04", True)])
    assert progress.advanced([("a new line", False)])
    assert not progress.advanced([])


def test_log_tail_fast_path_and_bars() -> None:
    tail = LogTail()
    assert tail.feed(b"line %d nothing to parse\n" * 1000) == (True, [])
    assert tail.feed(b"half a li") == (True, [])
    moved, found = tail.feed(b"ne\r 40%|####  | 4/10 [00:01<00:01, loss=0.7]\r")
    assert moved and found == [{"step": 4, "total_steps": 10, "loss": 0.7}]
    assert tail.feed(b" 40%|####  | 4/10 [00:02<00:01, loss=0.7]\r") == (False, [])
    assert tail.feed(b"loss 0.25") == (True, [])
    assert tail.finish() == [{"loss": 0.25}]


def test_log_tail_at_memory_speed() -> None:
    tail = LogTail()
    chunk = b"line of the benchmark output, nothing to parse here\n" * 5000
    bar = b"".join(b"\r 50%%|#####     | %d/20000 [00:01<00:01, 9999it/s, loss=0.5]" % i for i in range(2000))
    started = time.process_time()
    for _ in range(40):  # 10 MB of lines (each chunk after a bar), 80,000 bar redraws
        tail.feed(chunk)
        tail.feed(bar)
    assert time.process_time() - started < 2.0


def test_failure_summary_is_the_last_tracebacks_exception() -> None:
    log = "\n".join(
        [
            "step 3 loss=0.5",
            "Traceback (most recent call last):",
            '  File "train.py", line 3, in <module>',
            "    main()",
            "ValueError: first",
            "",
            "During handling of the above exception, another exception occurred:",
            "",
            "Traceback (most recent call last):",
            '  File "train.py", line 9, in <module>',
            "    loss.backward()",
            "RuntimeError: CUDA error: device-side assert triggered",
            "CUDA kernel errors might be asynchronously reported at some other API call.",
            "For debugging consider passing CUDA_LAUNCH_BLOCKING=1",
            "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.",
            "",
        ]
    )
    assert failure.summary(log) == "RuntimeError: CUDA error: device-side assert triggered"


def test_failure_summary_adds_a_cuda_error_and_falls_back_to_the_last_line() -> None:
    log = (
        "[rank0]: CUDA error: an illegal memory access was encountered\n"
        "\r 50%|#####     | 5/10 [00:01<00:01]Traceback (most recent call last):\n"
        '  File "x.py", line 1\n'
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: train.py FAILED\n"
    )
    assert failure.summary(log) == (
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: train.py FAILED"
        " (CUDA error: an illegal memory access was encountered)"
    )
    assert failure.summary("working\n\x1b[31mkilled by the OOM killer\x1b[0m\n") == "killed by the OOM killer"
    assert failure.summary("") == ""


def test_crlf_line_ends_are_lines() -> None:
    tail = LogTail()
    assert tail.feed(b"step 1 loss=0.5\r\nstep 2 loss=0.4\r\n") == (
        True,
        [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}],
    )
