"""Core-set selection (Sener & Savarese, ICLR 2018): k-center greedy on pooled features.

Features come from ``adapter.features``: for dense detectors the global-average-pooled
classification and regression tower outputs, concatenated (ISAL's supplementary D.2);
for classifiers the penultimate layer (ISAL D.1, Sener & Savarese).

k-center greedy: every candidate keeps its distance to the nearest center (labeled image
or earlier pick); the next pick is the candidate farthest from every center. Memory is
O(N·D + chunk²): distances are computed block by block, never as an N×N matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from activedet.data.pool import Pool
from activedet.errors import ConfigError, StrategyError
from activedet.settings import Settings, setting
from activedet.strategies.base import Strategy
from activedet.strategies.registry import register

#: distance(x (n, D) float64, y (m, D) float64) -> (n, m) float64
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def squared_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x (n, D), y (m, D) -> (n, m) squared Euclidean distances, clamped at 0."""
    d = (x * x).sum(1, keepdim=True) + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return d.clamp_min_(0.0)


def min_distances(x: torch.Tensor, centers: torch.Tensor, chunk_size: int,
                  distance: Distance = squared_euclidean) -> torch.Tensor:
    """x (N, D), centers (M, D) -> (N,) distance of each row to its nearest center
    (+inf when M = 0), computed in (chunk_size × chunk_size) blocks."""
    out = torch.full((x.shape[0],), float("inf"), dtype=torch.float64)
    for i in range(0, x.shape[0], chunk_size):
        rows = x[i:i + chunk_size]
        for j in range(0, centers.shape[0], chunk_size):
            block = distance(rows, centers[j:j + chunk_size]).min(1).values
            out[i:i + chunk_size] = torch.minimum(out[i:i + chunk_size], block)
    return out


def k_center_greedy(features: np.ndarray | torch.Tensor, labeled: np.ndarray, budget: int,
                    rng: np.random.Generator, chunk_size: int = 2048,
                    distance: Distance = squared_euclidean) -> tuple[list[int], list[float]]:
    """Greedy k-center: pick ``budget`` rows of ``features`` that are not ``labeled``.

    features: (N, D); labeled: (N,) bool mask of the existing centers. Returns the picked
    row indices in pick order and each pick's distance to its nearest center at the moment
    it was picked (a non-increasing sequence). Ties go to the lowest index. With no labeled
    row the first pick is drawn from ``rng``. Rows already centers are never picked, even
    when every remaining distance is 0 (duplicate features).
    """
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    labeled = np.asarray(labeled, dtype=bool)
    if x.ndim != 2 or labeled.shape != (x.shape[0],):
        raise StrategyError(f"k-center greedy needs features (N, D) and a mask (N,), got {tuple(x.shape)} "
                            f"and {labeled.shape}")
    n_free = int((~labeled).sum())
    if budget > n_free:
        raise StrategyError(f"k-center greedy asked for {budget} picks but only {n_free} rows are free")
    if chunk_size < 1:
        raise ConfigError(f"strategy key 'chunk_size' = {chunk_size!r} must be >= 1")
    taken = torch.as_tensor(labeled).clone()
    dist = min_distances(x, x[taken], chunk_size, distance)
    picks: list[int] = []
    gains: list[float] = []
    for _ in range(budget):
        masked = dist.masked_fill(taken, -float("inf"))
        if not bool(taken.any()):
            free = np.flatnonzero(~taken.numpy())
            idx = int(free[rng.integers(len(free))])
        else:
            idx = int(masked.argmax())
        picks.append(idx)
        gains.append(float(masked[idx]))
        taken[idx] = True
        dist = torch.minimum(dist, min_distances(x, x[idx:idx + 1], chunk_size, distance))
    return picks, gains


@dataclass(frozen=True)
class CoresetSettings(Settings):
    batch_size: int = setting(8, "images per feature-extraction batch", ge=1)
    chunk_size: int = setting(2048, "block size of the distance computation (memory, not result)", ge=1)
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

    def _select(self, adapter: Any, pool: Pool, budget: int, rng: np.random.Generator) -> list[int]:
        subset = self.params["subset"]
        cands = candidate_subset(pool, subset, rng)
        if budget > len(cands):
            raise ConfigError(f"strategy key 'subset' = {subset}: smaller than the budget {budget}")
        labeled = list(pool.labeled)
        feats = adapter.features(pool.dataset, labeled + cands, self.params["batch_size"])
        if not np.isfinite(feats).all():
            raise StrategyError("strategy 'coreset': the model produced non-finite features")
        mask = np.zeros(len(labeled) + len(cands), dtype=bool)
        mask[:len(labeled)] = True
        picks, gains = k_center_greedy(feats, mask, budget, rng, int(self.params["chunk_size"]))
        ids = [cands[p - len(labeled)] for p in picks]
        self.last_scores = {i: float(np.sqrt(max(g, 0.0))) if np.isfinite(g) else 0.0
                            for i, g in zip(ids, gains)}
        return ids


__all__ = ["k_center_greedy", "min_distances", "squared_euclidean", "candidate_subset"]
