"""The contract every registered strategy keeps (DESIGN.md), checked over the whole registry.

For each strategy and each task it declares: on a small pool with an untrained model of an
architecture it supports, ``select`` returns ``budget`` distinct unlabeled ids, the same
ids for the same seed, raises ``PoolExhaustedError`` when asked for more than the pool
holds, and returns only finite scores in its ``Selection``. A strategy is never skipped: a
new one that cannot run here fails this test until it can.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from activedet.data.base import ClassificationDataset, ImageRecord
from activedet.data.pool import Pool
from activedet.errors import PoolExhaustedError, StrategyError
from activedet.models.factory import build_adapter
from activedet.strategies.base import rank_by_score
from activedet.strategies.registry import available, build_strategy
from tests.conftest import make_detection_dataset, tiny_config

DETECTION_ARCH_PREFERENCE = ("retinanet", "fcos", "faster_rcnn")
CLASSIFICATION_ARCH_PREFERENCE = ("small_cnn", "resnet18")


def _classification_dataset(n: int, seed: int = 0) -> ClassificationDataset:
    rng = np.random.default_rng(seed)
    records = []
    for k in range(n):
        label = k % 3
        img = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
        img[:, :, label] += 120  # a learnable colour cue
        records.append(ImageRecord(id=k + 1, file_name=f"{k + 1}.png", width=32, height=32,
                                   boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                                   array=img, label=label))
    return ClassificationDataset(records, ["a", "b", "c"], name="tiny-cls")


def _cases() -> list[tuple[str, str]]:
    return [(name, task) for name, cls in available().items() for task in cls.tasks]


def _arch(cls, task: str) -> str:
    prefs = DETECTION_ARCH_PREFERENCE if task == "detection" else CLASSIFICATION_ARCH_PREFERENCE
    for arch in prefs:
        if cls.archs is None or arch in cls.archs:
            return arch
    raise AssertionError(f"strategy {cls.name} supports none of {prefs} for {task}: {cls.archs}")


def _setup(name: str, task: str):
    cls = available()[name]
    arch = _arch(cls, task)
    if task == "detection":
        data = make_detection_dataset(n=14, size=64, num_classes=2, seed=3)
        reference = make_detection_dataset(n=4, size=64, num_classes=2, seed=4, start_id=101)
        cfg = tiny_config(**{"model.arch": arch, "loop.initial": 4})
    else:
        data = _classification_dataset(14)
        reference = _classification_dataset(4, seed=1)
        cfg = tiny_config(task="classification", **{"model.arch": arch, "model.image_size": 32,
                                                    "model.pretrained": False})
    strategy = build_strategy(name, {})
    strategy.check_model(task, arch)
    adapter = build_adapter(cfg, data.num_classes, strategy)
    adapter.reset(0)
    pool = Pool.from_dataset(data)
    pool.reference = reference
    pool.add(pool.ids[:4], 0)
    return strategy, adapter, pool


@pytest.mark.parametrize(("name", "task"), _cases())
def test_strategy_contract(name: str, task: str) -> None:
    strategy, adapter, pool = _setup(name, task)
    before = list(pool.unlabeled)
    budget = 3
    chosen = strategy.select(adapter, pool, budget, np.random.default_rng(7))
    first = chosen.ids
    assert len(first) == budget and len(set(first)) == budget
    assert set(first) <= set(before), "selected ids must be unlabeled pool ids"
    assert pool.unlabeled == before, "select must not label anything"
    scores = chosen.scores
    assert scores is not None, "select must leave the scores it computed (possibly empty)"
    assert set(scores) <= set(before)
    assert all(math.isfinite(v) for v in scores.values())

    again = build_strategy(name, {}).select(adapter, pool, budget, np.random.default_rng(7)).ids
    assert again == first, "same seed, same model, same pool -> same selection"

    with pytest.raises(PoolExhaustedError):
        strategy.select(adapter, pool, len(before) + 1, np.random.default_rng(7)).ids


def test_registry_is_not_empty_and_lists_both_tasks() -> None:
    cases = _cases()
    assert {"random", "entropy"} <= {n for n, _ in cases}
    assert {t for _, t in cases} == {"detection", "classification"}


def test_nan_scores_are_refused_not_ranked() -> None:
    with pytest.raises(StrategyError, match="non-finite score nan for image id 2"):
        rank_by_score([1, 2, 3], {1: 0.5, 2: float("nan")}, 2, np.random.default_rng(0))


def test_unscored_images_fill_after_scored_ones() -> None:
    ranked = rank_by_score([1, 2, 3, 4, 5], {4: 0.1, 2: 0.9}, 4, np.random.default_rng(0))
    assert ranked[:2] == [2, 4]
    assert set(ranked[2:]) <= {1, 3, 5} and len(set(ranked)) == 4
