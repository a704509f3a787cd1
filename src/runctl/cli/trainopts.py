"""`train_command`: a provider's `train` declares only its own flags; the shared ones come from the model.

Typer reads a command's parameters from `inspect.signature` and its annotations, so the decorator
builds the registered function's `__signature__` and `__annotations__` from the command's own
parameters followed by one Typer option per `runctl.params.TrainOptions` field (names, help, panel and
parse type from the field's `Flag`). When the command runs, the shared values are validated into one
`TrainOptions` and handed to the body as its first argument; the body never sees them one by one.

A new provider's train command (say `runctl ec2 train`, in cli/ec2.py, listed in cli/main.GROUPS)
declares the options object first, then only its own arguments and flags, Typer-style:

    @train_command(app)
    def train(opts: TrainOptions, script: ScriptArg, instance_type: InstanceTypeOpt = "g5.xlarge") -> None:
        ...  # opts.name, opts.env, opts.wait, opts.timeout, opts.output, opts.policies(), ...

(`ScriptArg`, `InstanceTypeOpt`: `Annotated[..., typer.Argument/Option(...)]` as in any Typer command.)

A new shared option or policy is a field of the model; no train command changes.

Importing this module imports pydantic (through the model): `cli/main.py` imports command groups
only when the command line reaches them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Optional, get_args, get_type_hints

import typer

from ..params import TrainOptions

Body = Callable[..., None]
Params = Sequence[inspect.Parameter]


def _strip_optional(annotation: Any) -> Any:
    args = get_args(annotation)
    return next(arg for arg in args if arg is not type(None)) if type(None) in args else annotation


def shared_parameters(model: type[TrainOptions] = TrainOptions) -> list[inspect.Parameter]:
    """One keyword parameter per shared option, as Typer expects it.

    A policy flag not given is None, so the model can tell it from a given value and a config file can
    fill it; so is an option without a default value or a repeatable one. A switch (`--wait`) or a
    choice with a default (`--output`) has the field's default.
    """
    params = []
    keys = model.config_keys()
    for name, field, flag in model.flags():
        kind = flag.parse or _strip_optional(field.annotation)
        given_only = name in keys or field.default is None or field.default_factory is not None
        option = typer.Option(*flag.decls, help=flag.help, rich_help_panel=flag.panel, metavar=flag.metavar)
        annotation = Annotated[Optional[kind] if given_only else kind, option]  # type: ignore[valid-type]
        default = None if given_only else field.default
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default))
    return params


def _as_keyword(param: inspect.Parameter, hints: dict[str, Any]) -> inspect.Parameter:
    return param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(param.name, param.annotation))


def borrow(command: Callable[..., Any], drop: tuple[str, ...] = (), defaults: dict[str, Any] | None = None) -> Params:
    """Another command's own parameters (a train body's: those after its options), to declare them
    once and reuse them: `runctl workflow run` takes `aws create`'s and `aws train`'s flags this way.
    `defaults` replaces the default of the named ones (a flag required there may be optional here)."""
    hints = get_type_hints(command, include_extras=True)
    params = list(inspect.signature(command).parameters.values())
    if params and params[0].name == "opts":
        params = params[1:]
    kept = [_as_keyword(p, hints) for p in params if p.name not in drop and p.kind != inspect.Parameter.VAR_KEYWORD]
    return [p.replace(default=(defaults or {}).get(p.name, p.default)) for p in kept]


def train_command(
    app: typer.Typer,
    name: str = "train",
    model: type[TrainOptions] = TrainOptions,
    borrowed: Params = (),
    **settings: Any,
) -> Callable[[Body], Body]:
    """Register the decorated function as `app`'s `name` command, with every shared train option.

    The function's first parameter receives the validated options (`model`, TrainOptions unless a
    command extends it); its other parameters are the command's own arguments and flags, declared with
    `Annotated[..., typer.Argument/Option(...)]` as usual, and listed first in `--help`. `borrowed`
    parameters (see `borrow`) come after them and reach the body as keyword arguments (`**flags`).
    """

    def register(body: Body) -> Body:
        hints = get_type_hints(body, include_extras=True)
        _options, *own = inspect.signature(body).parameters.values()
        own = [p for p in own if p.kind != inspect.Parameter.VAR_KEYWORD]
        own_params = [_as_keyword(param, hints) for param in own] + list(borrowed)
        shared = shared_parameters(model)
        clash = {p.name for p in own_params} & {p.name for p in shared}
        if clash:
            raise TypeError("%s declares shared train options itself: %s" % (body.__qualname__, ", ".join(clash)))
        own_names = [p.name for p in own_params]

        def command(**values: Any) -> None:
            mine = {key: values.pop(key) for key in own_names}
            body(model.from_flags(values), **mine)

        parameters = [*own_params, *shared]
        command.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
        command.__doc__ = body.__doc__
        command.__name__ = command.__qualname__ = body.__name__
        command.__module__ = body.__module__
        app.command(name, **settings)(command)
        return body

    return register
