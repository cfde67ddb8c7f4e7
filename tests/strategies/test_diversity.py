"""Diverse batches (strategy.batch / strategy.preselect) for every ranking strategy."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pytest
import torch

from activedet.errors import ConfigError
from activedet.loop.runner import expected_images, fit_budget
from activedet.models.base import Inference
from activedet.data.pool import Pool
from activedet.strategies.base import Strategy, rank_by_score
from activedet.strategies.diversity import class_round_robin, diverse_ranking, kmeanspp_seeding
from activedet.strategies.registry import available, build_strategy

# three tight clusters of ten unlabeled images; the top scores all lie in cluster 0
CLUSTER = {i: (i - 1) // 10 for i in range(1, 31)}
SCORES = {i: 3.0 - CLUSTER[i] - 0.01 * ((i - 1) % 10) for i in range(1, 31)}


class FixedScores(Strategy):
    """A ranking strategy whose scores are given (not registered)."""

    name = "fixed_scores_test"

    def score(self, adapter: Any, pool: Pool, ids: list[int], rng: np.random.Generator) -> dict[int, float]:
        return {i: SCORES[i] for i in ids if i in SCORES}


class StubAdapter:
    """Features: one tight cluster per CLUSTER value (id 0, labeled, far away);
    predicted class = the cluster."""

    task = "classification"

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        centers = {0: [10.0, 0.0], 1: [0.0, 10.0], 2: [-10.0, 0.0], -1: [0.0, -30.0]}
        self.feats = {i: np.asarray(centers[CLUSTER.get(i, -1)]) + 0.01 * rng.standard_normal(2)
                      for i in range(0, 31)}
        self.calls: list[str] = []

    def features(self, dataset: Any, ids: list[int], batch_size: int = 8) -> np.ndarray:
        self.calls.append("features")
        return np.stack([self.feats[i] for i in ids]).astype(np.float32)

    def infer(self, dataset: Any, ids: list[int], batch_size: int = 8) -> Iterator[Inference]:
        self.calls.append("infer")
        for i in ids:
            yield Inference(i, torch.zeros((0, 4)), torch.tensor([0.9]), torch.tensor([CLUSTER[i]]),
                            torch.tensor([[0.9, 0.05, 0.05]]))


def _pool() -> Pool:
    pool = Pool(range(0, 31), costs={i: 1 + i % 3 for i in range(0, 31)}, dataset=object())
    pool.add([0], 0)
    return pool


@pytest.mark.parametrize("mode", ["kcenter", "kmeanspp", "class_balanced"])
def test_diverse_batch_spans_the_clusters_topk_does_not(mode: str) -> None:
    pool = _pool()
    top = FixedScores().select(StubAdapter(), pool, 3, np.random.default_rng(0)).ids
    assert top == [1, 2, 3]
    picks = FixedScores(batch=mode, preselect=10).select(StubAdapter(), pool, 3, np.random.default_rng(0)).ids
    assert sorted(CLUSTER[i] for i in picks) == [0, 1, 2], picks
    if mode != "kcenter":  # score-anchored: the best image stays first
        assert picks[0] == 1
    if mode == "class_balanced":
        assert picks == [1, 11, 21]  # the best of each class, classes by their best score


def test_preselect_limits_the_candidates() -> None:
    """preselect 2 with budget 3: only the top 6 (all cluster 0) are candidates."""
    picks = FixedScores(batch="kcenter", preselect=2).select(StubAdapter(), _pool(), 3, np.random.default_rng(0)).ids
    assert set(picks) <= {1, 2, 3, 4, 5, 6}


def test_topk_is_todays_ranking_and_reads_no_features() -> None:
    pool = _pool()
    adapter = StubAdapter()
    for budget in (3, 30):
        got = FixedScores().select(adapter, pool, budget, np.random.default_rng(5)).ids
        assert got == rank_by_score(pool.unlabeled, SCORES, budget, np.random.default_rng(5))
    assert adapter.calls == []
    # a diverse mode with no room to choose (preselect 1) leaves the ranking as it is
    one = FixedScores(batch="kcenter", preselect=1).select(adapter, pool, 3, np.random.default_rng(5)).ids
    assert one == rank_by_score(pool.unlabeled, SCORES, 3, np.random.default_rng(5))


@pytest.mark.parametrize("mode", ["kcenter", "kmeanspp", "class_balanced"])
def test_full_ranking_for_a_box_budget_puts_the_diverse_batch_first(mode: str) -> None:
    pool = _pool()
    n = len(pool.unlabeled)
    ranked = FixedScores(batch=mode, preselect=10).select(StubAdapter(), pool, n, np.random.default_rng(0),
                                                            batch=3).ids
    assert sorted(ranked) == pool.unlabeled  # a full ranking
    head = ranked[:3]
    assert sorted(CLUSTER[i] for i in head) == [0, 1, 2]
    rest = ranked[3:]
    assert rest == sorted(rest, key=lambda i: -SCORES[i])  # the others by score
    boxes = pool.cost(head)
    assert fit_budget(ranked, pool, "boxes", boxes) == head


def test_same_seed_same_batch() -> None:
    pool = _pool()
    a = FixedScores(batch="kmeanspp", preselect=10).select(StubAdapter(), pool, 5, np.random.default_rng(3)).ids
    b = FixedScores(batch="kmeanspp", preselect=10).select(StubAdapter(), pool, 5, np.random.default_rng(3)).ids
    assert a == b


def test_kmeanspp_never_picks_a_duplicate_while_new_points_remain() -> None:
    x = np.array([[0.0, 0.0]] * 5 + [[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    for seed in range(20):
        picks = kmeanspp_seeding(x, 4, np.random.default_rng(seed))
        assert picks[0] == 0 and sorted(picks[1:]) == [5, 6, 7]
    assert kmeanspp_seeding(x, 8, np.random.default_rng(0))[4:] == [1, 2, 3, 4]  # then duplicates, in order


def test_class_round_robin_takes_turns_in_order_of_best() -> None:
    assert class_round_robin([2, 2, 0, 1, 1, 2], 5) == [0, 2, 3, 1, 4]
    assert class_round_robin([1, 1, 1], 2) == [0, 1]


def test_diverse_ranking_checks_the_chooser() -> None:
    from activedet.errors import StrategyError

    with pytest.raises(StrategyError, match="chose"):
        diverse_ranking([1, 2, 3, 4], {1: 1.0, 2: 0.5, 3: 0.2, 4: 0.1}, 2, "kcenter", 2.0, lambda c, k: [0, 0])
    # unscored ids are never candidates and stay at the end
    got = diverse_ranking([1, 2, 3, 4], {1: 1.0, 2: 0.5}, 1, "kcenter", 3.0, lambda c, k: [1])
    assert got == [2, 1, 3, 4]


def test_bad_batch_settings_are_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="'batch' = 'diverse'"):
        build_strategy("entropy", {"batch": "diverse"})
    with pytest.raises(ConfigError, match="'preselect' = 0.5"):
        build_strategy("entropy", {"preselect": 0.5})


def test_every_ranking_strategy_declares_the_batch_keys() -> None:
    ranking = {n for n, c in available().items() if c.ranks_by_score()}
    assert {"entropy", "isal", "mial", "margin", "grad_similarity"} <= ranking
    for name in ranking:
        keys = {d.key for d in available()[name].settings_type.declared()}
        assert {"batch", "preselect", "cost_aware"} <= keys, name
        # topk (the papers) everywhere but isal, whose default is measured (its settings' provenance)
        assert build_strategy(name, {}).params["batch"] == ("class_balanced" if name == "isal" else "topk")


def test_expected_images_uses_labeled_boxes_per_image() -> None:
    pool = _pool()  # id 0 labeled, cost 1
    assert expected_images(pool, 7) == 7
    pool.add([2, 5], 1)  # costs 3 and 3: 7 boxes on 3 images
    assert expected_images(pool, 14) == 6


@pytest.mark.parametrize(("name", "task", "mode"), [("entropy", "detection", "kcenter"),
                                                    ("margin", "classification", "kmeanspp"),
                                                    ("mial", "detection", "class_balanced"),
                                                    ("isal", "classification", "kcenter")])
def test_real_strategies_with_diverse_batches_keep_the_contract(name: str, task: str, mode: str) -> None:
    from tests.strategies.test_contract import _setup

    _, adapter, pool = _setup(name, task)
    before = list(pool.unlabeled)
    params = {"batch": mode, "preselect": 3.0}
    first = build_strategy(name, params).select(adapter, pool, 3, np.random.default_rng(7)).ids
    assert len(set(first)) == 3 and set(first) <= set(before)
    assert build_strategy(name, params).select(adapter, pool, 3, np.random.default_rng(7)).ids == first
    full = build_strategy(name, params).select(adapter, pool, len(before), np.random.default_rng(7), batch=3).ids
    assert sorted(full) == sorted(before)
