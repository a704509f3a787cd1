"""`runctl dashboard`: bind, print the URL with this start's token, serve until Ctrl-C or SIGTERM.

The socket is bound here, before uvicorn starts, so a port in use is one line and exit 4, and
what listens is exactly what was checked. The running dashboard is recorded (pid, port, token) in
a 0600 file of RUNCTL_HOME, so `--dashboard` on a train command reuses it.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from typing import Any

from ..core.errors import HostError, UsageError
from . import access

DEFAULT_PORT = 8765


def check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise UsageError("--port must be from 0 to 65535, got %d" % port, "for example: --port 8765 (0: any free port)")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or the error a user can act on (exit 4 or 2)."""
    check_port(port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(
            "--host %s is not an address of this machine (%s)" % (host, exc.strerror),
            "use 127.0.0.1 (the default), or an address this machine has",
        ) from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            running = access.read_state()
            if running is not None and running.get("port") == port and _alive(running):
                raise HostError(
                    "port %d is in use: a runctl dashboard already serves it" % port,
                    "open it: %s   (or pass another --port)" % running.get("url"),
                ) from None
            raise HostError(
                "port %d on %s is in use" % (port, host),
                "pass another --port (e.g. --port %d, or --port 0 for any free one)" % (port + 1),
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UsageError(
                "--host %s is not an address of this machine" % host, "use 127.0.0.1 (the default)"
            ) from None
        if exc.errno == errno.EACCES:
            raise HostError(
                "port %d needs privileges to bind" % port, "use a port above 1023, e.g. --port %d" % DEFAULT_PORT
            ) from None
        raise HostError("cannot listen on %s:%d: %s" % (host, port, exc.strerror or exc)) from None
    return sock


def _alive(state: dict[str, Any]) -> bool:
    from .launch import answers

    return answers(state)


def serve(host: str, port: int, open_browser: bool, say: Any) -> None:
    """Serve the dashboard in this process until interrupted."""
    import uvicorn

    from .server import create_app

    sock = bind(host, port)
    port = sock.getsockname()[1]
    if not access.is_loopback(host):
        shown = port
        say(
            "runctl: warning: --host %s serves the dashboard beyond this machine over plain HTTP; every request "
            "still needs the token, but anyone on the network path can read it. Prefer the default "
            "127.0.0.1 and an SSH tunnel: ssh -L %d:127.0.0.1:%d THIS_HOST" % (host, shown, shown)
        )
    token = access.new_token()
    url = "http://%s:%d/?token=%s" % (access.url_host(host), port, token)
    app = create_app(token, host, port)
    access.write_state(
        {"pid": os.getpid(), "host": host, "port": port, "token": token, "url": url, "started_at": time.time()}
    )
    print(url, flush=True)
    say("runctl dashboard on %s:%d (Ctrl-C stops it; the runs go on)" % (host, port))
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=1, ws="none"
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        access.clear_state(os.getpid())
        sock.close()
    sys.stdout.flush()
