"""What the supervisor reads from a run's log: metrics records and whether the script made progress.

Bytes arrive as the script wrote them; records end at `\\n` or `\\r` (see core.logstream). Logs with
no metric shape and no carriage return take a fast path that never splits them into lines, so a
script printing half a million lines costs the agent almost nothing.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Pattern, Tuple

from ..core import logstream, metrics


class LogTail:
    def __init__(self, custom: Optional[Pattern[str]] = None) -> None:
        self.custom = custom
        self.parser = metrics.LogParser(custom)
        self.progress = logstream.Progress()
        self.pending = b""

    def feed(self, data: bytes, parse: bool = True) -> Tuple[bool, List[Dict[str, Any]]]:
        """(the script made progress, the metrics records) of newly read bytes."""
        text = self.pending + data if self.pending else data
        redraws = b"\r" in text
        if redraws and b"\r\n" in text:
            text = text.replace(b"\r\n", b"\n")  # CRLF line ends are lines, not redraws
            redraws = b"\r" in text
        end = max(text.rfind(b"\n"), text.rfind(b"\r")) if redraws else text.rfind(b"\n")
        if end < 0:
            self.pending = text[-logstream.MAX_PENDING :]
            return bool(data.strip()), []
        complete = text[: end + 1]
        wanted = parse and (self.custom is not None or redraws or metrics.chunk_may_have_metrics(complete))
        if not wanted and not redraws:
            self.pending = text[end + 1 :]
            return True, []
        recs, self.pending = logstream.records(text)
        moved = self.progress.advanced(recs) if redraws or wanted else bool(recs)
        return moved, self.parse(recs) if wanted else []

    def finish(self, parse: bool = True) -> List[Dict[str, Any]]:
        """The records of an unfinished last line, once the script has exited."""
        if not self.pending:
            return []
        _, found = self.feed(b"\n", parse)
        return found

    def parse(self, recs: List[Tuple[str, bool]]) -> List[Dict[str, Any]]:
        out = []
        every = self.custom is not None
        for text, _ in recs:
            if not every and not metrics.may_have_metrics(text):
                continue
            record = self.parser.parse(text)
            if record:
                out.append(record)
        return out
