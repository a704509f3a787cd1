"""Parameters shared by several commands; the shared `train` options are the model `runctl.params.TrainOptions`.

No pydantic here: `runs` and `checkpoint` import this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from .common import Output

if TYPE_CHECKING:
    from ..core.spec import RunSpec
    from ..params import TrainOptions

OUTPUT = ("--output", "-o")  # every command's, the train commands' too (TrainOptions.output)
OUTPUT_HELP = "text or json"
OutputOpt = Annotated[Output, typer.Option(*OUTPUT, help=OUTPUT_HELP)]
ScriptArgs = Annotated[list[str] | None, typer.Argument(help="Arguments for the script, after --")]


def output_flags(spec: RunSpec, opts: TrainOptions) -> None:
    """--tty and --checkpoint-glob onto a spec (the globs were checked with the other options)."""
    spec.tty = opts.tty
    spec.checkpoint_globs = list(opts.checkpoint_glob)
