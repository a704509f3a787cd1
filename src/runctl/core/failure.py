"""What a failed run's log says went wrong: the exception, not merely the last line.

A Python crash ends with a traceback whose last unindented `Type: message` line names the
exception; CUDA errors add advice lines after it ("Compile with TORCH_USE_CUDA_DSA ..."), and a
chained or distributed failure prints several tracebacks. The last traceback's exception is the
cause; a `CUDA error:` line elsewhere in the tail is added, as it is what a GPU user looks for.
"""

from __future__ import annotations

import re
from typing import List, Optional

from . import logstream

MAX_CHARS = 300
_HEADER = "Traceback (most recent call last):"
_CUDA = re.compile(r"CUDA error:.*|CUDA out of memory.*|NCCL error.*", re.IGNORECASE)


def _lines(tail: str) -> List[str]:
    text = logstream.strip_text(tail)
    return [line.rstrip() for line in re.split(r"[\r\n]+", text) if line.strip()]


def exception_line(lines: List[str]) -> Optional[str]:
    """The `ExceptionType: message` line of the last traceback in `lines`: its first unindented line."""
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].strip().endswith(_HEADER):
            for line in lines[index + 1 :]:
                if not line[:1].isspace():
                    return line.strip()
            return None
    return None


def summary(tail: str) -> str:
    """One line for a failed run's message: the exception (and CUDA error), else the last log line."""
    lines = _lines(tail)
    if not lines:
        return ""
    found = exception_line(lines)
    cuda = None
    for line in reversed(lines):
        match = _CUDA.search(line)
        if match:
            cuda = match.group(0).strip()
            break
    if found is None:
        text = cuda or lines[-1].strip()
    elif cuda and cuda not in found:
        text = "%s (%s)" % (found, cuda)
    else:
        text = found
    return text[:MAX_CHARS]
