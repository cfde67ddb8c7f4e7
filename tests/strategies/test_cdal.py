"""CDAL: class-specific confusion features and contextual diversity against direct formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from activedet.strategies.cdal import contextual_diversity, contextual_feature
from activedet.strategies.coreset import k_center_greedy


def bern_kl(a: float, b: float) -> float:
    return a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))


def bin_h(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_contextual_feature_is_entropy_weighted_mean_per_predicted_class() -> None:
    probs = torch.tensor([[0.9, 0.2, 0.1], [0.6, 0.5, 0.3], [0.1, 0.8, 0.4]])
    labels = torch.tensor([0, 0, 1])
    f = contextual_feature(probs, labels, 3)
    w = [sum(bin_h(p) for p in row) for row in probs.tolist()]
    row0 = [(w[0] * probs[0, k] + w[1] * probs[1, k]) / (w[0] + w[1]) for k in range(3)]
    np.testing.assert_allclose(f[0].numpy(), np.array(row0, dtype=np.float64), rtol=1e-5)
    np.testing.assert_allclose(f[1].numpy(), probs[2].double().numpy(), rtol=1e-6)
    assert torch.isnan(f[2]).all(), "no region predicted as class 2"
    assert torch.isnan(contextual_feature(torch.zeros((0, 3)), torch.zeros(0, dtype=torch.long), 3)).all()


def test_contextual_diversity_matches_direct_symmetric_kl() -> None:
    rng = np.random.default_rng(0)
    c = 3
    feats = torch.tensor(rng.uniform(0.05, 0.95, size=(5, c, c)))
    feats[1, 2] = float("nan")
    feats[3, 0] = float("nan")
    feats[3, 1] = float("nan")
    feats[4] = float("nan")  # no detection at all
    d = contextual_diversity(feats, feats)
    for i in range(5):
        for j in range(5):
            vals = []
            for cls in range(c):
                if torch.isnan(feats[i, cls, 0]) or torch.isnan(feats[j, cls, 0]):
                    continue
                a, b = feats[i, cls].tolist(), feats[j, cls].tolist()
                vals.append(sum(0.5 * bern_kl(x, y) + 0.5 * bern_kl(y, x) for x, y in zip(a, b)))
            expect = sum(vals) / len(vals) if vals else 0.0
            assert math.isclose(float(d[i, j]), expect, rel_tol=1e-6, abs_tol=1e-9), (i, j)
    assert torch.allclose(d, d.T) and torch.all(d.diagonal() == 0)


def test_k_center_on_contextual_diversity_picks_the_odd_image() -> None:
    c = 2
    base = torch.full((6, c, c), 0.3, dtype=torch.float64)
    base[4] = 0.9  # very different confusion
    labeled = np.array([True, False, False, False, False, False])

    def dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return contextual_diversity(x.view(-1, c, c), y.view(-1, c, c))

    picks, gains = k_center_greedy(base.reshape(6, -1), labeled, 2, np.random.default_rng(0), 2, dist)
    assert picks[0] == 4 and gains[0] > 0
    assert gains[1] == pytest.approx(0.0)
