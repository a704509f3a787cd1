"""The shared train options come from one model: every `train` command gets the same flags from it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import pytest
import typer
from typer.testing import CliRunner

from runctl.cli import local, ssh
from runctl.cli.trainopts import train_command
from runctl.core.errors import UsageError
from runctl.core.policies import DEFAULTS
from runctl.params import POLICY_KEYS, POLICY_PANEL, Number, Policy, TrainOptions, flag_of, from_config

LOCAL_OWN = {"script", "script_args", "project_dir", "python", "hourly_price"}
SSH_OWN = {
    "dest", "script", "script_args", "identity", "insecure_host_key", "project_dir", "project_name",
    "remote_dir", "adopt_remote_dir", "sync_code", "include", "data", "setup", "download_checkpoints", "hourly_price",
}  # fmt: skip


def train_params(app: typer.Typer) -> dict[str, Any]:
    """The Click parameters of a group's `train` command, by name."""
    command = typer.main.get_group(app).commands["train"]
    return {param.name: param for param in command.params if param.name}


def described(param: Any) -> tuple[Any, ...]:
    """What a user sees of an option: its names, help, panel, default, type, whether it repeats."""
    return (
        tuple(param.opts), tuple(param.secondary_opts), param.help, getattr(param, "rich_help_panel", None),
        param.default, param.type_descriptor.annotation, param.metavar, param.multiple, param.is_flag,
    )  # fmt: skip


def test_local_and_ssh_train_share_exactly_the_models_flags() -> None:
    local_params, ssh_params = train_params(local.app), train_params(ssh.app)
    shared = set(TrainOptions.model_fields)
    assert set(local_params) - LOCAL_OWN == set(ssh_params) - SSH_OWN == shared
    for name in shared:
        assert described(local_params[name]) == described(ssh_params[name]), name
        assert set(local_params[name].opts) == set(flag_of(TrainOptions.model_fields[name]).decls)


def test_every_policy_is_a_flag_in_its_panel_a_config_key_and_an_agent_default() -> None:
    params = train_params(local.app)
    for key in POLICY_KEYS:
        flag = flag_of(TrainOptions.model_fields[key])
        assert params[key].opts[-1] == flag.name == "--" + key.replace("_", "-")
        assert params[key].help == flag.help
        assert params[key].default is None  # not given: a config file may fill it
        if key != "notify":
            assert params[key].rich_help_panel == POLICY_PANEL
            assert TrainOptions.model_fields[key].default == DEFAULTS[key]


def test_the_shared_flags_keep_their_names_and_aliases() -> None:
    names = {frozenset(param.opts) for param in train_params(ssh.app).values()}
    for expected in [{"-e", "--env"}, {"-o", "--output"}, {"--wait"}, {"--tty"}, {"--checkpoint-glob"}, {"--notify"}]:
        assert expected in names


class WithMaxCost(TrainOptions):
    """A new policy is this one declaration (in PolicyParams itself, with its number in DEFAULTS)."""

    max_cost: Annotated[Optional[float], Policy("--max-cost", "Stop when the run has cost USD", "5"), Number] = None


def test_a_new_policy_is_one_field(tmp_path: Path) -> None:
    app = typer.Typer(rich_markup_mode=None)
    seen: list[Any] = []

    @train_command(app, model=WithMaxCost)
    def train(opts: WithMaxCost, script: Annotated[str, typer.Argument()]) -> None:
        seen.append((script, opts))

    @app.command()
    def other() -> None:  # a second command, so `train` stays a subcommand
        pass

    params = train_params(app)
    assert params["max_cost"].opts == ["--max-cost"] and params["max_cost"].rich_help_panel == POLICY_PANEL
    assert "--max-cost" in CliRunner().invoke(app, ["train", "--help"]).output

    result = CliRunner().invoke(app, ["train", "x.py", "--max-cost", "2.5", "--hang-timeout", "1m"])
    assert result.exit_code == 0, result.output
    script, opts = seen[0]
    assert script == "x.py" and opts.max_cost == 2.5
    assert opts.policies() == {"max_cost": 2.5, "hang_timeout": 60.0}  # given flags only, for the config merge

    refused = CliRunner().invoke(app, ["train", "x.py", "--max-cost", "nan"])
    assert isinstance(refused.exception, UsageError)
    assert refused.exception.message == "--max-cost must be a finite number, got nan"
    assert refused.exception.hint == "for example: --max-cost 5"

    config = tmp_path / "runctl.toml"
    assert from_config({"max_cost": 3}, config, WithMaxCost) == {"max_cost": 3.0}
    with pytest.raises(UsageError) as bad:
        from_config({"max_cost": "3"}, config, WithMaxCost)
    assert bad.value.message == "[policies] max_cost in %s must be a number, got '3'" % config
    with pytest.raises(UsageError) as not_a_policy:
        from_config({"name": "x"}, config, WithMaxCost)  # a flag, but not a config key
    assert "not a known policy" in not_a_policy.value.message


def test_a_command_may_not_redeclare_a_shared_option() -> None:
    with pytest.raises(TypeError, match="name"):

        @train_command(typer.Typer())
        def train(opts: TrainOptions, name: Annotated[str, typer.Option()] = "x") -> None:
            pass


def test_options_not_given_are_unset_and_switches_default_off() -> None:
    opts = TrainOptions.from_flags({"wait": False, "tty": False, "name": None, "stall_polls": None})
    assert opts.policies() == {}
    assert opts.env == [] and opts.checkpoint_glob == [] and opts.notify == [] and opts.timeout is None


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"timeout": "5m"}, ("--timeout only applies with --wait", "--max-duration")),
        ({"wait": True, "timeout": "5x"}, ("invalid --timeout '5x'", "15m")),
        ({"checkpoint_glob": ["../x"]}, ("--checkpoint-glob '../x' must stay inside", "out/*.pt")),
        ({"on_hang": "later"}, ("--on-hang must be stop or notify, got 'later'", "--on-hang notify")),
    ],
)
def test_bad_options_are_refused_with_the_flag_named(values: dict[str, Any], words: tuple[str, str]) -> None:
    with pytest.raises(UsageError) as info:
        TrainOptions.from_flags(values)
    assert words[0] in info.value.message and words[1] in (info.value.hint or "")
