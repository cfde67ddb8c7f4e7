"""Localization stability: box/image stability maths and seeded noise."""

from __future__ import annotations

import math

import numpy as np
import torch

from activedet.data.pool import Pool
from activedet.models.base import Inference
from activedet.strategies import build_strategy
from activedet.strategies.localization_stability import NoisyView, box_stability, image_stability
from tests.conftest import make_detection_dataset


def test_box_stability_mean_best_iou_over_levels() -> None:
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    lvl1 = torch.tensor([[0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    lvl2 = torch.zeros((0, 4))
    lvl3 = torch.tensor([[20.0, 20.0, 30.0, 25.0]])
    s = box_stability(ref, [lvl1, lvl2, lvl3])
    # box 0: IoU 1 (level 1), 0 (none), 0 (disjoint); box 1: 0, 0, 0.5
    torch.testing.assert_close(s, torch.tensor([1 / 3, 0.5 / 3], dtype=torch.float64))
    w = torch.tensor([0.9, 0.3])
    assert math.isclose(image_stability(s, w), (0.9 / 3 + 0.3 * 0.5 / 3) / 1.2, rel_tol=1e-6)
    assert image_stability(torch.zeros(0), torch.zeros(0)) is None


def test_noisy_view_is_seeded_per_image_and_clamped() -> None:
    ds = make_detection_dataset(n=3)
    a, b = NoisyView(ds, 0.1, 7), NoisyView(ds, 0.1, 7)
    assert torch.equal(a.load_image(1), b.load_image(1))
    assert not torch.equal(a.load_image(1), NoisyView(ds, 0.1, 8).load_image(1))
    img = a.load_image(2)
    assert img.min() >= 0 and img.max() <= 1
    assert float((img - ds.load_image(2)).abs().mean()) > 0.02


class ShakyDetector:
    """Clean images: one box per image. Noisy images: the box shifts by an amount that
    depends on the image (image 1 barely moves, image 2 moves a lot, image 3 has no box)."""

    task = "detection"
    shift = {1: 0.5, 2: 6.0, 3: 0.0}

    def infer(self, dataset, ids, batch_size=8, progress=False, keep_anchors=True):
        noisy = isinstance(dataset, NoisyView)
        for i in ids:
            if i == 3:
                yield Inference(i, torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros((0, 1)))
                continue
            dx = self.shift[i] if noisy else 0.0
            box = torch.tensor([[10.0 + dx, 10.0, 30.0 + dx, 30.0]])
            yield Inference(i, box, torch.tensor([0.8]), torch.tensor([1]), torch.tensor([[0.8]]))


def test_less_stable_images_score_higher() -> None:
    ds = make_detection_dataset(n=3)
    s = build_strategy("localization_stability", {"noise_levels": [8, 16]})
    chosen = s.select(ShakyDetector(), Pool([1, 2, 3], dataset=ds), 3, np.random.default_rng(0))
    ids = chosen.ids
    assert ids[:2] == [2, 1] and ids[2] == 3  # image 3 (no detection) unscored, last
    iou1 = (19.5 * 20) / (20.5 * 20)
    assert math.isclose(chosen.scores[1], 1 - iou1, rel_tol=1e-6)
    assert set(chosen.scores) == {1, 2}
