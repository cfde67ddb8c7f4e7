"""Entropy of class probabilities, and the aggregation of instance scores into an image
score. The ``entropy`` strategy itself is in :mod:`activedet.strategies.uncertainty`.

For detection the class probabilities of a kept detection are per-class sigmoids (dense
heads) or softmax scores (Faster R-CNN); instance entropy is the sum over classes of the
binary entropy H(p) = −p log p − (1 − p) log(1 − p), which stays meaningful with one
class. For classifiers it is the Shannon entropy of the softmax. Images without any kept
detection are unscored (they fill the budget at random, after every scored image).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from activedet.errors import ConfigError

_EPS = 1e-12

# One score from many: each reducer takes a 1-D torch tensor or numpy array (non-empty).
REDUCERS: dict[str, Callable[[Any], float]] = {
    "mean": lambda values: float(values.mean()),
    "max": lambda values: float(values.max()),
    "sum": lambda values: float(values.sum()),
}


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
    if how not in REDUCERS:
        raise ConfigError(f"strategy key 'aggregate' = {how!r} is not one of mean, max, sum")
    return REDUCERS[how](values)
