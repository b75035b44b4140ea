"""Continual-learning methods, one per file, in one registry (:data:`mmcl.methods.base.REGISTRY`).

Importing the package imports every module in it, so a method registers itself by being a file here
(``@register`` on its class); the modules named in :data:`BUILDING_BLOCKS` hold the contract and
what methods share, never a method. The contract: :mod:`mmcl.methods.base`.
"""
import importlib
import pkgutil

from mmcl.config import ConfigError
from mmcl.data.stream import Task
from mmcl.methods.base import REGISTRY, Card, Frozen, Method, MethodConfig, RunContext, register

__all__ = ["REGISTRY", "Card", "Frozen", "Method", "MethodConfig", "RunContext", "Task", "method_class", "register"]

# Modules of this package that are not methods: the contract, the card, and the shared building blocks.
BUILDING_BLOCKS = ("base", "card", "heads", "losses", "prompting", "snapshot", "text_anchored")

for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")  # a method module registers its method


def method_class(name: str) -> type[Method]:
    """The registered method ``name`` (the built-in ones are registered by importing this package)."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]
