"""Adapter around torchvision detectors (RetinaNet, FCOS, Faster R-CNN).

Besides training losses and detections it exposes what strategies need: per-anchor class
logits of dense heads, class probabilities of each kept detection, pooled features, and
the parameters influence methods differentiate (ISAL's choice per architecture).
"""

from __future__ import annotations

import copy
import dataclasses

from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import tv_tensors
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.transform import _resize_image_and_masks, resize_boxes
from torchvision.ops import boxes as box_ops
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from activedet.config import ModelConfig
from activedet.data.stream import image_batches, size_batches
from activedet.errors import ConfigError, StrategyError
from activedet.models.base import Inference
from activedet.models.detection import build_detector, resolve_backbone
from activedet.models.mial_losses import anchors_inside


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when present, else CPU. ``cuda`` without a GPU is a ConfigError."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


def _head_factory(variant: str, kwargs: dict[str, Any], arch: str) -> Callable[[int, int, int], nn.Module] | None:
    if variant in ("plain", "learning_loss"):  # learning_loss: plain head + model.loss_module
        return None
    if variant == "mial":
        from activedet.models.mial_head import MIALFCOSHead, MIALHead

        if arch == "fcos":  # FCOS keeps its own box loss: RetinaNet's regression_loss does not apply
            fcos_kwargs = {k: v for k, v in kwargs.items() if k != "regression_loss"}
            return lambda ch, anchors, k: MIALFCOSHead(ch, anchors, k, **fcos_kwargs)
        return lambda ch, anchors, k: MIALHead(ch, anchors, k, **kwargs)
    raise ConfigError(f"unknown detector variant '{variant}'")


Pooling = Literal["mean", "foreground"]


