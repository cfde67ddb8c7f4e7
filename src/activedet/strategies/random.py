"""Random selection: the baseline every paper compares against."""

from __future__ import annotations

from typing import Any

import numpy as np

from activedet.data.pool import Pool
from activedet.strategies.base import Strategy
from activedet.strategies.registry import register


@register
class RandomStrategy(Strategy):
    name = "random"
    reference = "uniform sampling without replacement"

    def _select(self, adapter: Any, pool: Pool, budget: int, rng: np.random.Generator) -> list[int]:
        unl = pool.unlabeled
        picks = rng.choice(len(unl), size=budget, replace=False)
        self.last_scores = {}  # nothing is scored
        return [unl[int(j)] for j in picks]
