"""Round 0 without labels (``loop.initial_strategy``): typicality and TypiClust order on
hand-made points, k-center on them, ImageNet embeddings, and a simulate run that uses it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from activedet.config import config_from_dict
from activedet.errors import ConfigError
from activedet.strategies import cold_start


def test_typicality_by_hand() -> None:
    x = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [10.0, 10.0]])
    t = cold_start.typicality(x, k=2)
    # row 0: nearest two at 1, 1 -> 1 / 1; row 1: 1 (row 0) and sqrt(2) (row 2)
    assert t[0] == pytest.approx(1.0) and t[1] == pytest.approx(1 / ((1 + math.sqrt(2)) / 2))
    assert t[3] == pytest.approx(1 / ((math.dist((10, 10), (0, 1)) + math.dist((10, 10), (1, 0))) / 2))
    assert cold_start.typicality(x[:1]).tolist() == [math.inf]


def test_typiclust_takes_the_centre_of_each_cluster_largest_first() -> None:
    ring = np.array([[math.cos(a), math.sin(a)] for a in np.linspace(0, 2 * math.pi, 8, endpoint=False)])
    big = np.vstack([[0.0, 0.0], 0.5 * ring, ring])  # 17 points around (0, 0): the centre is most typical
    mid = np.vstack([[20.0, 0.0], [20.0, 0.0] + 0.5 * ring])  # 9 points
    small = np.array([[0.0, 30.0], [0.2, 30.0], [-0.2, 30.0]])  # 3 points, centre (0, 30) at index 0
    x = np.vstack([big, mid, small])
    order = cold_start.typiclust(x, budget=3, seed=0)
    assert order[:3] == [0, 17, 26]  # each cluster's centre, the largest cluster first
    assert sorted(order) == list(range(len(x)))  # then every other row
    assert order[3] in range(1, 17)  # round robin: the big cluster's next most typical


def test_rank_kcenter_random_and_bad_names() -> None:
    class Tiny:  # a dataset of a few flat-colour images
        def __init__(self, colours):
            self.colours = colours

        def load_image(self, i):
            import torch

            return torch.tensor(self.colours[i], dtype=torch.float32).view(3, 1, 1).expand(3, 32, 32).clone()

    colours = {0: (1, 0, 0), 1: (0.98, 0, 0), 2: (0, 0, 1), 3: (0, 0, 0.97), 4: (0, 1, 0)}
    ds = Tiny(colours)
    x = cold_start.embed(ds, [0, 1, 2, 3, 4])
    assert x.shape == (5, 1280) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(x, cold_start.embed(ds, [0, 1, 2, 3, 4]))  # deterministic
    order = cold_start.rank("kcenter", ds, [0, 1, 2, 3, 4], 3, np.random.default_rng(1))
    assert len(set(order)) == 5
    hues = [max(range(3), key=lambda k: colours[i][k]) for i in order[:3]]
    assert sorted(hues) == [0, 1, 2]  # one red, one green, one blue: the three far-apart kinds
    rnd = cold_start.rank("random", ds, [0, 1, 2, 3, 4], 3, np.random.default_rng(1))
    assert rnd == [[0, 1, 2, 3, 4][i] for i in np.random.default_rng(1).permutation(5)]
    with pytest.raises(ConfigError, match="initial_strategy"):
        cold_start.rank("best", ds, [0, 1], 1, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="loop.initial_strategy"):
        config_from_dict({"dataset": {"train": "builtin:digits"}, "loop": {"initial_strategy": "best"}})


def test_simulate_with_a_typical_round_zero(tmp_path) -> None:
    from activedet.loop.ledger import Ledger
    from activedet.loop.runner import run

    def cfg(initial):
        return config_from_dict({
            "task": "classification", "device": "cpu", "seed": 0,
            "dataset": {"train": "builtin:digits", "options": {"size": 16, "n_train": 120, "n_test": 60}},
            "model": {"arch": "small_cnn", "image_size": 16}, "train": {"epochs": 1, "batch_size": 32, "hflip": False},
            "loop": {"initial": 10, "per_cycle": 10, "cycles": 1, "initial_strategy": initial},
            "strategy": {"name": "random"}})

    run(cfg("typical"), tmp_path / "typ", progress=False)
    run(cfg("random"), tmp_path / "rnd", progress=False)
    with Ledger(tmp_path / "typ") as a, Ledger(tmp_path / "rnd") as b:
        typ, rnd = a.rounds()[0]["selected"], b.rounds()[0]["selected"]
    assert len(typ) == 10 and typ != rnd
    from activedet.data.builtin import load_builtin

    digits = load_builtin("digits", "train", {"size": 16, "n_train": 120, "n_test": 60})
    covered = {digits.record(i).label for i in typ}
    assert len(covered) >= 6  # ten clusters of ImageNet features of digits cover most classes
