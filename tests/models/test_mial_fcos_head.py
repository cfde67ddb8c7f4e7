"""MIALFCOSHead inside torchvision's FCOS, with a tiny 3-level backbone on 64-px images:
every location is an instance (one "anchor" per location)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead, FCOSRegressionHead

from activedet.errors import ConfigError
from activedet.models import mial_losses as L
from activedet.models.detection import build_detector
from activedet.models import families
from activedet.models.detection_adapter import detection_adapter
from activedet.models.mial_head import MIALFCOSHead
from tests.conftest import tiny_config
from tests.models.test_mial_head import TinyBackbone, batch, check_detections_ignore_f2_and_mil

CH = 32  # FCOS's towers use GroupNorm with 32 groups
LEVELS = [8 * 8, 4 * 4, 2 * 2]  # strides 8, 16, 32 on 64 px, one location each


def build(num_object_classes: int = 2, seed: int = 0, **head_kwargs: object) -> FCOS:
    torch.manual_seed(seed)
    gen = AnchorGenerator(((8,), (16,), (32,)), ((1.0,),) * 3)
    k = num_object_classes + 1
    head = MIALFCOSHead(CH, 1, k, conv_depth=2, **head_kwargs)  # type: ignore[arg-type]
    return FCOS(TinyBackbone(CH), k, min_size=64, max_size=64, anchor_generator=gen, head=head,
                score_thresh=0.001, detections_per_img=50)


def head_inputs(model: FCOS) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[torch.Tensor],
                                      list[dict[str, torch.Tensor]]]:
    """What FCOS.forward hands the head's compute_loss: outputs, anchors, matched indices, targets
    (captured from a real training forward)."""
    seen: dict[str, object] = {}
    head: MIALFCOSHead = model.head
    real = head.compute_loss

    def spy(targets, head_outputs, anchors, matched_idxs):
        seen.update(targets=targets, outs=head_outputs, anchors=anchors, matched=matched_idxs)
        return real(targets, head_outputs, anchors, matched_idxs)

    head.compute_loss = spy  # type: ignore[method-assign]
    model.train()
    model(*batch())
    del head.compute_loss
    return seen["outs"], seen["anchors"], seen["matched"], seen["targets"]  # type: ignore[return-value]


def test_forward_shapes_and_levels() -> None:
    model = build()
    outs, anchors, matched, _ = head_inputs(model)
    head: MIALFCOSHead = model.head
    assert head.num_anchors_per_level == LEVELS
    n, a = 2, sum(LEVELS)
    assert {k: tuple(v.shape) for k, v in outs.items()} == {
        "cls_logits": (n, a, 3), "cls_logits2": (n, a, 3), "mil_logits": (n, a, 3),
        "bbox_regression": (n, a, 4), "bbox_ctrness": (n, a, 1)}
    assert [len(x) for x in anchors] == [a, a] and [len(m) for m in matched] == [a, a]
    assert int((matched[0] >= 0).sum()) > 0 and bool((matched[1] == -1).all())
    # FCOS's towers: GroupNorm in f1, f2, f_mil and the box branch (torchvision's own)
    assert isinstance(head.f1.conv[0][1], nn.GroupNorm) and isinstance(head.regression_head, FCOSRegressionHead)


def test_train_step_returns_fcos_losses_and_updates_every_group() -> None:
    model = build()
    model.train()
    losses = model(*batch())
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness", "mil"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    for name, p in model.head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def _focal(p: float, y: int, alpha: float = 0.25, gamma: float = 2.0) -> float:
    """Focal loss of one probability, by hand."""
    pt = p if y else 1 - p
    return -(alpha if y else 1 - alpha) * (1 - pt) ** gamma * math.log(pt)


def test_focal_losses_against_a_hand_computed_tiny_case() -> None:
    """2 images × 2 locations × K = 2 channels; one foreground location (image 0, location 0,
    label 1). f1's logits are 0 (p = 1/2), f2's are ln 3 (p = 3/4): each loss is the sum over
    the 8 entries divided by the batch's 1 foreground location."""
    head = MIALFCOSHead(CH, 1, 2, conv_depth=1)
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    matched = [torch.tensor([0, -1]), torch.tensor([-1, -1])]
    f1 = torch.zeros(2, 2, 2)
    f2 = torch.full((2, 2, 2), math.log(3.0))
    fl1 = _focal(0.5, 1) + 7 * _focal(0.5, 0)  # = 1.375 ln 2
    fl2 = _focal(0.75, 1) + 7 * _focal(0.75, 0)
    assert fl1 == pytest.approx(1.375 * math.log(2))
    assert float(head._focal_loss(targets, f1, matched)) == pytest.approx(fl1, rel=1e-6)
    assert float(head._focal_loss(targets, f2, matched)) == pytest.approx(fl2, rel=1e-6)
    # two foreground locations halve it (FCOS normalises by the batch's foreground count)
    two = [torch.tensor([0, 0]), torch.tensor([-1, -1])]
    assert float(head._focal_loss(targets, f1, two)) == pytest.approx((2 * _focal(0.5, 1) + 6 * _focal(0.5, 0)) / 2)


