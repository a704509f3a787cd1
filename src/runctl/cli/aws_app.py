"""The `runctl aws` Typer app, on its own so each command module registers on it without cycles."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
