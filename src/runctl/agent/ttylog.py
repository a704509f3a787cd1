"""`--tty`: the script runs under a pseudo-terminal whose master the agent holds.

Some libraries print nothing, or far less, when their output is not a terminal (Lightning's default
Rich progress bar draws only at the end). Under a pty they draw as on a desktop. The agent copies
what they write byte for byte to `training.raw.log` and, with terminal control sequences stripped,
to `training.log`, the log that is shown and parsed. Unlike a plain run, the script's output then
passes through the agent: if the agent dies, the script loses its terminal (it gets SIGHUP).
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import struct
import subprocess
import termios
import time
from typing import Callable, Dict, List, Optional

from ..core import logstream

ROWS, COLUMNS = 50, 160
READ_BYTES = 1 << 16


class PtyLog:
    def __init__(self, log_fd: int, raw_path: str) -> None:
        self.log_fd = log_fd
        self.master, slave = pty.openpty()
        self.slave = slave
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.ONLCR  # `\n` stays `\n` in the log, not `\r\n`
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        os.set_blocking(self.master, False)
        self.raw_fd = os.open(raw_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.carry = b""
        self.closed = False

    def start(
        self, argv: List[str], env: Dict[str, str], cwd: str, preexec: "Optional[Callable[[], None]]" = None
    ) -> "subprocess.Popen[bytes]":
        """The script in its own session, with the pty as stdout and stderr (stdin stays /dev/null)."""
        env = dict(env)
        env.setdefault("TERM", "xterm-256color")
        env.setdefault("COLUMNS", str(COLUMNS))
        env.setdefault("LINES", str(ROWS))
        try:
            return subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self.slave,
                stderr=self.slave,
                start_new_session=True,
                preexec_fn=preexec,
            )
        finally:
            os.close(self.slave)

    def pump(self) -> bool:
        """Copy what the script wrote since the last call; False once its terminal is closed."""
        while not self.closed:
            try:
                data = os.read(self.master, READ_BYTES)
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: every writer has closed the terminal
                    raise
                data = b""
            if not data:
                self.close()
                return False
            os.write(self.raw_fd, data)
            ready, self.carry = logstream.split_partial_control(self.carry + data)
            text = logstream.strip_controls(ready)
            if text:
                os.write(self.log_fd, text)
        return False

    def drain(self, timeout: float = 2.0) -> None:
        """Everything left in the terminal once the script has exited."""
        deadline = time.monotonic() + timeout
        while self.pump() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.carry:
            os.write(self.log_fd, logstream.strip_controls(self.carry))
            self.carry = b""
        for fd in (self.master, self.raw_fd):
            try:
                os.close(fd)
            except OSError:
                pass