def test_labeled_loss_is_fcos_loss_on_both_classifiers() -> None:
    assert build().head.det_reduction == "sum"  # paper Eq. 1 by default
    model = build(det_reduction="mean")
    outs, anchors, matched, tg = head_inputs(model)
    g = torch.Generator().manual_seed(2)  # away from the init, where f1 and f2 nearly agree
    outs = {k: v + torch.randn(v.shape, generator=g) for k, v in outs.items()}
    outs["bbox_regression"] = outs["bbox_regression"].relu()
    head: MIALFCOSHead = model.head
    losses = head.compute_loss(tg, outs, anchors, matched)
    plain = FCOSHead(CH, 1, 3)  # its loss uses no parameters
    tv1 = plain.compute_loss(tg, {**outs, "cls_logits": outs["cls_logits"]}, anchors, matched)
    tv2 = plain.compute_loss(tg, {**outs, "cls_logits": outs["cls_logits2"]}, anchors, matched)
    torch.testing.assert_close(losses["classification"], (tv1["classification"] + tv2["classification"]) / 2)
    torch.testing.assert_close(losses["bbox_regression"], tv1["bbox_regression"])
    torch.testing.assert_close(losses["bbox_ctrness"], tv1["bbox_ctrness"])
    head.det_reduction = "sum"
    torch.testing.assert_close(head.compute_loss(tg, outs, anchors, matched)["classification"],
                               tv1["classification"] + tv2["classification"])
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # image 2 has no boxes: all-zero labels
    inst = L.instance_mil_scores(outs["cls_logits"], outs["cls_logits2"], outs["mil_logits"], LEVELS)
    torch.testing.assert_close(losses["mil"], L.mil_loss(L.image_class_scores(inst, LEVELS), labels))


def test_unlabeled_losses_match_the_functions() -> None:
    model = build()
    outs, *_ = head_inputs(model)
    head: MIALFCOSHead = model.head
    c1, c2 = outs["cls_logits"], outs["cls_logits2"]
    inst = L.instance_mil_scores(c1, c2, outs["mil_logits"], LEVELS)
    torch.testing.assert_close(head.unlabeled_loss(outs, "max")["discrepancy"],
                               L.max_step_unlabeled_loss(c1, c2, mil_scores=inst))
    mn = head.unlabeled_loss(outs, "min")
    torch.testing.assert_close(mn["discrepancy"], L.min_step_unlabeled_loss(c1, c2, mil_scores=inst))
    torch.testing.assert_close(mn["mil"], L.mil_loss(L.image_class_scores(inst, LEVELS),
                                                     L.pseudo_image_labels(c1, c2), skip_empty=True))


def test_eval_detections_come_from_f1_and_centerness() -> None:
    check_detections_ignore_f2_and_mil(build(), lambda head: head.regression_head.bbox_ctrness.bias.add_(1.0))


def test_parameter_groups_put_the_centerness_in_the_box_branch() -> None:
    head: MIALFCOSHead = build().head
    named = head.named_parameter_groups()
    regression = {n for n, _ in named["regression"]}
    assert {"regression_head.bbox_ctrness.weight", "regression_head.bbox_reg.bias"} <= regression
    assert sum(len(v) for v in named.values()) == len(list(head.parameters()))


def test_detector_built_for_fcos_gets_the_box_prior() -> None:
    cfg = tiny_config(**{"model.arch": "fcos", "model.box_prior": 0.75})
    fcos = families.adapter_class("fcos")
    model = build_detector(cfg.model, 2, fcos.mial_head_factory({"use_mil": True, "regression_loss": "smooth_l1"}))
    assert isinstance(model, FCOS) and isinstance(model.head, MIALFCOSHead)
    torch.testing.assert_close(model.head.regression_head.bbox_reg.bias, torch.full((4,), 0.75))
    with pytest.raises(ConfigError, match="needs model.arch 'fcos' or 'retinanet', not 'faster_rcnn'"):
        detection_adapter(tiny_config(**{"model.arch": "faster_rcnn"}).model, 2, "mial")
    with pytest.raises(TypeError, match="regression_loss"):
        MIALFCOSHead(CH, 1, 3, regression_loss="l1")  # type: ignore[call-arg]
