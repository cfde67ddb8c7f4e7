"""On a pool of mixed image sizes an image's outputs and scores do not depend on its
batch-mates: a detector pads a batch to its largest image, so every scoring path runs
batches of images that the model's transform resizes to one size
(:meth:`activedet.models.detection_adapter.DetectionAdapter.batches`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activedet.data.base import DetectionDataset, ImageRecord
from activedet.data.pool import Pool
from activedet.models.detection_adapter import DetectionAdapter, detection_adapter
from activedet.models.factory import build_adapter
from activedet.models.learning_loss import predict_losses
from activedet.strategies.cdal import cdal_features
from activedet.strategies.registry import build_strategy
from tests.conftest import make_mixed_size_dataset, tiny_config

IDS = [6, 1, 3, 2, 5, 4]  # four sizes, interleaved


def _adapter(arch: str) -> DetectionAdapter:
    """An untrained detector whose dense head gives tie-free scores and boxes: every head
    weight and bias random. (At torchvision's initialisation the box outputs sit at 0, so
    boxes are aligned with the anchor grid and FCOS's centre sampling of pseudo boxes ties;
    the float noise of a batched convolution then flips matches and gradients.)"""
    ad = detection_adapter(tiny_config(**{"model.arch": arch}).model, 2)
    ad.reset(0)
    head = getattr(ad.model, "head", None)
    if hasattr(head, "classification_head"):
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            for p in head.parameters():
                p.copy_(0.03 * torch.randn(p.shape, generator=g))
    return ad


def _rescaled_pool() -> DetectionDataset:
    """Ids 1..6 of :func:`make_mixed_size_dataset`, and 7 and 8: ids 1 and 5 at twice their size."""
    ds = make_mixed_size_dataset()
    recs = [ds.record(i) for i in ds.ids]
    for new, old in ((7, 1), (8, 5)):
        r = ds.record(old)
        big = np.repeat(np.repeat(r.array, 2, axis=0), 2, axis=1)
        recs.append(ImageRecord(id=new, file_name=f"{new}.png", width=2 * r.width, height=2 * r.height,
                                boxes=2 * r.boxes, labels=r.labels, array=big))
    return DetectionDataset(recs, ["a", "b"], name="rescaled")


def test_images_the_transform_resizes_alike_share_batches() -> None:
    """At image_size 64 (longer side at most 106.7): 128x128 runs as 64x64 like 64x64, and
    128x256 as 53x107 like 64x128; 64x160 runs as 42x107, 96x64 as it is."""
    ds = _rescaled_pool()
    ad = _adapter("retinanet")
    sizes = {i: ad.input_size(ds.record(i).height, ds.record(i).width) for i in ds.ids}
    assert sizes == {1: (64, 64), 4: (64, 64), 7: (64, 64), 2: (42, 107), 6: (42, 107), 3: (96, 64),
                     5: (53, 107), 8: (53, 107)}
    ad.model.eval()
    for i in ds.ids:  # what the model's transform really does
        image_list, _ = ad.model.transform([ds.load_image(i)])
        assert tuple(image_list.image_sizes[0]) == sizes[i]
    assert ad.batches(ds, ds.ids, 8) == [[1, 4, 7], [2, 6], [3], [5, 8]]
    assert ad.batches(ds, ds.ids, 2) == [[1, 4], [7], [2, 6], [3], [5, 8]]


@pytest.mark.parametrize("arch", ["retinanet", "fcos", "faster_rcnn"])
def test_inference_of_a_mixed_size_pool_in_batches_equals_one_by_one(arch: str) -> None:
    ds = _rescaled_pool()
    ad = _adapter(arch)
    ids = IDS + [8, 7]
    together = {inf.image_id: inf for inf in ad.infer(ds, ids, batch_size=8)}
    assert sorted(together) == sorted(ids)
    assert sum(len(inf.boxes) for inf in together.values()) > 0
    for i in ids:
        alone = next(iter(ad.infer(ds, [i], batch_size=1)))
        got = together[i]
        torch.testing.assert_close(got.boxes, alone.boxes, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got.scores, alone.scores, rtol=1e-5, atol=1e-6)
        assert torch.equal(got.labels, alone.labels)
        torch.testing.assert_close(got.probs, alone.probs, rtol=1e-5, atol=1e-6)
        for key in ("cls_logits", "anchors", "valid"):  # dense heads: every anchor's outputs
            if key in alone.extra:
                torch.testing.assert_close(got.extra[key], alone.extra[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,params,rel", [
    ("entropy", {}, 1e-4), ("localization_stability", {"noise_levels": [16.0]}, 1e-4),
    # ISAL: batched and single convolutions differ by float noise, which moves near-tied pseudo
    # boxes of an untrained detector and FCOS's centre-sampling matches: scores agree to 0.2 %.
    # With mixed-size batches (padding) they differed by factors of 2.6 to 17.
    ("isal", {"depth": 2, "repeats": 1, "reference": "labeled"}, 1e-2),
    ("isal", {"depth": 2, "repeats": 1, "reference": "labeled", "batched": False}, 1e-2)])
def test_scores_of_a_mixed_size_pool_in_batches_equal_one_by_one(name: str, params: dict, rel: float) -> None:
    ds = _rescaled_pool()
    ad = _adapter("fcos")
    pool = Pool.from_dataset(ds)
    pool.add([1, 2], 0)  # ISAL's reference and Hessian: two labeled images of different sizes
    scores = {}
    for bs in (8, 1):
        st = build_strategy(name, {**params, "batch_size": bs})
        st.progress = False
        scores[bs] = st.score(ad, pool, pool.unlabeled, np.random.default_rng(0))
    assert len(scores[8]) >= 2 and set(scores[8]) == set(scores[1])
    # (an untrained FCOS emits boxes clipped to zero area at the border: inference drops them)
    assert all(np.isfinite(v) for v in scores[8].values())
    for i in scores[8]:
        assert scores[8][i] == pytest.approx(scores[1][i], rel=rel, abs=1e-9), i


def test_cdal_features_and_predicted_losses_come_in_the_order_asked_and_alone() -> None:
    ds, ids = _rescaled_pool(), IDS + [8, 7]
    ad = _adapter("retinanet")
    together = cdal_features(ad, ds, ids, 0.0, batch_size=8)
    alone = torch.cat([cdal_features(ad, ds, [i], 0.0, batch_size=1) for i in ids])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert together.abs().sum() > 0

    st = build_strategy("learning_loss")
    ll = build_adapter(tiny_config(strategy={"name": "learning_loss"}), 2, st)
    ll.reset(0)
    together = predict_losses(ll, ds, ids, batch_size=8)
    alone = np.concatenate([predict_losses(ll, ds, [i], batch_size=1) for i in ids])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(together, 6).tolist())) > 1
