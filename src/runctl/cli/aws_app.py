"""The `runctl aws` Typer app, on its own so each command module registers on it without cycles;
with the parameters every `aws` command shares (declared once here)."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)

InstanceArg = Annotated[str, typer.Argument(help="Instance id (i-...) or its Name tag", metavar="INSTANCE")]
RegionOpt = Annotated[
    str | None, typer.Option("--region", help="AWS region (default: AWS_REGION, else your profile's)")
]
IdentityOpt = Annotated[
    str | None, typer.Option("--identity", "-i", help="Private key file (default: the one remembered at create)")
]
SshUserOpt = Annotated[
    str | None, typer.Option("--ssh-user", help="SSH login user (default: the one remembered at create, or ubuntu)")
]
