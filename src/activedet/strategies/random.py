"""Random selection: the baseline every paper compares against."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from activedet.data.pool import Pool
from activedet.strategies.base import Selection, Strategy
from activedet.strategies.registry import register

if TYPE_CHECKING:
    from activedet.models.base import Adapter


@register
class RandomStrategy(Strategy):
    name = "random"
    reference = "uniform sampling without replacement"

    def _select(self, adapter: Adapter, pool: Pool, budget: int, rng: np.random.Generator,
                batch: int) -> Selection:
        unl = pool.unlabeled
        picks = rng.choice(len(unl), size=budget, replace=False)
        return Selection([unl[int(j)] for j in picks], {})  # nothing is scored
