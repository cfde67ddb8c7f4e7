"""Strategies registered by name.

Adding a strategy = one file in this package whose class carries ``@register``; every
module of the package is imported on first use, so no list needs editing.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from activedet.errors import StrategyError
from activedet.strategies.base import Strategy

_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    import activedet.strategies as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("base", "registry") and not info.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")


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
