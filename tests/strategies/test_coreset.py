"""k-center greedy (core-set) against a brute-force reference with the full distance matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activedet.errors import StrategyError
from activedet.strategies.coreset import k_center_greedy, min_distances


def brute_force_k_center(x: np.ndarray, labeled: np.ndarray, budget: int) -> tuple[list[int], list[float]]:
    """Textbook greedy: full N×N matrix of direct differences, max over min distances."""
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # (N, N) squared distances
    centers = list(np.flatnonzero(labeled))
    picks, gains = [], []
    for _ in range(budget):
        best, best_d = -1, -1.0
        for i in range(len(x)):
            if i in centers:
                continue
            di = min(d[i, c] for c in centers)
            if di > best_d:  # strict: ties go to the lowest index
                best, best_d = i, di
        picks.append(best)
        gains.append(best_d)
        centers.append(best)
    return picks, gains


@pytest.mark.parametrize("seed,n,dim,n_labeled,chunk", [(0, 60, 5, 6, 7), (1, 90, 16, 1, 1000), (2, 41, 3, 20, 4)])
def test_k_center_greedy_matches_brute_force(seed: int, n: int, dim: int, n_labeled: int, chunk: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    labeled = np.zeros(n, dtype=bool)
    labeled[rng.choice(n, n_labeled, replace=False)] = True
    budget = 15
    picks, gains = k_center_greedy(x, labeled, budget, np.random.default_rng(99), chunk_size=chunk)
    ref_picks, ref_gains = brute_force_k_center(x, labeled, budget)
    assert picks == ref_picks  # same picks in the same order
    np.testing.assert_allclose(gains, ref_gains, rtol=1e-9, atol=1e-9)
    assert all(a >= b - 1e-12 for a, b in zip(gains, gains[1:])), "greedy gains never increase"
    assert not set(picks) & set(np.flatnonzero(labeled))


@pytest.mark.parametrize("chunk", [3, 2048])
def test_float32_features_are_not_copied_and_pick_as_float64(chunk: int) -> None:
    """Features held as float32 (as models return them): distances are float64 block by
    block, so the picks are the brute force's on the same values in float64."""
    rng = np.random.default_rng(7)
    x32 = rng.normal(size=(300, 24)).astype(np.float32)
    labeled = np.zeros(300, dtype=bool)
    labeled[rng.choice(300, 4, replace=False)] = True
    picks, gains = k_center_greedy(x32, labeled, 12, np.random.default_rng(0), chunk_size=chunk)
    ref_picks, ref_gains = brute_force_k_center(x32.astype(np.float64), labeled, 12)
    assert picks == ref_picks
    np.testing.assert_allclose(gains, ref_gains, rtol=1e-9)
    x = torch.from_numpy(x32)
    c = x[:5].to(torch.float64)
    full = torch.cdist(x.to(torch.float64), c).pow(2).min(1).values
    torch.testing.assert_close(min_distances(x, c, chunk), full)  # float32 in, float64 out


def test_min_distances_chunked_equals_full() -> None:
    rng = np.random.default_rng(3)
    x, c = torch.tensor(rng.normal(size=(37, 4))), torch.tensor(rng.normal(size=(11, 4)))
    full = torch.cdist(x, c).pow(2).min(1).values
    for chunk in (1, 5, 64):
        torch.testing.assert_close(min_distances(x, c, chunk), full)
    assert torch.isinf(min_distances(x, c[:0], 8)).all()


def test_no_labeled_first_pick_from_rng_then_greedy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2))
    none = np.zeros(30, dtype=bool)
    a, _ = k_center_greedy(x, none, 5, np.random.default_rng(1))
    b, _ = k_center_greedy(x, none, 5, np.random.default_rng(1))
    assert a == b and len(set(a)) == 5
    first = np.zeros(30, dtype=bool)
    first[a[0]] = True
    assert a[1:] == brute_force_k_center(x, first, 4)[0]


def test_duplicate_features_never_repeat_a_pick() -> None:
    x = np.zeros((6, 3))
    labeled = np.array([True, False, False, False, False, False])
    picks, _ = k_center_greedy(x, labeled, 5, np.random.default_rng(0))
    assert sorted(picks) == [1, 2, 3, 4, 5]
    with pytest.raises(StrategyError, match="only 5 rows are free"):
        k_center_greedy(x, labeled, 6, np.random.default_rng(0))


class _Recording:
    """An adapter whose features are a seeded table; it records the keywords it was asked with."""

    def __init__(self, task: str) -> None:
        self.task, self.calls = task, []

    def features(self, dataset, ids, batch_size=8, **kw):
        self.calls.append(kw)
        return np.random.default_rng(0).normal(size=(10, 3))[[i - 1 for i in ids]]


@pytest.mark.parametrize("task,params,expected", [
    ("detection", {}, {"pooling": "foreground"}),
    ("detection", {"pooling": "mean"}, {"pooling": "mean"}),
    ("classification", {}, {}),  # classifiers: the penultimate layer, no pooling choice
])
def test_coreset_asks_detectors_for_its_pooling(task: str, params: dict, expected: dict) -> None:
    from activedet.data.pool import Pool
    from activedet.strategies.registry import build_strategy

    pool = Pool(list(range(1, 11)), {i: 1 for i in range(1, 11)}, None)
    pool.add([1, 2], 0)
    adapter = _Recording(task)
    picks = build_strategy("coreset", params).select(adapter, pool, 3, np.random.default_rng(0)).ids
    assert len(set(picks)) == 3 and not set(picks) & {1, 2}
    assert adapter.calls and all(kw == expected for kw in adapter.calls)
