"""Core-set selection (Sener & Savarese, ICLR 2018): k-center greedy on pooled features.

Features come from ``adapter.features``: for classifiers the penultimate layer (ISAL D.1,
Sener & Savarese); for detectors their feature maps (dense heads: the classification and
regression tower outputs; Faster R-CNN: the FPN levels) pooled over the image (``pooling``):

- ``foreground`` (default): each location weighted by the detector's foreground
  probability (Faster R-CNN: the RPN's objectness). Global average pooling (``mean``,
  ISAL's supplementary D.2) is dominated by background: on ``shapes``, with the round-0
  detectors of three seeds, 30 %, 5 % and 30 % of k-center's 20 picks had no object,
  against 9–11 % of the pool (NOTES, "Batches that pay, part 4"). Weighted by foreground,
  a row sums what the detector sees as objects, and images without any lie together near
  the origin.
- ``mean``: every location alike (the paper's baseline).

k-center greedy (:func:`activedet.strategies.diversity.k_center_greedy`; distributed:
:func:`~activedet.strategies.diversity.k_center_greedy_sharded`, each process holding its
shard of the candidates' features): every candidate
keeps its distance to the nearest center (labeled image or earlier pick); the next pick is
the candidate farthest from every center.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from activedet.data.pool import Pool
from activedet.errors import ConfigError, StrategyError
from activedet.settings import Settings, setting
from activedet.strategies.base import Selection, Strategy
from activedet.strategies.diversity import (k_center_greedy, k_center_greedy_sharded, min_distances,
                                           squared_euclidean)
from activedet.strategies.registry import register

if TYPE_CHECKING:
    from activedet.models.base import Adapter

@dataclass(frozen=True)
class CoresetSettings(Settings):
    batch_size: int = setting(8, "images per feature-extraction batch", ge=1)
    chunk_size: int = setting(2048, "block size of the distance computation (memory, not result)", ge=1)
    pooling: Literal["foreground", "mean"] = setting(
        "foreground", "detectors: pool the feature maps weighted by foreground probability, or a plain "
                      "mean over the image (classifiers: the penultimate layer either way)",
        provenance="mean: ISAL supplementary D.2; foreground: activedet (NOTES, Batches that pay, part 4)")
    subset: int | None = setting(None, "candidates: a seeded random subset of the unlabeled pool "
                                       "of this size; null: all of it", ge=1)


def candidate_subset(pool: Pool, subset: int | None, rng: np.random.Generator) -> list[int]:
    """Unlabeled ids in a seeded random order (ties in greedy picks follow it), at most
    ``subset`` of them (all when None)."""
    unl = pool.unlabeled
    order = rng.permutation(len(unl))
    if subset is not None:
        order = order[:subset]
    return [unl[int(j)] for j in order]


@register
class CoresetStrategy(Strategy):
    name = "coreset"
    reference = "Sener & Savarese 2018 (core-set, k-center greedy on pooled features)"
    settings_type = CoresetSettings
    wants = frozenset({"image_features"})

    def _select(self, adapter: Adapter, pool: Pool, budget: int, rng: np.random.Generator,
                batch: int) -> Selection:
        subset = self.settings.subset
        cands = candidate_subset(pool, subset, rng)
        if budget > len(cands):
            raise ConfigError(f"strategy key 'subset' = {subset}: smaller than the budget {budget}")
        bs = int(self.settings.batch_size)
        kw = {"pooling": self.settings.pooling} if adapter.task == "detection" else {}
        try:  # distributed: each process holds its shard of the candidates' features
            picks, gains = k_center_greedy_sharded(lambda part: adapter.features(pool.dataset, part, bs, **kw),
                                                   list(pool.labeled), cands, budget, rng,
                                                   int(self.settings.chunk_size), bs)
        except StrategyError as e:
            raise StrategyError(f"strategy 'coreset': {e}") from None
        ids = [cands[p] for p in picks]
        return Selection(ids, {i: float(np.sqrt(max(g, 0.0))) if np.isfinite(g) else 0.0
                                for i, g in zip(ids, gains)})


__all__ = ["k_center_greedy", "min_distances", "squared_euclidean", "candidate_subset"]
