"""Selection strategies, registered by name (see :mod:`activedet.strategies.registry`)."""

from activedet.strategies.base import Strategy, rank_by_score
from activedet.strategies.registry import available, build_strategy, get_strategy_class, register

__all__ = ["rank_by_score", "Strategy", "available", "build_strategy", "get_strategy_class", "register"]
