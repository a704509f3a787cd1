"""Parameters shared by several commands; the shared `train` options are the model `runctl.params.TrainOptions`.

No pydantic here: `runs` and `checkpoint` import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import Output

if TYPE_CHECKING:
    pass

OUTPUT = ("--output", "-o")  # every command's, the train commands' too (TrainOptions.output)
OUTPUT_HELP = "text or json"
OutputOpt = Annotated[Output, typer.Option(*OUTPUT, help=OUTPUT_HELP)]
ScriptArgs = Annotated[list[str] | None, typer.Argument(help="Arguments for the script, after --")]

# ---- the flags of every train that ships the project to a host (`ssh train`, `aws train`) --------

ScriptArg = Annotated[str, typer.Argument(help="Training script inside the project")]
IdentityOpt = Annotated[str | None, typer.Option("--identity", "-i", help="Private key file")]
ProjectDirOpt = Annotated[
    str | None, typer.Option("--project-dir", help="Local project root (default: nearest .git/pyproject.toml)")
]
ProjectNameOpt = Annotated[str | None, typer.Option("--project-name", help="Name on the host")]
RemoteDirOpt = Annotated[
    str | None, typer.Option("--remote-dir", help="Project dir on the host (default ~/runctl/<project-name>)")
]
AdoptRemoteDirOpt = Annotated[
    bool,
    typer.Option(
        "--adopt-remote-dir",
        help="Sync into an existing non-empty --remote-dir runctl did not create; what is there is never deleted",
    ),
]
SyncCodeOpt = Annotated[bool, typer.Option("--sync-code/--no-sync-code", help="rsync the project first")]
IncludeOpt = Annotated[
    list[str] | None, typer.Option("--include", help="Sync this pattern even if ignored (repeatable)")
]
DataOpt = Annotated[
    list[str] | None, typer.Option("--data", help="Local file or dir staged to <remote>/data/ (repeatable)")
]
HourlyPriceOpt = Annotated[
    float | None,
    typer.Option(
        "--hourly-price",
        metavar="USD",
        help="What this host costs per hour, for --max-cost (runctl prices cloud hosts itself)",
    ),
]
SetupOpt = Annotated[str | None, typer.Option("--setup", help="Shell command run on the host before the script")]
DownloadCheckpointsOpt = Annotated[
    bool,
    typer.Option("--download-checkpoints/--no-download-checkpoints", help="Pull checkpoints when the run ends"),
]


def synced_host_options(
    project_dir: ProjectDirOpt = None,
    project_name: ProjectNameOpt = None,
    remote_dir: RemoteDirOpt = None,
    adopt_remote_dir: AdoptRemoteDirOpt = False,
    sync_code: SyncCodeOpt = True,
    include: IncludeOpt = None,
    data: DataOpt = None,
    setup: SetupOpt = None,
    download_checkpoints: DownloadCheckpointsOpt = True,
) -> dict[str, Any]:
    """The flags of every train that ships the project to a host, declared once: a train command
    takes them with `train_command(app, borrowed=borrow(synced_host_options))` and hands what it got
    back here, for the StartRequest (`starting.train_request`; the option names `SshProvider` reads)."""
    return {
        "project_dir": project_dir,
        "setup": setup,
        "project_name": project_name,
        "remote_dir": remote_dir,
        "adopt": adopt_remote_dir,
        "sync": sync_code,
        "includes": include or [],
        "data": [Path(p).expanduser().resolve() for p in data or []],
        "download_checkpoints": download_checkpoints,
    }