def pool_levels(maps: Sequence[torch.Tensor], foreground: Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
    """Pool each level's map over the image: maps[l] (B, D, H_l, W_l) -> (B, D).

    Without ``foreground`` the mean over the H_l·W_l locations; with foreground[l]
    (B, 1, H_l, W_l) in [0, 1], the detector's foreground probability at each location,
    ``Σ p·x / (H_l·W_l)``: the features of what the detector sees as objects, summed, per
    unit of image area.
    """
    if foreground is None:
        return [x.mean((2, 3)) for x in maps]
    return [(p * x).mean((2, 3)) for x, p in zip(maps, foreground, strict=True)]


#: key prefix of the scorer's weights in :meth:`DetectionAdapter.state_dict`
SCORER = "scorer."


class DetectionAdapter:
    """Wraps a torchvision detector built from a :class:`ModelConfig`.

    Labels are 1..C; the model has C + 1 class outputs (channel 0 unused by dense heads).
    Per-anchor outputs in :class:`Inference.extra` drop that channel: (A, C).
    """

    task = "detection"

    def __init__(self, model_cfg: ModelConfig, num_classes: int, variant: str = "plain",
                 device: str | torch.device = "cpu", head_kwargs: dict[str, Any] | None = None) -> None:
        backbone = resolve_backbone(model_cfg.backbone, model_cfg.pretrained, model_cfg.offline_fallback)  # before any ledger
        self.cfg = dataclasses.replace(model_cfg, backbone=backbone)
        self.arch = model_cfg.arch
        self.num_classes = num_classes
        self.variant = variant
        self.head_kwargs = dict(head_kwargs or {})
        self.device = resolve_device(device)
        self.model: nn.Module = nn.Identity()
        #: a second model of the same architecture that scores the pool while ``model`` is the
        #: detector (MIAL ``detector: separate``); None: ``model`` does both
        self.scorer: nn.Module | None = None
        #: image-loading worker processes of training and inference (``dataset.workers``; 0: this process)
        self.workers = 0
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}  # input_size, by image size

    # ------------------------------------------------------------------ lifecycle
    def reset(self, seed: int) -> None:
        """A fresh detector: ImageNet backbone (if configured), heads initialised from ``seed``.

        The global torch RNG is left as it was (the seed is applied inside ``fork_rng``).
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            factory = _head_factory(self.variant, self.head_kwargs, self.arch)
            self.model = build_detector(self.cfg, self.num_classes, factory).to(self.device)
            self.scorer = None
            if self.variant == "learning_loss":
                from activedet.models.learning_loss import attach_loss_module

                attach_loss_module(self.model, "detection", **self.head_kwargs)

    def state_dict(self) -> dict[str, Any]:
        """The detector's weights, and the scorer's (if any) under ``scorer.``-prefixed keys."""
        out = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        if self.scorer is not None:
            out.update({SCORER + k: v.detach().cpu().clone() for k, v in self.scorer.state_dict().items()})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(self.model, nn.Identity):  # nothing built yet (a resumed run)
            self.reset(0)
        self.model.load_state_dict({k: v for k, v in state.items() if not k.startswith(SCORER)})
        scorer = {k[len(SCORER):]: v for k, v in state.items() if k.startswith(SCORER)}
        self.scorer = None
        if scorer:
            self.scorer = copy.deepcopy(self.model)
            self.scorer.load_state_dict(scorer)

    def with_model(self, model: nn.Module) -> "DetectionAdapter":
        """A shallow copy of this adapter (same settings, data loading and device) around
        ``model``, without a scorer: train or run a second model with the adapter's methods."""
        view = copy.copy(self)
        view.model, view.scorer = model, None
        return view

    def scoring(self) -> "DetectionAdapter":
        """The adapter a strategy scores with: around the scorer when there is one, else self."""
        return self if self.scorer is None else self.with_model(self.scorer)

    # ------------------------------------------------------------------ capabilities
    #: the detector architectures this adapter builds (models/detection.py)
    ARCHS: tuple[str, ...] = ("retinanet", "fcos", "faster_rcnn")

    @staticmethod
    def capabilities(arch: str, variant: str) -> frozenset[str]:
        """What a detector of ``arch`` / ``variant`` provides (:data:`activedet.models.base.CAPABILITIES`)."""
        out = {"det_probs", "box_features", "image_features", "image_losses", "scorer"}
        if arch in ("retinanet", "fcos"):
            out.add("anchor_probs")
        if variant == "mial":
            out.add("mial_head")
        if variant == "learning_loss":
            out.add("loss_prediction")
        return frozenset(out)

    @property
    def provides(self) -> frozenset[str]:
        return self.capabilities(self.arch, self.variant)

    def mial_head(self) -> Any:
        """The MIAL head (``model.head`` of variant ``mial``), else None."""
        return self.model.head if "mial_head" in self.provides else None

    def loss_module(self) -> Any:
        """Learning loss's module (``model.loss_module`` of variant ``learning_loss``), else None."""
        return getattr(self.model, "loss_module", None) if "loss_prediction" in self.provides else None

    def head_parameters(self) -> list[nn.Parameter]:
        """The final prediction layers' weights (:meth:`gradient_parameters`)."""
        return [q for _, q in self.gradient_parameters()]

    @staticmethod
    def arch_of(model: nn.Module) -> str | None:
        """``retinanet`` / ``fcos`` / ``faster_rcnn`` for a torchvision detector (subclasses
        included: MaskRCNN is a FasterRCNN), else None."""
        for cls, arch in ((RetinaNet, "retinanet"), (FCOS, "fcos"), (FasterRCNN, "faster_rcnn")):
            if isinstance(model, cls):
                return arch
        return None

    @staticmethod
    def input_side(model: nn.Module) -> int:
        """The shorter input side ``model``'s transform resizes to (800 when it has none)."""
        return int(getattr(getattr(model, "transform", None), "min_size", (800,))[0])

    # ------------------------------------------------------------------ data
    #: what :func:`~activedet.data.stream.chunk_batches` decodes for :meth:`load_batch`
    pixels = "image"

    def load_batch(self, dataset: Any, ids: Sequence[int], augment: bool,
                   generator: torch.Generator | None = None,
                   decoded: Sequence[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], list[dict]]:
        """Images (3, H, W) in [0, 1] and targets on the device; ``augment``: random h-flip.
        ``decoded``: the images of ``ids`` already read (``dataset.load_image``), e.g. by
        loader processes; else they are read here."""
        images, targets = [], []
        for k, i in enumerate(ids):
            img = dataset.load_image(i) if decoded is None else decoded[k]
            tgt = dataset.target(i)
            if augment and torch.rand((), generator=generator).item() < 0.5:
                h, w = img.shape[-2:]
                img = TF.horizontal_flip(img)
                boxes = tv_tensors.BoundingBoxes(tgt["boxes"], format="XYXY", canvas_size=(h, w))
                tgt["boxes"] = TF.horizontal_flip(boxes).as_subclass(torch.Tensor)
            images.append(img.to(self.device))
            targets.append({k: v.to(self.device) for k, v in tgt.items()})
        return images, targets

    # ------------------------------------------------------------------ losses
    def train_loss(self, inputs: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        self.model.train()
        return self.model(inputs, targets)

    def _loss_mode(self) -> None:
        """Training-loss forward with batch-norm and dropout frozen (ISAL's eval-mode ∇l)."""
        self.model.train()
        for m in self.model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
                m.eval()

    @property
    def dense(self) -> bool:
        """A one-stage detector (RetinaNet, FCOS): one head over every anchor."""
        return isinstance(self.model, (FCOS, RetinaNet))

    def image_losses(self, images: list[torch.Tensor], targets: list[dict]) -> torch.Tensor:
        """``(N,)`` per-image training losses (the sum of the loss terms), batch-norm and
        dropout frozen; one batched forward for dense heads, each image's loss that of a batch
        holding only that image (same-size images; losses are normalised per image). Faster
        R-CNN: one forward per image."""
        self._loss_mode()
        model = self.model
        if not self.dense:
            return torch.stack([sum(model([im], [t]).values()) for im, t in zip(images, targets)])
        image_list, tgts = model.transform(images, targets)
        features = list(model.backbone(image_list.tensors).values())
        head_out = model.head(features)
        anchors = model.anchor_generator(image_list, features)
        per_level = [f.shape[-2] * f.shape[-1] for f in features]
        return torch.stack([self.dense_image_loss(head_out, anchors, tgts[i], per_level, i)
                            for i in range(len(images))])

    def dense_image_loss(self, head_out: dict[str, torch.Tensor], anchors: list[torch.Tensor], target: dict,
                         per_level: list[int], i: int) -> torch.Tensor:
        """Training loss (sum of its terms) of image ``i`` of a batch's head outputs (N, A, ·)
        of a dense detector, ``target`` in the transformed image's coordinates."""
        one = {k: v[i:i + 1] for k, v in head_out.items()}
        if isinstance(self.model, FCOS):
            return sum(self.model.compute_loss([target], one, [anchors[i]], per_level).values())
        return sum(self.model.compute_loss([target], one, [anchors[i]]).values())

    @staticmethod
    def boxes_to_input(boxes: torch.Tensor, original_size: tuple[int, int],
                       input_size: tuple[int, int]) -> torch.Tensor:
        """(K, 4) xyxy boxes in an image's pixels -> in the model's input frame (its transform's resize)."""
        return resize_boxes(boxes, original_size, input_size)

    # ------------------------------------------------------------------ batching
    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) an image of ``height`` x ``width`` is resized to by the model's transform in
        eval mode (torchvision's own resize, run on a shape-only tensor). Images that share it
        run as the same tensor and the same image size alone or batched together: a batch of
        them pads none of them for another, and torchvision's RoI pooling, which reads the
        batch's largest image size, sees each image's own."""
        key = (int(height), int(width))
        if key not in self._sizes:
            t = self.model.transform
            resized, _ = _resize_image_and_masks(torch.empty(1, *key, device="meta"), t.min_size[-1],
                                                 t.max_size, None, t.fixed_size)
            self._sizes[key] = (int(resized.shape[-2]), int(resized.shape[-1]))
        return self._sizes[key]

    def batches(self, dataset: Any, ids: Sequence[int], batch_size: int) -> list[list[int]]:
        """``ids`` in batches of at most ``batch_size`` images of one :meth:`input_size`
        (:func:`~activedet.data.stream.size_batches`)."""
        return size_batches(dataset, ids, batch_size, self.input_size)

    # ------------------------------------------------------------------ inference
    def infer(self, dataset: Any, ids: Sequence[int], batch_size: int = 8,
              progress: bool = False, keep_anchors: bool = True) -> Iterator[Inference]:
        """Eval-mode forward, one :class:`Inference` per image, batch by batch.

        Dense heads also return ``extra``: ``cls_logits`` (A, C) and the head's other
        per-anchor outputs (``cls_logits2``, ``mil_logits`` for MIAL), ``anchor_index``
        (K,) of each kept detection, ``num_anchors_per_level``, ``anchors`` (A, 4) in
        original image pixels and ``valid`` (A,) bool: the anchor's centre is in the image, not
        in the padding up to the transform's size divisor. ``keep_anchors=False`` leaves the
        per-anchor arrays out.

        Every batch holds images of one :meth:`input_size` (:meth:`batches`), so nothing is
        padded for a batch-mate and an image's detections, probabilities and anchors are those
        it gets alone, whatever the batch size. Images therefore come grouped by that size
        (in order of first appearance), not in the order of ``ids``: key results by
        ``image_id``. They are decoded on demand, batch by batch, with ``self.workers`` loader
        processes (:func:`activedet.data.stream.image_batches`): memory does not grow with ``len(ids)``.
        """
        ids = list(ids)
        self.model.eval()
        bar = tqdm(total=len(ids), desc="inference", unit="img", disable=not progress, leave=False)
        with torch.no_grad():
            for chunk, loaded in image_batches(dataset, ids, batch_size, self.workers, group=self.input_size):
                images = [img.to(self.device) for img in loaded]
                if isinstance(self.model, FasterRCNN):
                    outs = self._infer_two_stage(images)
                else:
                    outs = self.infer_images(images, keep_anchors)
                for image_id, out in zip(chunk, outs):
                    out.image_id = int(image_id)
                    yield out
                bar.update(len(chunk))
        bar.close()

    def infer_images(self, images: list[torch.Tensor], keep_anchors: bool) -> list[Inference]:
        """Detections of a dense detector for images (3, H, W) on the device, in eval mode,
        gradients as the caller's context has them (see :meth:`infer`)."""
        model = self.model
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, _ = model.transform(images)
        features = list(model.backbone(image_list.tensors).values())
        head_out = model.head(features)
        anchors = model.anchor_generator(image_list, features)
        hw = [f.shape[-2] * f.shape[-1] for f in features]
        per_loc = head_out["cls_logits"].shape[1] // sum(hw)
        per_level = [n * per_loc for n in hw]
        results = []
        for b in range(len(images)):
            logits = head_out["cls_logits"][b]  # (A, K)
            if isinstance(model, FCOS):
                scores_all = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(head_out["bbox_ctrness"][b]))
            else:
                scores_all = torch.sigmoid(logits)
            scores_all = scores_all.clone()
            scores_all[:, 0] = 0.0  # channel 0 is background (never a target): never a detection
            coder = model.box_coder
            decode = coder.decode_single if hasattr(coder, "decode_single") else coder.decode
            boxes_all = decode(head_out["bbox_regression"][b], anchors[b])
            keep_idx, labels = _dense_candidates(scores_all, per_level, model.score_thresh,
                                                 model.topk_candidates)
            boxes = box_ops.clip_boxes_to_image(boxes_all[keep_idx], image_list.image_sizes[b])
            # boxes clipped to nothing at the border are no detection (torchvision's RetinaNet and
            # FCOS keep them; its Faster R-CNN drops them so, before NMS): no empty pre-annotation,
            # pseudo box or reference box downstream
            sized = box_ops.remove_small_boxes(boxes, 1e-2)
            keep_idx, labels, boxes = keep_idx[sized], labels[sized], boxes[sized]
            scores = scores_all[keep_idx, labels]
            keep = box_ops.batched_nms(boxes, scores, labels, model.nms_thresh)[: model.detections_per_img]
            anchor_idx, boxes, scores, labels = keep_idx[keep], boxes[keep], scores[keep], labels[keep]
            scale_from = image_list.image_sizes[b]
            boxes = resize_boxes(boxes, scale_from, original_sizes[b])
            probs = torch.sigmoid(logits[anchor_idx, 1:])
            extra: dict[str, Any] = {"anchor_index": anchor_idx.cpu(), "num_anchors_per_level": per_level,
                                     "box_features": anchor_features([f[b] for f in features], anchor_idx,
                                                                     per_level).float().cpu()}
            if keep_anchors:
                for key, val in head_out.items():
                    if key != "bbox_regression" and val.shape[-1] == logits.shape[-1]:
                        extra[key] = val[b, :, 1:].float().cpu()
                extra["anchors"] = resize_boxes(anchors[b], scale_from, original_sizes[b]).cpu()
                extra["valid"] = anchors_inside(anchors[b], scale_from).cpu()  # not in batch padding
            results.append(Inference(0, boxes.cpu(), scores.cpu(), labels.cpu(), probs.cpu(), extra))
        return results

    def _infer_two_stage(self, images: list[torch.Tensor]) -> list[Inference]:
        """Faster R-CNN: torchvision's eval forward, step by step through its RoI heads'
        own modules and their ``postprocess_detections``; each kept detection's class
        probabilities are the softmax row of the RoI (proposal) that produced its score."""
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

    # ------------------------------------------------------------------ metrics
    def predict_coco(self, dataset: Any, ids: Sequence[int], batch_size: int = 8,
                     progress: bool = False) -> list[dict]:
        """Detections in COCO results format (category ids = labels 1..C)."""
        from activedet.evaluation.detection import detections_to_coco

        dets: list[dict] = []
        for inf in self.infer(dataset, ids, batch_size, progress, keep_anchors=False):
            dets.extend(detections_to_coco(inf.image_id, inf.boxes.numpy(), inf.scores.numpy(),
                                           inf.labels.numpy()))
        return dets

    def evaluate(self, dataset: Any, ids: Sequence[int] | None = None, batch_size: int = 8,
                 progress: bool = False) -> dict[str, Any]:
        """COCO AP (pycocotools) of this model on ``dataset``."""
        from activedet.evaluation.detection import coco_metrics

        ids = dataset.ids if ids is None else list(ids)
        dets = self.predict_coco(dataset, ids, batch_size, progress)
        return coco_metrics(dataset.to_coco(ids), dets, dataset.class_names)

    # ------------------------------------------------------------------ strategy helpers
    def features(self, dataset: Any, ids: Sequence[int], batch_size: int = 8,
                 pooling: Pooling = "foreground") -> np.ndarray:
        """(N, D) pooled features, rows in the order of ``ids``. Dense heads: the
        classification and regression tower outputs, concatenated, pooled per FPN level and
        averaged over levels; MIAL heads and Faster R-CNN: the backbone's FPN levels, pooled
        and concatenated. Batches hold one :meth:`input_size` each, so a row does not depend
        on the image's batch-mates (no padding).

        ``pooling``: ``mean`` averages every location (ISAL's supplementary D.2);
        ``foreground`` weights each location by the detector's foreground probability
        there (dense heads: the highest class probability; MIAL heads: f1's; Faster
        R-CNN: the RPN's objectness) and divides by the image's number of locations, so a row sums the
        features of what the detector sees as objects and an image without any lies near
        the origin (:func:`pool_levels`).
        """
        if pooling not in ("mean", "foreground"):
            raise ConfigError(f"feature pooling must be 'mean' or 'foreground', got {pooling!r}")
        ids = list(ids)
        self.model.eval()
        model = self.model
        head = getattr(model, "head", None)
        rows, order = [], []
        with torch.no_grad():
            for chunk, loaded in image_batches(dataset, ids, batch_size, self.workers, group=self.input_size):
                order += chunk
                image_list, _ = model.transform([img.to(self.device) for img in loaded])
                feats = list(model.backbone(image_list.tensors).values())
                dense = head is not None and hasattr(head, "classification_head")  # torchvision's
                if dense:
                    cls = head.classification_head
                    towers = [cls.conv(f) for f in feats]
                    maps = [torch.cat([c, head.regression_head.conv(f)], 1) for c, f in zip(towers, feats)]
                    logits = lambda: [cls.cls_logits(c) for c in towers]  # noqa: E731
                elif head is not None and hasattr(head, "f1"):  # MIAL: instance classifier f1
                    maps, logits = feats, lambda: [head.f1.cls_logits(head.f1.conv(f)) for f in feats]
                else:  # Faster R-CNN: the RPN's objectness
                    maps, logits = feats, lambda: model.rpn.head(feats)[0]
                probs = [x.sigmoid().amax(1, keepdim=True) for x in logits()] if pooling == "foreground" else None
                pooled = pool_levels(maps, probs)
                rows.append((torch.stack(pooled).mean(0) if dense else torch.cat(pooled, 1)).cpu())
        if not rows:
            return np.zeros((0, 0), np.float32)
        where = {image_id: k for k, image_id in enumerate(order)}
        feats = torch.cat(rows).numpy().astype(np.float32, copy=False)  # one copy: the reorder below
        return feats[[where[i] for i in ids]]

    def gradient_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """ISAL's parameters: weights (not biases) of the final prediction layers.

        RetinaNet: final cls/reg convs; FCOS: final cls, reg and centerness convs;
        Faster R-CNN: RPN cls/reg convs and the RoI head's final cls/reg linear layers.
        """
        if isinstance(self.model, FCOS):
            names = ["head.classification_head.cls_logits.weight", "head.regression_head.bbox_reg.weight",
                     "head.regression_head.bbox_ctrness.weight"]
        elif isinstance(self.model, RetinaNet):
            names = ["head.classification_head.cls_logits.weight", "head.regression_head.bbox_reg.weight"]
        else:
            names = ["rpn.head.cls_logits.weight", "rpn.head.bbox_pred.weight",
                     "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight"]
        params = dict(self.model.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise ConfigError(f"model has no parameter '{missing[0]}' (variant {self.variant})")
        return [(n, params[n]) for n in names]


def _dense_candidates(scores: torch.Tensor, per_level: list[int], thresh: float,
                      topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's per-level candidate selection, keeping anchor indices.

    scores: (A, K) per-anchor class scores. Returns anchor indices (M,) into the full
    anchor list and labels (M,), the top ``topk`` (anchor, class) pairs above ``thresh``
    of each level.
    """
    idx_out, lab_out = [], []
    offset = 0
    k = scores.shape[1]
    for n in per_level:
        flat = scores[offset:offset + n].flatten()
        keep = torch.where(flat > thresh)[0]
        num = det_utils._topk_min(keep, topk, 0)
        _, order = flat[keep].topk(num)
        keep = keep[order]
        idx_out.append(torch.div(keep, k, rounding_mode="floor") + offset)
        lab_out.append(keep % k)
        offset += n
    return torch.cat(idx_out), torch.cat(lab_out)


def anchor_features(maps: Sequence[torch.Tensor], anchor_index: torch.Tensor,
                    per_level: Sequence[int]) -> torch.Tensor:
    """(K, D) feature rows of the anchors ``anchor_index`` (K,) of one image: the FPN
    level's feature vector at each anchor's location.

    ``maps``: per level (D, H_l, W_l); ``per_level``: anchors per level (H_l x W_l x A_l),
    anchors ordered level by level, then location (row-major), then the A_l anchors of a
    location (torchvision's RetinaNet / FCOS head layout)."""
    d = maps[0].shape[0] if maps else 0
    out = torch.zeros((len(anchor_index), d), dtype=maps[0].dtype if maps else torch.float32,
                      device=anchor_index.device)
    offset = 0
    for m, n in zip(maps, per_level):
        hw = m.shape[-2] * m.shape[-1]
        inside = (anchor_index >= offset) & (anchor_index < offset + n)
        if inside.any():
            loc = torch.div(anchor_index[inside] - offset, n // hw, rounding_mode="floor")
            out[inside] = m.reshape(d, hw)[:, loc].T.to(out.dtype)
        offset += n
    return out


def detections_per_image_boxes(inf: Inference, min_score: float) -> int:
    """Number of detections at or above ``min_score`` (predicted annotation cost)."""
    return int((inf.scores >= min_score).sum())


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
    from torchvision.ops import boxes as box_ops

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


__all__ = ["DetectionAdapter", "resolve_device", "detections_per_image_boxes", "anchor_features"]

