"""Faster R-CNN (torchvision's ``FasterRCNN``): an RPN, then RoI heads with a softmax over
C + 1 classes. A kept detection's class probabilities and box features are those of the RoI
behind its score (:func:`kept_rois`)."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops

from activedet.config import ModelConfig
from activedet.errors import ConfigError, StrategyError
from activedet.models.base import Inference
from activedet.models.detection import anchor_sizes, build_backbone, transform_kwargs
from activedet.models.detection_adapter import DetectionAdapter


class FasterRCNNAdapter(DetectionAdapter):
    arch = "faster_rcnn"
    model_class = FasterRCNN
    gradient_names = ("rpn.head.cls_logits.weight", "rpn.head.bbox_pred.weight",
                      "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight")

    @classmethod
    def build_model(cls, cfg: ModelConfig, num_classes: int,
                    head_factory: Callable[[int, int, int], nn.Module] | None = None) -> nn.Module:
        if head_factory is not None:
            raise ConfigError("model.arch 'faster_rcnn' has no replaceable dense head")
        backbone = build_backbone(cfg.backbone, cfg.pretrained, "pool")
        gen = AnchorGenerator(tuple((s,) for s in anchor_sizes(cfg, 4)), ((0.5, 1.0, 2.0),) * 4)
        return FasterRCNN(backbone, num_classes + 1, rpn_anchor_generator=gen, box_score_thresh=cfg.score_thresh,
                          box_detections_per_img=cfg.detections_per_img, **transform_kwargs(cfg))

    def infer_images(self, images: list[torch.Tensor], keep_anchors: bool) -> list[Inference]:
        """torchvision's eval forward, step by step through its RoI heads' own modules and
        their ``postprocess_detections``; each kept detection's class probabilities and box
        features are those of the RoI (proposal) that produced its score. No per-anchor
        outputs (``keep_anchors`` is moot)."""
        model = self.model
        heads = model.roi_heads
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, _ = model.transform(images)
        features = model.backbone(image_list.tensors)
        proposals, _ = model.rpn(image_list, features)
        roi_features = heads.box_head(heads.box_roi_pool(features, proposals, image_list.image_sizes))
        logits, regression = heads.box_predictor(roi_features)
        boxes, scores, labels = heads.postprocess_detections(logits, regression, proposals, image_list.image_sizes)
        probs = F.softmax(logits, dim=-1)  # (R, C + 1) over the batch's RoIs, background first
        rows = kept_rois(heads.box_coder.decode(regression, proposals), probs, proposals, image_list.image_sizes,
                         boxes, scores, labels)
        out = []
        for b, s, lab, r, size_in, size_out in zip(boxes, scores, labels, rows, image_list.image_sizes,
                                                    original_sizes):
            out.append(Inference(0, resize_boxes(b, size_in, size_out).cpu(), s.cpu(), lab.cpu(),
                                 probs[r, 1:].cpu(), {"box_features": roi_features[r].float().cpu()}))
        return out

    def feature_maps(self, image_list: Any,
                     levels: list[torch.Tensor]) -> tuple[list[torch.Tensor], Callable[[], list[torch.Tensor]], bool]:
        """The FPN levels (concatenated), foreground from the RPN's objectness."""
        return levels, lambda: self.model.rpn.head(levels)[0], False


def kept_rois(decoded: torch.Tensor, probs: torch.Tensor, proposals: list[torch.Tensor],
              image_sizes: list[tuple[int, int]], boxes: list[torch.Tensor], scores: list[torch.Tensor],
              labels: list[torch.Tensor]) -> list[torch.Tensor]:
    """For each image, the row (into the batch's concatenated RoIs) of the RoI behind each
    detection that torchvision's ``RoIHeads.postprocess_detections`` kept.

    ``decoded``: (R, C + 1, 4) boxes decoded from every RoI for every class (background 0);
    ``probs``: (R, C + 1) softmax; ``proposals``: per image (R_i, 4), sum R_i = R;
    ``boxes`` / ``scores`` / ``labels``: the kept detections per image, (K_i, 4) / (K_i,) /
    (K_i,). postprocess_detections keeps entries of the clipped ``decoded`` and of ``probs``
    unchanged, so a detection's RoI is one whose clipped box and probability for its label
    equal the detection's exactly (identical RoIs share their probabilities). Returns per
    image (K_i,) int64 rows; raises :class:`StrategyError` when a detection matches no RoI
    (a torchvision whose post-processing changes what it keeps)."""
    rows, start = [], 0
    for props, size, b, s, lab in zip(proposals, image_sizes, boxes, scores, labels):
        n = len(props)
        cand = box_ops.clip_boxes_to_image(decoded[start:start + n], size)  # (R_i, C + 1, 4)
        p = probs[start:start + n]
        found = []
        for box, score, label in zip(b, s, lab.tolist()):
            hit = ((p[:, label] == score) & (cand[:, label] == box).all(-1)).nonzero()
            if len(hit) == 0:
                raise StrategyError("a Faster R-CNN detection matches none of its RoIs: this torchvision's "
                                    "postprocess_detections no longer keeps decoded boxes and scores as they are")
            found.append(start + int(hit[0, 0]))
        rows.append(torch.tensor(found, dtype=torch.int64))
        start += n
    return rows


Adapter = FasterRCNNAdapter
