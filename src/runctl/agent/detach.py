"""Start a long-lived process detached from its caller: double fork + setsid, logs to a file.

The agent and the host watchdog both must outlive the ssh session or CLI that started them. The
caller waits only until the detached process writes one JSON message on the ready pipe (or exits).
"""

import json
import os
import sys
from typing import Any, Callable, Dict, Optional

from ..core.fsutil import PRIVATE_FILE


def spawn(log_path: str, body: Callable[[int], int], chdir: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """Run `body(ready_fd)` in a detached grandchild; return the JSON object it wrote, or None."""
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked children
        code = 1
        try:
            os.close(read_fd)
            os.setsid()
            if os.fork() > 0:
                os._exit(0)
            if chdir:
                os.chdir(chdir)
            devnull = os.open(os.devnull, os.O_RDONLY)
            log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, PRIVATE_FILE)
            os.dup2(devnull, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            for fd in (devnull, log):
                os.close(fd)
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            os.closerange(3, write_fd)
            os.closerange(write_fd + 1, 4096)
            code = body(write_fd)
        except BaseException:
            import traceback

            traceback.print_exc()  # into the log: a process that dies must say why
            sys.stderr.flush()
        os._exit(code)
    os.close(write_fd)
    os.waitpid(child, 0)
    chunks = []
    while True:
        data = os.read(read_fd, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(read_fd)
    try:
        message = json.loads(b"".join(chunks).decode() or "null")
    except ValueError:
        return None
    return message if isinstance(message, dict) else None
