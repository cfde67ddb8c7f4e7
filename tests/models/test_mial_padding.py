"""Batch padding: anchors outside an image take no part in MIAL's unlabeled losses or scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activedet.data.pool import Pool
from activedet.data.stream import size_batches
from activedet.models import mial_losses as L
from activedet.models.factory import build_adapter
from activedet.models.mial_head import MIALHead
from activedet.strategies.registry import build_strategy
from tests.conftest import make_mixed_size_dataset, tiny_config

K = 3  # torchvision channels: background + 2 classes


def test_anchors_inside_uses_the_centre() -> None:
    anchors = torch.tensor([[-8.0, -8, 8, 8], [40, 0, 72, 16], [60, 20, 90, 30], [0, 60, 10, 70]])
    assert L.anchors_inside(anchors, (64, 64)).tolist() == [True, True, False, False]
    assert L.anchors_inside(anchors, (80, 96)).tolist() == [True, True, True, True]


def _outputs(levels: list[int], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = sum(levels)
    return {k: 2 * torch.randn(1, a, K, generator=g) for k in ("cls_logits", "cls_logits2", "mil_logits")}


@pytest.mark.parametrize("stage", ["min", "max"])
def test_padded_batch_losses_equal_the_sum_of_images_alone(stage: str) -> None:
    """Image A has levels [4, 2] alone; in a batch with B (levels [6, 3]) it is padded to
    [6, 3] with garbage anchors. With ``valid`` the batch losses are A's + B's."""
    head = MIALHead(8, 1, K)
    a, b = _outputs([4, 2], 0), _outputs([6, 3], 1)
    a_idx = torch.tensor([0, 1, 2, 3, 6, 7])  # where A's anchors sit among the 9 padded ones
    pad = {k: 30 * torch.randn(1, 9, K, generator=torch.Generator().manual_seed(2)) for k in a}
    for k in pad:
        pad[k][0, a_idx] = a[k][0]
    batch = {k: torch.cat([pad[k], b[k]]) for k in a}
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[0] = False
    valid[0, a_idx] = True
    kw = dict(lam=0.5, pseudo_threshold=0.5)
    got = head.unlabeled_loss(batch, stage, num_anchors_per_level=[6, 3], valid=valid, **kw)
    la = head.unlabeled_loss(a, stage, num_anchors_per_level=[4, 2], **kw)
    lb = head.unlabeled_loss(b, stage, num_anchors_per_level=[6, 3], **kw)
    torch.testing.assert_close(got["discrepancy"], la["discrepancy"] + lb["discrepancy"])
    if stage == "min":  # the MIL loss is a mean over the images of the batch
        assert float(la["mil"] + lb["mil"]) > 0
        torch.testing.assert_close(got["mil"], (la["mil"] + lb["mil"]) / 2)
    unmasked = head.unlabeled_loss(batch, stage, num_anchors_per_level=[6, 3], **kw)
    assert not torch.allclose(unmasked["discrepancy"], got["discrepancy"])  # the padding mattered


def test_size_batches_never_mix_sizes() -> None:
    ds = make_mixed_size_dataset()
    assert size_batches(ds, ds.ids, 8) == [[1, 4], [2, 6], [3], [5]]
    assert size_batches(ds, ds.ids, 1) == [[i] for i in (1, 4, 2, 6, 3, 5)]


@pytest.mark.parametrize("arch", ["retinanet", "fcos"])
@pytest.mark.parametrize("weighting", ["none", "mil"])
def test_mial_scores_of_a_mixed_size_pool_in_batches_equal_one_by_one(weighting: str, arch: str) -> None:
    ds = make_mixed_size_dataset()
    st = build_strategy("mial", {"top_k": 50, "weighting": weighting})
    st.progress = False
    ad = build_adapter(tiny_config(strategy={"name": "mial"}, **{"model.arch": arch}), 2, st)
    ad.reset(0)
    with torch.no_grad():  # f1 != f2, so discrepancies are well above float noise
        g = torch.Generator().manual_seed(0)
        for q in ad.model.head.f2.parameters():
            q.add_(0.05 * torch.randn(q.shape, generator=g))
    pool = Pool.from_dataset(ds)
    together = build_strategy("mial", {**st.params, "batch_size": 8}).score(ad, pool, ds.ids, np.random.default_rng(0))
    alone = build_strategy("mial", {**st.params, "batch_size": 1}).score(ad, pool, ds.ids, np.random.default_rng(0))
    assert set(together) == set(ds.ids)
    for i in ds.ids:
        assert together[i] == pytest.approx(alone[i], rel=1e-4), i
