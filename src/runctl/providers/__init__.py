"""Providers by name. Each is named by an import string and imported only when first used, so
`runctl --help` (and every command that does not touch a host) imports no provider SDK."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..core.errors import UsageError

if TYPE_CHECKING:
    from .base import Provider

# name -> "module:attribute" of a Provider instance or class. A third provider is one line here.
REGISTRY: dict[str, str] = {
    "local": "runctl.providers.local:LocalProvider",
    "ssh": "runctl.providers.ssh:SshProvider",
    "aws": "runctl.providers.aws:AwsProvider",
    "lambda": "runctl.providers.lambda_labs:LambdaProvider",
}
_LOADED: dict[str, Provider] = {}


def register(name: str, target: str) -> None:
    """Name a provider by its import string; nothing is imported until `get(name)`."""
    REGISTRY[name] = target
    _LOADED.pop(name, None)


def get(name: str) -> Provider:
    found = _LOADED.get(name)
    if found is not None:
        return found
    target = REGISTRY.get(name)
    if target is None:
        raise UsageError("unknown provider %r" % name, "known providers: %s" % ", ".join(sorted(REGISTRY)) or "none")
    module, _, attribute = target.partition(":")
    made = getattr(importlib.import_module(module), attribute)
    provider: Provider = made() if isinstance(made, type) else made
    _LOADED[name] = provider
    return provider
