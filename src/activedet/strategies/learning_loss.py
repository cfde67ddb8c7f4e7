"""Learning loss for active learning (Yoo & Kweon, CVPR 2019).

A loss-prediction module, trained jointly with the model (trainer ``learning_loss``,
model variant ``learning_loss``; see :mod:`activedet.models.learning_loss`), predicts each
image's loss. Selection scores a random subset of the pool (``subset`` images, 10,000 in
ISAL's setup; ``null``: the whole pool) and takes the highest predicted losses; images
outside the subset are unscored and fill the budget at random afterwards.

Training keys (read by the trainer, declared with the module:
:class:`~activedet.models.learning_loss.LearningLossSettings`): ``lambda`` (1.0),
``margin`` (1.0), ``stop_grad_epoch`` (``null``: 0 for detectors, 60% of the epochs for
classifiers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from activedet.data.pool import Pool
from activedet.models.learning_loss import LearningLossSettings, predict_losses
from activedet.settings import setting
from activedet.strategies.base import Strategy
from activedet.strategies.registry import register

if TYPE_CHECKING:
    from activedet.models.base import Adapter


def random_subset(ids: list[int], size: int | None, rng: np.random.Generator) -> list[int]:
    """``size`` ids drawn without replacement from ``rng`` (all of them when None or larger)."""
    if size is None or size >= len(ids):
        return list(ids)
    return [ids[int(j)] for j in np.sort(rng.choice(len(ids), size=size, replace=False))]


@dataclass(frozen=True)
class LearningLossStrategySettings(LearningLossSettings):
    subset: int | None = setting(10000, "score a seeded random subset of the pool of this size; null: all",
                                 ge=1, provenance="ISAL's setup (the learning-loss paper: 10,000 too)")
    batch_size: int = setting(8, "images per inference batch", ge=1)


@register
class LearningLossStrategy(Strategy):
    name = "learning_loss"
    reference = "Yoo & Kweon 2019 (learning loss: predicted loss on FPN levels / classifier blocks)"
    archs = None  # every model that provides what it wants (dense detectors, classifiers)
    wants = frozenset({"loss_prediction"})
    model_variant = "learning_loss"
    trainer = "learning_loss"
    settings_type = LearningLossStrategySettings
    shardable = False  # the scored subset is drawn from the ids given: every process scores all

    def score(self, adapter: Adapter, pool: Pool, ids: list[int], rng: np.random.Generator) -> dict[int, float]:
        size = self.settings.subset
        chosen = random_subset(list(ids), size, rng)
        pred = predict_losses(adapter, pool.dataset, chosen, self.settings.batch_size)
        return {i: float(p) for i, p in zip(chosen, pred)}


__all__ = ["random_subset"]
