"""Typer apps, one module per command group: parse flags, call the controller, render."""
