"""Strategies registered by name. Adding one = one file + one line in ``_MODULES``."""

from __future__ import annotations

import importlib
from typing import Any

from activedet.errors import StrategyError
from activedet.strategies.base import Strategy

# module path for each strategy file; each module registers its classes on import
_MODULES = [
    "activedet.strategies.random",
    "activedet.strategies.entropy",
]

_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    for mod in _MODULES:
        importlib.import_module(mod)


def available() -> dict[str, type[Strategy]]:
    """Name -> class of every registered strategy, sorted by name."""
    _load()
    return dict(sorted(_REGISTRY.items()))


def get_strategy_class(name: str) -> type[Strategy]:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise StrategyError(
            f"unknown strategy '{name}' (available: {', '.join(sorted(_REGISTRY))})"
        ) from None


def build_strategy(name: str, params: dict[str, Any] | None = None) -> Strategy:
    return get_strategy_class(name)(**(params or {}))
