"""Parameters shared by several commands; the shared `train` options are the model `runctl.params.TrainOptions`.

No pydantic here: `runs` and `checkpoint` import this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from .common import Output

if TYPE_CHECKING:
    pass

OUTPUT = ("--output", "-o")  # every command's, the train commands' too (TrainOptions.output)
OUTPUT_HELP = "text or json"
OutputOpt = Annotated[Output, typer.Option(*OUTPUT, help=OUTPUT_HELP)]
ScriptArgs = Annotated[list[str] | None, typer.Argument(help="Arguments for the script, after --")]
