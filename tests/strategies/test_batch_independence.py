"""On a pool of mixed image sizes an image's outputs and scores do not depend on its
batch-mates: a detector pads a batch to its largest image, so every scoring path runs
batches of one image size (:func:`activedet.data.stream.size_batches`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activedet.data.pool import Pool
from activedet.models.detection_adapter import DetectionAdapter
from activedet.models.factory import build_adapter
from activedet.models.learning_loss import predict_losses
from activedet.strategies.cdal import cdal_features
from activedet.strategies.registry import build_strategy
from tests.conftest import make_mixed_size_dataset, tiny_config

IDS = [6, 1, 3, 2, 5, 4]  # four sizes, interleaved


def _adapter(arch: str) -> DetectionAdapter:
    """An untrained detector whose dense head emits detections with tie-free scores."""
    ad = DetectionAdapter(tiny_config(**{"model.arch": arch}).model, 2)
    ad.reset(0)
    head = getattr(getattr(ad.model, "head", None), "classification_head", None)
    if head is not None:
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            for p in head.parameters():
                p.copy_(0.03 * torch.randn(p.shape, generator=g))
    return ad


@pytest.mark.parametrize("arch", ["retinanet", "fcos", "faster_rcnn"])
def test_inference_of_a_mixed_size_pool_in_batches_equals_one_by_one(arch: str) -> None:
    ds = make_mixed_size_dataset()
    ad = _adapter(arch)
    together = {inf.image_id: inf for inf in ad.infer(ds, IDS, batch_size=8)}
    assert sorted(together) == sorted(IDS)
    assert sum(len(inf.boxes) for inf in together.values()) > 0
    for i in IDS:
        alone = next(iter(ad.infer(ds, [i], batch_size=1)))
        got = together[i]
        torch.testing.assert_close(got.boxes, alone.boxes, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got.scores, alone.scores, rtol=1e-5, atol=1e-6)
        assert torch.equal(got.labels, alone.labels)
        torch.testing.assert_close(got.probs, alone.probs, rtol=1e-5, atol=1e-6)
        for key in ("cls_logits", "anchors", "valid"):  # dense heads: every anchor's outputs
            if key in alone.extra:
                torch.testing.assert_close(got.extra[key], alone.extra[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,params", [("entropy", {}), ("localization_stability", {"noise_levels": [16.0]}),
                                         ("isal", {"depth": 2, "repeats": 1, "reference": "labeled"})])
def test_scores_of_a_mixed_size_pool_in_batches_equal_one_by_one(name: str, params: dict) -> None:
    ds = make_mixed_size_dataset()
    st = build_strategy(name, params)
    st.progress = False
    ad = _adapter("fcos")
    pool = Pool.from_dataset(ds)
    pool.add([1, 2], 0)  # ISAL's reference and Hessian: two labeled images of different sizes
    scores = {}
    for bs in (8, 1):
        st.params["batch_size"] = bs
        scores[bs] = st.score(ad, pool, pool.unlabeled, np.random.default_rng(0))
    assert len(scores[8]) >= 2 and set(scores[8]) == set(scores[1])
    # (an untrained FCOS emits boxes clipped to zero area at the border: no reference box)
    assert all(np.isfinite(v) for v in scores[8].values())
    for i in scores[8]:
        assert scores[8][i] == pytest.approx(scores[1][i], rel=1e-4, abs=1e-9), i


def test_cdal_features_and_predicted_losses_come_in_the_order_asked_and_alone() -> None:
    ds = make_mixed_size_dataset()
    ad = _adapter("retinanet")
    together = cdal_features(ad, ds, IDS, 0.0, batch_size=8)
    alone = torch.cat([cdal_features(ad, ds, [i], 0.0, batch_size=1) for i in IDS])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert together.abs().sum() > 0

    st = build_strategy("learning_loss")
    ll = build_adapter(tiny_config(strategy={"name": "learning_loss"}), 2, st)
    ll.reset(0)
    together = predict_losses(ll, ds, IDS, batch_size=8)
    alone = np.concatenate([predict_losses(ll, ds, [i], batch_size=1) for i in IDS])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(together, 6).tolist())) > 1
