"""`runctl dashboard`: every run live in the browser (runctl.dashboard; the web stack is imported here only)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import say

command = typer.Typer(rich_markup_mode=None, add_completion=False)


@command.command()
def dashboard(
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port)")] = 8765,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; anything but loopback is reachable by others (warned)")
    ] = "127.0.0.1",
    open_browser: Annotated[bool, typer.Option("--open", help="Open the dashboard in the browser")] = False,
) -> None:
    """Serve the web dashboard: runs, a live page per run (loss chart, log, Stop), hosts; prints its URL."""
    from ..dashboard.serve import serve

    serve(host, port, open_browser, say)
