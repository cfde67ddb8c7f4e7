"""``model.fg_normalizer: ema``: RetinaNet's and FCOS's losses over a running foreground
count, checked against the focal loss and L1 written out by hand."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from activedet.config import ModelConfig
from activedet.models.detection import EMAFCOSHead, EMARetinaNetHead, build_detector


def focal(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """The focal loss summed, from its definition (Lin et al. 2017)."""
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    ce = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p))
    a_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (a_t * (1 - p_t) ** gamma * ce).sum()


def test_retinanet_losses_are_batch_sums_over_the_running_normaliser() -> None:
    torch.manual_seed(0)
    head = EMARetinaNetHead(8, 1, 3)
    a, c = 6, 3
    logits = torch.randn(2, a, c)
    deltas = torch.randn(2, a, 4)
    anchors = [torch.tensor([[0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 20, 20], [10, 10, 30, 30],
                             [2, 2, 8, 8], [0, 5, 10, 25]], dtype=torch.float32)] * 2
    targets = [{"boxes": torch.tensor([[1.0, 1.0, 11.0, 11.0], [9.0, 9.0, 29.0, 31.0]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}]  # an empty image
    matched = [torch.tensor([0, -2, -1, 1, 0, -1]), torch.full((a,), -1)]  # -2: between thresholds (ignored)
    outputs = {"cls_logits": logits, "bbox_regression": deltas}
    head.train()
    got = head.compute_loss(targets, outputs, anchors, matched)
    z = 0.9 * 100 + 0.1 * 3  # 3 foreground anchors in the batch
    assert head.fg_normalizer == pytest.approx(z)

    cls = 0.0
    for i in range(2):
        onehot = torch.zeros(a, c)
        fg = matched[i] >= 0
        if fg.any():
            onehot[fg, targets[i]["labels"][matched[i][fg]]] = 1.0
        valid = matched[i] != -2
        cls = cls + focal(logits[i][valid], onehot[valid])
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    fg = matched[0] >= 0
    want_deltas = coder.encode_single(targets[0]["boxes"][matched[0][fg]], anchors[0][fg])
    reg = (deltas[0][fg] - want_deltas).abs().sum()
    assert got["classification"].item() == pytest.approx((cls / z).item(), rel=1e-5)
    assert got["bbox_regression"].item() == pytest.approx((reg / z).item(), rel=1e-5)

    head.compute_loss(targets, outputs, anchors, matched)  # a second step moves it again
    assert head.fg_normalizer == pytest.approx(0.9 * z + 0.1 * 3)
    head.eval()
    head.compute_loss(targets, outputs, anchors, matched)  # evaluation does not
    assert head.fg_normalizer == pytest.approx(0.9 * z + 0.1 * 3)


def test_fcos_losses_are_batch_sums_over_the_running_normaliser() -> None:
    torch.manual_seed(1)
    head = EMAFCOSHead(32, 1, 3)
    head.train()
    a, c = 5, 3
    anchors = [torch.tensor([[0, 0, 8, 8], [8, 0, 16, 8], [0, 8, 8, 16], [8, 8, 16, 16], [4, 4, 12, 12]],
                            dtype=torch.float32)] * 2
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 16.0, 16.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}]
    matched = [torch.tensor([0, 0, -1, 0, 0]), torch.full((a,), -1)]
    outputs = {"cls_logits": torch.randn(2, a, c), "bbox_regression": torch.rand(2, a, 4) + 0.5,
               "bbox_ctrness": torch.randn(2, a, 1)}
    got = head.compute_loss(targets, outputs, anchors, matched)
    z = 0.9 * 100 + 0.1 * 4
    onehot = torch.zeros(2, a, c)
    onehot[0, matched[0] >= 0, 2] = 1.0
    assert got["classification"].item() == pytest.approx((focal(outputs["cls_logits"], onehot) / z).item(), rel=1e-5)
    from torchvision.models.detection.fcos import FCOSHead

    tv = FCOSHead.compute_loss(head, targets, outputs, anchors, matched)  # torchvision's: sums / 4 foreground
    for k in tv:
        assert got[k].item() == pytest.approx((tv[k] * 4 / z).item(), rel=1e-5)


def test_the_config_key_builds_the_heads() -> None:
    for arch, cls in (("retinanet", EMARetinaNetHead), ("fcos", EMAFCOSHead)):
        cfg = ModelConfig(arch=arch, backbone="mobilenet_v2", pretrained=False, image_size=64, fg_normalizer="ema")
        assert isinstance(build_detector(cfg, 2).head, cls)
        cfg.fg_normalizer = "batch"
        assert not isinstance(build_detector(cfg, 2).head, cls)
