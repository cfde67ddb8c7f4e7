"""Uncertainty variants (max/mean instance uncertainty, margin, least confidence) and the
cost-aware option of ranking strategies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from activedet.data.pool import Pool
from activedet.errors import ConfigError, StrategyError
from activedet.models.base import Inference
from activedet.strategies import build_strategy
from activedet.strategies.base import cost_aware_scores
from activedet.strategies.uncertainty import instance_uncertainty, least_confidence, margin_uncertainty


def test_instance_measures_by_hand() -> None:
    p = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    torch.testing.assert_close(margin_uncertainty(p), torch.tensor([1 - 0.5, 1 - 0.05]))
    torch.testing.assert_close(least_confidence(p), torch.tensor([0.3, 0.6]))
    one = torch.tensor([[0.9], [0.5], [0.2]])
    torch.testing.assert_close(margin_uncertainty(one), torch.tensor([0.2, 1.0, 0.4]))
    h = instance_uncertainty(torch.tensor([[0.5, 0.5]]), "entropy", "classification")
    assert math.isclose(float(h), math.log(2), rel_tol=1e-6)
    hb = instance_uncertainty(torch.tensor([[0.5, 0.5]]), "entropy", "detection")
    assert math.isclose(float(hb), 2 * math.log(2), rel_tol=1e-6)  # two binary entropies
    with pytest.raises(ConfigError, match="'measure' = 'bogus'"):
        instance_uncertainty(p, "bogus", "detection")


class FakeDetector:
    """Serves fixed detections: image id -> (scores (K,), probs (K, C))."""

    task = "detection"

    def __init__(self, dets: dict[int, tuple[list[float], list[list[float]]]]) -> None:
        self.dets = dets

    def infer(self, dataset, ids, batch_size=8, progress=False, keep_anchors=True):
        for i in ids:
            s, p = self.dets[i]
            k = len(s)
            yield Inference(i, torch.zeros((k, 4)), torch.tensor(s).reshape(k), torch.ones(k, dtype=torch.long),
                            torch.tensor(p, dtype=torch.float32).reshape(k, 2))


DETS = {
    1: ([0.9, 0.6], [[0.9, 0.1], [0.6, 0.5]]),
    2: ([0.3], [[0.3, 0.25]]),
    3: ([0.8, 0.7, 0.55, 0.5], [[0.8, 0.1], [0.7, 0.6], [0.55, 0.5], [0.5, 0.45]]),
    4: ([], []),
}


def _scores(name: str, **params) -> dict[int, float]:
    s = build_strategy(name, params)
    return s.score(FakeDetector(DETS), Pool([1, 2, 3, 4]), [1, 2, 3, 4], np.random.default_rng(0))


def test_image_scores_aggregate_instances() -> None:
    for name, measure, how in [("max_uncertainty", "least_confidence", max), ("mean_uncertainty", "margin", np.mean)]:
        got = _scores(name, measure=measure)
        assert set(got) == {1, 2, 3}, "an image without detections is unscored"
        for i in got:
            u = instance_uncertainty(torch.tensor(DETS[i][1]), measure, "detection")
            assert math.isclose(got[i], float(how(u.numpy())), rel_tol=1e-6)
    margin = _scores("margin", aggregate="max")
    assert math.isclose(margin[3], 1 - (0.55 - 0.5), rel_tol=1e-6)
    lc = _scores("least_confidence")
    assert math.isclose(lc[2], 0.7, rel_tol=1e-6)


def test_mean_entropy_uncertainty_equals_entropy_strategy() -> None:
    assert _scores("mean_uncertainty", measure="entropy") == _scores("entropy")


def test_cost_aware_divides_by_predicted_boxes() -> None:
    assert cost_aware_scores({1: 2.0, 2: 3.0, 3: 1.0}, {1: 4, 2: 0, 3: 1}) == {1: 0.5, 2: 3.0, 3: 1.0}
    pool = Pool([1, 2, 3, 4], dataset=None)
    s = build_strategy("least_confidence", {"cost_aware": True, "cost_min_score": 0.5})
    chosen = s.select(FakeDetector(DETS), pool, 4, np.random.default_rng(0))
    ids = chosen.ids
    plain = _scores("least_confidence")
    n_boxes = {1: 2, 2: 0, 3: 4}
    expect = {i: plain[i] / max(1, n_boxes[i]) for i in plain}
    assert chosen.scores == pytest.approx(expect)
    assert ids[:3] == sorted(expect, key=lambda i: -expect[i]) and ids[3] == 4
    # the crowded image 3 ranks above image 1 without the option and below it with it
    plain_ids = build_strategy("least_confidence").select(FakeDetector(DETS), pool, 4, np.random.default_rng(0)).ids
    assert plain_ids.index(3) < plain_ids.index(1) and ids.index(1) < ids.index(3)


def test_cost_aware_reuses_the_scoring_pass() -> None:
    """cost_aware divides by box counts taken from the scoring pass: one inference pass over
    the pool, not a second one (the wrapper composes with the ranking and the batch modes)."""

    class Counting(FakeDetector):
        passes: list[list[int]] = []

        def infer(self, dataset, ids, batch_size=8, progress=False, keep_anchors=True):
            self.passes.append(list(ids))
            return super().infer(dataset, ids, batch_size, progress, keep_anchors)

    for params in ({"cost_aware": True, "cost_min_score": 0.5},
                   {"cost_aware": True, "cost_min_score": 0.5, "batch": "class_balanced", "preselect": 1.0}):
        det = Counting(DETS)
        Counting.passes = []
        chosen = build_strategy("least_confidence", params).select(det, Pool([1, 2, 3, 4]), 4,
                                                                   np.random.default_rng(0))
        assert Counting.passes == [[1, 2, 3, 4]]  # the scoring pass only
        plain = _scores("least_confidence")
        assert chosen.scores == pytest.approx({1: plain[1] / 2, 2: plain[2] / 1, 3: plain[3] / 4})


def test_cost_aware_rejected_where_meaningless() -> None:
    with pytest.raises(ConfigError, match="unknown key 'strategy.cost_aware' for strategy 'coreset'"):
        build_strategy("coreset", {"cost_aware": True})
    s = build_strategy("margin", {"cost_aware": True})

    class Clf(FakeDetector):
        task = "classification"

    with pytest.raises(StrategyError, match="needs a detector"):
        s.select(Clf(DETS), Pool([1, 2, 3]), 2, np.random.default_rng(0)).ids
    with pytest.raises(ConfigError, match="'cost_min_score' = 2"):
        build_strategy("margin", {"cost_aware": True, "cost_min_score": 2}).select(
            FakeDetector(DETS), Pool([1, 2, 3]), 2, np.random.default_rng(0)).ids
