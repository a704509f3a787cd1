"""A training log as a stream of records: lines, and progress-bar redraws ended by a carriage return.

A bar (tqdm, Lightning, Hugging Face) rewrites one line with `\\r` and may not print `\\n` for a whole
run, so `\\r` ends a record as `\\n` does. A fast bar redraws thousands of times a second; only the
last redraw before each line, and the last one read, are kept, so parsing costs the same whatever
the refresh rate. Terminal control sequences (colours, cursor moves, line erases) are stripped.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

from . import metrics

# CSI (`ESC [ ... final`), OSC (`ESC ] ... BEL|ST`), and two-byte escapes (`ESC 7`, `ESC =`).
_CONTROL = re.compile(
    rb"\x1b\[[0-9;?<=>!]*[ -/]*[@-~]"
    rb"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    rb"|\x1b[@-Z\\^_=>78]"
    rb"|[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]"
)
_CONTROL_TEXT = re.compile(_CONTROL.pattern.decode("latin-1"))
# A sequence cut off at the end of a read: kept for the next read rather than stripped half.
_PARTIAL = re.compile(rb"\x1b(?:\[[0-9;?<=>!]*[ -/]*|\][^\x07\x1b]*)?$")
MAX_PENDING = 1 << 16


def strip_controls(data: bytes) -> bytes:
    """`data` without terminal control sequences; `\\r`, `\\n` and `\\t` stay."""
    return _CONTROL.sub(b"", data) if b"\x1b" in data or b"\x08" in data else data


def strip_text(text: str) -> str:
    return _CONTROL_TEXT.sub("", text) if "\x1b" in text or "\x08" in text else text


def split_partial_control(data: bytes) -> Tuple[bytes, bytes]:
    """(what can be stripped now, an escape sequence cut off at the end that needs the next read)."""
    cut = data.rfind(b"\x1b", max(0, len(data) - 64))
    if cut < 0:
        return data, b""
    match = _PARTIAL.match(data, cut)
    if match is None:
        return data, b""
    return data[:cut], data[cut:]


def records(chunk: bytes) -> Tuple[List[Tuple[str, bool]], bytes]:
    """The records of `chunk` worth parsing, as (text, is_redraw), and the unfinished rest.

    Every line counts; of the redraws between two lines only the last non-blank one does.
    """
    end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
    if end < 0:
        return [], chunk[-MAX_PENDING:]
    complete, rest = chunk[: end + 1], chunk[end + 1 :]
    if b"\x1b" in complete or b"\x08" in complete:
        complete = strip_controls(complete)
    out: List[Tuple[str, bool]] = []
    if b"\r" not in complete:
        for line in complete.split(b"\n"):
            if line:
                out.append((line.decode("utf-8", "replace"), False))
        return out, rest
    lines = complete.split(b"\n")
    last = len(lines) - 1
    for index, line in enumerate(lines):
        if not line:
            continue
        parts = line.split(b"\r")
        if index == last:
            # After the last `\n` only redraws: the last non-blank one before the final `\r`.
            redraw = _last_non_blank(parts[:-1])
            if redraw is not None:
                out.append((redraw.decode("utf-8", "replace"), True))
            continue
        final = parts[-1]
        redraw = _last_non_blank(parts[:-1])
        if redraw is not None:
            out.append((redraw.decode("utf-8", "replace"), True))
        if final.strip():
            out.append((final.decode("utf-8", "replace"), False))
    return out, rest


def _last_non_blank(parts: List[bytes]) -> Optional[bytes]:
    for part in reversed(parts):
        if part.strip():
            return part
    return None


class Progress:
    """Whether new output is progress: a new line is; a bar redrawn with the same counter is not.

    A hung script under a live progress display (Rich refreshes its bar and elapsed time ten times a
    second) writes output forever; only a counter that moves, or a new line, proves it is working.
    """

    def __init__(self) -> None:
        self.counters: Dict[str, int] = {}
        self.last_redraw = ""

    def advanced(self, recs: List[Tuple[str, bool]]) -> bool:
        moved = False
        for text, redraw in recs:
            counter = metrics.bar_counter(text)
            if counter is not None:
                label, done = counter
                if self.counters.get(label) != done:
                    if len(self.counters) > 64:
                        self.counters.clear()
                    self.counters[label] = done
                    moved = True
            elif not redraw:
                moved = True
            elif text != self.last_redraw:
                self.last_redraw = text
                moved = True
        return moved
