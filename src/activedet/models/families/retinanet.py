"""RetinaNet (torchvision's ``RetinaNet``): sigmoid class scores per anchor, 9 anchors a
location (3 scales x 3 aspect ratios), focal loss; MIAL's head replaces its head."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator

from activedet.config import ModelConfig
from activedet.models.detection import EMARetinaNetHead, anchor_sizes, build_backbone, transform_kwargs
from activedet.models.detection_adapter import DenseDetectionAdapter


class RetinaNetAdapter(DenseDetectionAdapter):
    arch = "retinanet"
    model_class = RetinaNet
    gradient_names = ("head.classification_head.cls_logits.weight", "head.regression_head.bbox_reg.weight")

    @classmethod
    def build_model(cls, cfg: ModelConfig, num_classes: int,
                    head_factory: Callable[[int, int, int], nn.Module] | None = None) -> nn.Module:
        k = num_classes + 1
        backbone = build_backbone(cfg.backbone, cfg.pretrained, "p6p7")
        gen = AnchorGenerator(tuple((s, s * 2 ** (1 / 3), s * 2 ** (2 / 3)) for s in anchor_sizes(cfg, 5)),
                              ((0.5, 1.0, 2.0),) * 5)
        per_loc = gen.num_anchors_per_location()[0]
        head = head_factory(backbone.out_channels, per_loc, k) if head_factory else None
        if head is None and cfg.fg_normalizer == "ema":
            head = EMARetinaNetHead(backbone.out_channels, per_loc, k)
        return RetinaNet(backbone, k, anchor_generator=gen, head=head, score_thresh=cfg.score_thresh,
                         detections_per_img=cfg.detections_per_img, **transform_kwargs(cfg))

    @classmethod
    def mial_head_factory(cls, kwargs: dict[str, Any]) -> Callable[[int, int, int], nn.Module]:
        from activedet.models.mial_head import MIALHead

        return lambda ch, anchors, k: MIALHead(ch, anchors, k, **kwargs)

    def anchor_scores(self, head_out: dict[str, torch.Tensor], b: int) -> torch.Tensor:
        return torch.sigmoid(head_out["cls_logits"][b])

    def decode_boxes(self, regression: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return self.model.box_coder.decode_single(regression, anchors)

    def loss_terms(self, targets: list[dict], head_out: dict[str, torch.Tensor], anchors: list[torch.Tensor],
                   per_level: list[int]) -> dict[str, torch.Tensor]:
        return self.model.compute_loss(targets, head_out, anchors)


Adapter = RetinaNetAdapter
