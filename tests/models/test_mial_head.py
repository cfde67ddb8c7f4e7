"""MIALHead inside torchvision's RetinaNet, with a tiny 3-level backbone on 64-px images."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetRegressionHead
from torchvision.ops import box_iou

from activedet.models import mial_losses as L
from activedet.models.mial_head import PARAMETER_GROUPS, MIALHead

CH = 16
SIZES = ((16,), (32,), (48,))
RATIOS = ((0.5, 1.0),) * 3  # A = 2 anchors per location
LEVELS = [8 * 8 * 2, 4 * 4 * 2, 2 * 2 * 2]  # strides 8, 16, 32 on 64 px


class TinyBackbone(nn.Module):
    """Three ``ch``-channel maps at strides 8, 16, 32."""

    def __init__(self, ch: int = CH) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, ch, 3, stride=8, padding=1)
        self.c2 = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        a = F.relu(self.c1(x))
        b = F.relu(self.c2(a))
        return OrderedDict([("0", a), ("1", b), ("2", F.relu(self.c3(b)))])


def build(num_object_classes: int = 2, seed: int = 0, **head_kwargs: object) -> RetinaNet:
    torch.manual_seed(seed)
    gen = AnchorGenerator(SIZES, RATIOS)
    k = num_object_classes + 1
    head = MIALHead(CH, gen.num_anchors_per_location()[0], k, conv_depth=2, **head_kwargs)  # type: ignore[arg-type]
    return RetinaNet(TinyBackbone(), k, min_size=64, max_size=64, anchor_generator=gen, head=head,
                     score_thresh=0.001, detections_per_img=50)


def batch(seed: int = 1) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 30.0, 30.0], [30.0, 20.0, 60.0, 50.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # no ground-truth boxes
    ]
    return images, targets


def head_inputs(model: RetinaNet) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[torch.Tensor],
                                           list[dict[str, torch.Tensor]]]:
    """What RetinaNet.forward hands the head: outputs, anchors, matched indices, targets."""
    images, targets = batch()
    il, tg = model.transform(images, targets)
    feats = list(model.backbone(il.tensors).values())
    outs = model.head(feats)
    anchors = model.anchor_generator(il, feats)
    matched = []
    for a, t in zip(anchors, tg):
        if t["boxes"].numel() == 0:
            matched.append(torch.full((a.shape[0],), -1, dtype=torch.int64))
        else:
            matched.append(model.proposal_matcher(box_iou(t["boxes"], a)))
    return outs, anchors, matched, tg


def test_train_step_returns_losses_and_updates_every_group() -> None:
    model = build()
    model.train()
    images, targets = batch()
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression", "mil"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    head: MIALHead = model.head
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    before = head.f_mil.cls_logits.weight.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before, head.f_mil.cls_logits.weight)


def test_forward_records_levels_and_outputs_shapes() -> None:
    model = build()
    outs, anchors, _, _ = head_inputs(model)
    head: MIALHead = model.head
    assert head.num_anchors_per_level == LEVELS
    n, a = 2, sum(LEVELS)
    assert outs["cls_logits"].shape == (n, a, 3) and outs["cls_logits2"].shape == (n, a, 3)
    assert outs["mil_logits"].shape == (n, a, 3) and outs["bbox_regression"].shape == (n, a, 4)
    # the recorded split lines up with the anchor generator's levels (anchor sizes 16, 32, 48)
    sides = (anchors[0][:, 2:] - anchors[0][:, :2]).prod(dim=1).sqrt()
    for (lo, hi), size in zip([(0, 128), (128, 160), (160, 168)], (16, 32, 48)):
        torch.testing.assert_close(sides[lo:hi], torch.full((hi - lo,), float(size)), atol=1.0, rtol=0)


def test_mil_loss_uses_the_per_level_split_and_gt_image_labels() -> None:
    model = build()
    outs, anchors, matched, tg = head_inputs(model)
    g = torch.Generator().manual_seed(2)  # away from the init, where every level scores 1/2
    outs = {k: v + torch.randn(v.shape, generator=g) for k, v in outs.items()}
    head: MIALHead = model.head
    got = head.compute_loss(tg, outs, anchors, matched)["mil"]
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # image 2 has no boxes: all-zero labels
    inst = L.instance_mil_scores(outs["cls_logits"], outs["cls_logits2"], outs["mil_logits"], LEVELS)
    expected = L.mil_loss(L.image_class_scores(inst, LEVELS), labels)
    torch.testing.assert_close(got, expected)
    one_level = L.mil_loss(L.image_class_scores(
        L.instance_mil_scores(outs["cls_logits"], outs["cls_logits2"], outs["mil_logits"], [168]), [168]), labels)
    assert not torch.allclose(got, one_level)  # the split matters
    with pytest.raises(RuntimeError, match="do not match"):
        head.compute_loss(tg, outs, anchors, matched, num_anchors_per_level=[100, 60])


def test_classification_and_regression_losses_match_torchvision() -> None:
    assert build().head.det_reduction == "sum"  # the paper's Eq. 1 is the default
    model = build(regression_loss="l1", det_reduction="mean")  # the authors' code
    outs, anchors, matched, tg = head_inputs(model)
    losses = model.head.compute_loss(tg, outs, anchors, matched)
    tv_cls = RetinaNetClassificationHead(CH, 2, 3)  # its loss uses no parameters
    expected_cls = (tv_cls.compute_loss(tg, {"cls_logits": outs["cls_logits"]}, matched)
                    + tv_cls.compute_loss(tg, {"cls_logits": outs["cls_logits2"]}, matched)) / 2
    torch.testing.assert_close(losses["classification"], expected_cls)
    model.head.det_reduction = "sum"  # paper Eq. 1: FL(f1) + FL(f2)
    torch.testing.assert_close(model.head.compute_loss(tg, outs, anchors, matched)["classification"],
                               2 * expected_cls)
    reg = model.head.regression_head
    torch.testing.assert_close(losses["bbox_regression"],
                               RetinaNetRegressionHead.compute_loss(reg, tg, outs, anchors, matched))
    # smooth L1 (paper default): torchvision's smooth_l1 is beta = 1
    reg._loss_type = "smooth_l1"
    reg.beta = 1.0
    tv_smooth = RetinaNetRegressionHead.compute_loss(reg, tg, outs, anchors, matched)
    torch.testing.assert_close(reg.compute_loss(tg, outs, anchors, matched), tv_smooth)
    assert MIALHead(CH, 2, 3).regression_head._loss_type == "smooth_l1"


def check_detections_ignore_f2_and_mil(model: nn.Module, change: Callable[[nn.Module], None]) -> None:
    """Eval-mode detections do not move when f2 and the MIL head do, and do when
    ``change(model.head)`` perturbs a branch they come from."""
    model.eval()
    images, _ = batch()
    head = model.head
    with torch.no_grad():
        ref = model(images)
        assert all(len(d["boxes"]) > 0 for d in ref)
        for p in list(head.f2.parameters()) + head.mil_parameters():
            p.add_(torch.randn_like(p))
        same = model(images)
        change(head)
        changed = model(images)
    for r, s in zip(ref, same):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(r[key], s[key])
    assert any(not torch.equal(r["scores"], c["scores"]) for r, c in zip(ref, changed))


def test_eval_detections_come_from_f1_only() -> None:
    check_detections_ignore_f2_and_mil(build(), lambda head: head.f1.cls_logits.bias.add_(
        torch.randn_like(head.f1.cls_logits.bias)))


def test_f1_f2_independent_init_and_prior_bias() -> None:
    head: MIALHead = build().head
    prior = -math.log((1 - 0.01) / 0.01)
    assert not torch.equal(head.f1.cls_logits.weight, head.f2.cls_logits.weight)
    assert not torch.equal(head.f1.conv[0][0].weight, head.f2.conv[0][0].weight)
    torch.testing.assert_close(head.f1.cls_logits.bias, torch.full((6,), prior))
    torch.testing.assert_close(head.f2.cls_logits.bias, torch.full((6,), prior))
    assert torch.all(head.f1.conv[0][0].bias == 0)
    assert len(MIALHead(CH, 2, 3).f1.conv) == 4  # paper's depth by default


def test_parameter_groups_partition_the_head() -> None:
    head: MIALHead = build().head
    groups = [head.f1_f2_parameters(), head.mil_parameters(), head.regression_parameters()]
    ids = [{id(p) for p in g} for g in groups]
    assert all(len(s) > 0 for s in ids)
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert ids[0] | ids[1] | ids[2] == {id(p) for p in head.parameters()}
    named = head.named_parameter_groups()
    assert set(named) == set(PARAMETER_GROUPS)
    assert all(n.split(".")[0] in ("f1", "f2") for n, _ in named["f1_f2"])
    head.set_trainable("f1_f2", False)
    assert not any(p.requires_grad for p in head.f1_f2_parameters())
    assert all(p.requires_grad for p in head.mil_parameters() + head.regression_parameters())


def test_use_mil_false_drops_the_branch() -> None:
    model = build(use_mil=False)
    model.train()
    images, targets = batch()
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression"}
    head: MIALHead = model.head
    assert head.f_mil is None and head.mil_parameters() == []
    outs, *_ = head_inputs(model)
    assert "mil_logits" not in outs
    assert set(head.unlabeled_loss(outs, "min")) == {"discrepancy"}


def test_single_class_head_trains_mil_branch() -> None:
    model = build(num_object_classes=1)
    model.train()
    images, targets = batch()
    targets[0]["labels"] = torch.tensor([1, 1])
    losses = model(images, targets)
    losses["mil"].backward()
    assert model.head.f_mil.cls_logits.weight.grad.abs().sum() > 0
    # with a forced softmax over the single class the MIL loss cannot learn (released code's bug)
    model = build(num_object_classes=1, mil_class_activation="softmax")
    model.train()
    model(images, targets)["mil"].backward()
    assert model.head.f_mil.cls_logits.weight.grad is None or model.head.f_mil.cls_logits.weight.grad.abs().sum() == 0


def test_unlabeled_losses_match_the_functions() -> None:
    model = build()
    outs, *_ = head_inputs(model)
    head: MIALHead = model.head
    c1, c2 = outs["cls_logits"], outs["cls_logits2"]
    inst = L.instance_mil_scores(c1, c2, outs["mil_logits"], LEVELS)
    mx = head.unlabeled_loss(outs, "max")
    assert set(mx) == {"discrepancy"}
    torch.testing.assert_close(mx["discrepancy"], L.max_step_unlabeled_loss(c1, c2, mil_scores=inst))
    mn = head.unlabeled_loss(outs, "min", lam=1.0)
    torch.testing.assert_close(mn["discrepancy"], L.min_step_unlabeled_loss(c1, c2, lam=1.0, mil_scores=inst))
    pseudo = L.pseudo_image_labels(c1, c2)
    torch.testing.assert_close(mn["mil"], L.mil_loss(L.image_class_scores(inst, LEVELS), pseudo, skip_empty=True))


def test_bad_head_arguments() -> None:
    with pytest.raises(ValueError, match="regression_loss"):
        MIALHead(CH, 2, 3, regression_loss="giou")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="first_class"):
        MIALHead(CH, 2, 1)  # one channel: no object class after the background channel
    with pytest.raises(ValueError, match="mil_weighting"):
        MIALHead(CH, 2, 3, mil_weighting="both")  # type: ignore[arg-type]
