"""PPAL (strategies/ppal.py): its maths against values worked out by hand on small arrays,
and the strategy on the three detector families' outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from activedet.data.pool import Pool
from activedet.errors import StrategyError
from activedet.models.detection_adapter import anchor_features
from activedet.models.factory import build_adapter
from activedet.strategies.base import Selection, Strategy
from activedet.strategies.ppal import (binary_entropy, box_quality, class_quality, dcus_score, difficulty_weights,
                                       kmeanspp_medoids, matching_distances, stack_detections, _Dets)
from activedet.strategies.registry import build_strategy
from tests.conftest import make_detection_dataset, tiny_config


def test_difficulty_weights_by_hand() -> None:
    # alpha 0.5: b = e^2 - 1; q = 0: 1 + 0.5 * 0.2 * log(e^2) = 1.2; q = 1: 1;
    # q = 0.5: 1 + 0.1 * log((e^2 - 1) / 2 + 1) = 1 + 0.1 * log(4.194528) = 1 + 0.1 * 1.4337808 = 1.1433781
    w = difficulty_weights(np.array([0.0, 1.0, 0.5]), alpha=0.5, upper=0.2)
    assert w == pytest.approx([1.2, 1.0, 1.1433781], abs=1e-6)
    # harder classes weigh more, whatever alpha
    assert np.all(np.diff(difficulty_weights(np.linspace(0, 1, 5), 0.3, 0.2)) < 0)


def test_dcus_score_by_hand() -> None:
    assert binary_entropy(np.array([0.5, 0.0, 1.0])) == pytest.approx([math.log(2), 0.0, 0.0], abs=1e-8)
    # detections 1 and 2 count (score >= 0.05): 1.2 H(0.5) + 1.0 H(0.9)
    #   H(0.9) = 0.9 * 0.1053605 + 0.1 * 2.3025851 = 0.3250830; 1.2 * 0.6931472 = 0.8317766
    got = dcus_score(np.array([0.5, 0.9, 0.2]), np.array([1, 2, 1]), np.array([0.6, 0.9, 0.01]),
                     np.array([1.2, 1.0]), 0.05)
    assert got == pytest.approx(1.1568596, abs=1e-6)
    assert dcus_score(np.zeros(0), np.zeros(0, np.int64), np.zeros(0), np.array([1.0]), 0.05) == 0.0


def test_box_and_class_quality_by_hand() -> None:
    gt = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]])  # IoU 1, 0.5, 0 with gt 0
    probs = torch.tensor([[0.64, 0.1], [0.25, 0.9], [0.99, 0.99]])
    # xi 0.5: sqrt(0.64) * 1 = 0.8 and sqrt(0.25) * sqrt(0.5) = 0.3535534; mean 0.5767767
    # gt 1 (label 2) is covered by no detection: 0
    q = box_quality(gt, torch.tensor([1, 2]), boxes, probs, xi=0.5, match_iou=0.5)
    assert q.tolist() == pytest.approx([0.5767767, 0.0], abs=1e-6)
    assert box_quality(gt, torch.tensor([1, 2]), boxes[:0], probs[:0], 0.5, 0.5).tolist() == [0.0, 0.0]
    # class 1: mean of 0.5767767 and 0.2; class 2: 0; class 3: no box -> 0
    got = class_quality([q.numpy(), np.array([0.2])], [np.array([1, 2]), np.array([1])], 3)
    assert got == pytest.approx([(0.5767767 + 0.2) / 2, 0.0, 0.0], abs=1e-6)


def test_matching_distances_by_hand() -> None:
    dets = [_Dets(np.array([1, 2]), np.array([1.0, 0.5]), np.array([[1.0, 0.0], [0.0, 1.0]])),
            _Dets(np.array([1]), np.array([0.8]), np.array([[1.0, 1.0]])),
            _Dets(np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 2)))]
    d = matching_distances(*stack_detections(dets))
    # image 0 -> 1: a matches c at 1 - cos 45 = 0.2928932, b (label 2) has no match: 2;
    #   (1.0 * 0.2928932 + 0.5 * 2) / 1.5 = 0.8619288; image 1 -> 0: 0.2928932
    assert d[0, 1] == pytest.approx((0.8619288 + 0.2928932) / 2, abs=1e-6)
    assert d[1, 0] == d[0, 1] and d[0, 0] == d[1, 1] == d[2, 2] == 0.0
    assert d[0, 2] == d[2, 0] == d[1, 2] == 2.0  # an image without detections


def test_kmeanspp_medoids_by_hand() -> None:
    x = np.array([0.0, 1.0, 10.0, 11.0, 12.0])
    dist = np.abs(x[:, None] - x[None, :])
    # one medoid: the point with the smallest summed distance (10: 10 + 9 + 1 + 2 = 22)
    assert kmeanspp_medoids(dist, 1, np.random.default_rng(0)) == [2]
    # two: one per cluster ({0, 1}: ties go to the first; {10, 11, 12}: 11), whatever the seed
    for seed in range(20):
        assert sorted(kmeanspp_medoids(dist, 2, np.random.default_rng(seed))) == [0, 3]
    assert kmeanspp_medoids(dist, 2, np.random.default_rng(5)) == kmeanspp_medoids(dist, 2, np.random.default_rng(5))
    assert kmeanspp_medoids(dist, 9, np.random.default_rng(0)) == [0, 1, 2, 3, 4]


def test_anchor_features_pick_the_anchor_location() -> None:
    maps = [torch.arange(8.0).reshape(2, 2, 2), torch.tensor([[[100.0]], [[200.0]]])]
    # level 0: 2 x 2 locations x 2 anchors = 8; anchor 5 is location 2 (row 1, col 0); anchor 9: level 1
    got = anchor_features(maps, torch.tensor([5, 9, 0]), [8, 2])
    assert got.tolist() == [[2.0, 6.0], [100.0, 200.0], [0.0, 4.0]]


def test_a_strategy_wanting_what_the_model_lacks_is_refused_by_name() -> None:
    class Wants(Strategy):
        name = "wants_boxes"
        wants = frozenset({"box_features"})

    Wants().check_model("detection", "fcos")
    with pytest.raises(StrategyError, match="'box_features'.*'small_cnn'"):
        Wants().check_model("classification", "small_cnn")


@pytest.mark.parametrize("arch", ["retinanet", "fcos", "faster_rcnn"])
def test_ppal_selects_on_every_detector_family(arch: str) -> None:
    data = make_detection_dataset(n=14, size=64, num_classes=2, seed=3)
    strategy = build_strategy("ppal", {"min_score": 0.0, "pool_ratio": 2.0})
    strategy.check_model("detection", arch)
    adapter = build_adapter(tiny_config(**{"model.arch": arch}), data.num_classes, strategy)
    adapter.reset(0)
    for inf in adapter.infer(data, data.ids[:3], 3, keep_anchors=False):
        assert inf.extra["box_features"].shape[0] == len(inf.boxes)
    pool = Pool.from_dataset(data)
    pool.add(pool.ids[:4], 0)
    first = strategy.select(adapter, pool, 3, np.random.default_rng(7))
    assert isinstance(first, Selection) and len(set(first.ids)) == 3 and set(first.ids) <= set(pool.unlabeled)
    assert set(first.scores) == set(pool.unlabeled) and all(math.isfinite(v) for v in first.scores.values())
    assert first.info["candidates"] == 6 and len(first.info["class_quality"]) == 2
    assert build_strategy("ppal", {"min_score": 0.0, "pool_ratio": 2.0}).select(
        adapter, pool, 3, np.random.default_rng(7)) == first


def test_prepare_refuses_a_missing_output_by_name_before_loading_anything(monkeypatch) -> None:
    """The loop checks ``wants`` against the model's capabilities in ``prepare``, before any
    data is read or a model built (the dataset path below does not exist)."""
    from activedet.loop.runner import prepare
    from activedet.strategies import registry

    class WantsBoxes(Strategy):
        name = "wants_boxes"
        wants = frozenset({"box_features"})

    monkeypatch.setitem(registry._REGISTRY, "wants_boxes", WantsBoxes)
    cfg = tiny_config(task="classification", dataset={"train": "/nonexistent/none.json"},
                      model={"arch": "small_cnn", "image_size": 16}, strategy={"name": "wants_boxes"})
    with pytest.raises(StrategyError, match="strategy 'wants_boxes' needs the model output 'box_features'"):
        prepare(cfg)
