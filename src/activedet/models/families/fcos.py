"""FCOS (torchvision's ``FCOS``): one point a location, score sqrt(class x centerness), GIoU
box loss; ``model.box_prior`` starts its box branch at a useful size. MIAL's head for FCOS
keeps FCOS's box and centerness branch."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator

from activedet.config import ModelConfig
from activedet.models.detection import EMAFCOSHead, build_backbone, init_box_prior, transform_kwargs
from activedet.models.detection_adapter import DenseDetectionAdapter


class FCOSAdapter(DenseDetectionAdapter):
    arch = "fcos"
    model_class = FCOS
    gradient_names = ("head.classification_head.cls_logits.weight", "head.regression_head.bbox_reg.weight",
                      "head.regression_head.bbox_ctrness.weight")

    @classmethod
    def build_model(cls, cfg: ModelConfig, num_classes: int,
                    head_factory: Callable[[int, int, int], nn.Module] | None = None) -> nn.Module:
        k = num_classes + 1
        backbone = build_backbone(cfg.backbone, cfg.pretrained, "p6p7")
        # one point per location; sizes equal the strides (8..128)
        gen = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)
        head = head_factory(backbone.out_channels, 1, k) if head_factory else None
        if head is None and cfg.fg_normalizer == "ema":
            head = EMAFCOSHead(backbone.out_channels, 1, k)
        model = FCOS(backbone, k, anchor_generator=gen, head=head, score_thresh=cfg.score_thresh,
                     detections_per_img=cfg.detections_per_img, **transform_kwargs(cfg))
        if cfg.box_prior is not None:
            init_box_prior(model, cfg.box_prior)
        return model

    @classmethod
    def mial_head_factory(cls, kwargs: dict[str, Any]) -> Callable[[int, int, int], nn.Module]:
        from activedet.models.mial_head import MIALFCOSHead

        # FCOS keeps its own box loss: RetinaNet's regression_loss does not apply
        fcos_kwargs = {k: v for k, v in kwargs.items() if k != "regression_loss"}
        return lambda ch, anchors, k: MIALFCOSHead(ch, anchors, k, **fcos_kwargs)

    def anchor_scores(self, head_out: dict[str, torch.Tensor], b: int) -> torch.Tensor:
        return torch.sqrt(torch.sigmoid(head_out["cls_logits"][b]) * torch.sigmoid(head_out["bbox_ctrness"][b]))

    def decode_boxes(self, regression: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return self.model.box_coder.decode(regression, anchors)

    def loss_terms(self, targets: list[dict], head_out: dict[str, torch.Tensor], anchors: list[torch.Tensor],
                   per_level: list[int]) -> dict[str, torch.Tensor]:
        return self.model.compute_loss(targets, head_out, anchors, per_level)


Adapter = FCOSAdapter
