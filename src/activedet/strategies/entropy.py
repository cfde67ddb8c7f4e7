"""Entropy sampling: image score = mean (or max) entropy of the detector's kept detections.

For detection the class probabilities of a kept detection are per-class sigmoids (dense
heads) or softmax scores (Faster R-CNN); instance entropy is the sum over classes of the
binary entropy H(p) = −p log p − (1 − p) log(1 − p), which stays meaningful with one
class. For classifiers it is the Shannon entropy of the softmax. Images without any kept
detection are unscored (they fill the budget at random, after every scored image).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from activedet.data.pool import Pool
from activedet.errors import ConfigError
from activedet.strategies.base import Strategy
from activedet.strategies.registry import register

_EPS = 1e-12


def binary_entropy(probs: torch.Tensor) -> torch.Tensor:
    """probs (K, C) in [0, 1] -> (K,) sum over classes of binary entropies (nats)."""
    p = probs.clamp(_EPS, 1 - _EPS)
    return -(p * p.log() + (1 - p) * (1 - p).log()).sum(-1)


def categorical_entropy(probs: torch.Tensor) -> torch.Tensor:
    """probs (K, C) rows summing to 1 -> (K,) Shannon entropy (nats)."""
    p = probs.clamp_min(_EPS)
    return -(p * p.log()).sum(-1)


def aggregate(values: torch.Tensor, how: str) -> float | None:
    """mean | max | sum of a (K,) tensor; None when K = 0 (unscored)."""
    if values.numel() == 0:
        return None
    if how == "mean":
        return float(values.mean())
    if how == "max":
        return float(values.max())
    if how == "sum":
        return float(values.sum())
    raise ConfigError(f"strategy key 'aggregate' = {how!r} is not one of mean, max, sum")


@register
class EntropyStrategy(Strategy):
    name = "entropy"
    reference = "Settles & Craven 2008 (uncertainty sampling); MIAL baseline: mean instance entropy"
    defaults = {"aggregate": "mean", "min_score": 0.05, "batch_size": 8}

    def score(self, adapter: Any, pool: Pool, ids: list[int], rng: np.random.Generator) -> dict[int, float]:
        how = self.params["aggregate"]
        aggregate(torch.zeros(1), how)  # validate before the long pass
        out: dict[int, float] = {}
        extra = {"keep_anchors": False} if adapter.task == "detection" else {}
        for inf in adapter.infer(pool.dataset, ids, self.params["batch_size"], progress=self.progress, **extra):
            if adapter.task == "classification":
                ent = categorical_entropy(inf.probs)
            else:
                keep = inf.scores >= self.params["min_score"]
                ent = binary_entropy(inf.probs[keep])
            s = aggregate(ent, how)
            if s is not None:
                out[inf.image_id] = s
        return out
