"""The detector adapter: what every torchvision detector family shares.

:class:`DetectionAdapter` holds the model's lifecycle, data loading, batching, inference
loop and COCO evaluation; :class:`DenseDetectionAdapter` the one-stage forward pass
(transform -> backbone -> head -> anchors) that RetinaNet and FCOS share. Each family is one
module in :mod:`activedet.models.families` (its ``Adapter`` builds the model and answers
what only that family knows: its scores, its loss call, its final layers); nothing outside
``models/`` asks which family a model is. Strategies read detections, the class
probabilities of each kept detection, per-anchor outputs of dense heads, per-box and
per-image features, per-image losses and the parameters influence methods differentiate.
"""

from __future__ import annotations

import abc
import copy
import dataclasses

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.transform import _resize_image_and_masks, resize_boxes
from torchvision.ops import boxes as box_ops
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from activedet.config import ModelConfig
from activedet.data.stream import image_batches, size_batches
from activedet.errors import ConfigError, StrategyError
from activedet.models.base import Inference
from activedet.models.detection import resolve_backbone
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


class DetectionAdapter(abc.ABC):
    """Wraps a torchvision detector built from a :class:`ModelConfig`; one subclass per
    family (:mod:`activedet.models.families`), built by :func:`detection_adapter`.

    Labels are 1..C; the model has C + 1 class outputs (channel 0 unused by dense heads).
    Per-anchor outputs in :class:`Inference.extra` drop that channel: (A, C).

    A family sets :attr:`arch`, :attr:`model_class`, :attr:`variants` and
    :attr:`gradient_names`, and implements :meth:`build_model`, :meth:`infer_images`,
    :meth:`image_losses` and :meth:`feature_maps`.
    """

    task = "detection"
    #: ``model.arch`` of the family (its module name in :mod:`activedet.models.families`)
    arch: ClassVar[str] = ""
    #: the torchvision class it builds (a user's own model of it, subclasses included, is this family)
    model_class: ClassVar[type[nn.Module]] = nn.Module
    #: model variants the family builds: "plain"; "mial" (MIAL's head); "learning_loss"
    variants: ClassVar[tuple[str, ...]] = ("plain",)
    #: ISAL's parameters: the weights (not biases) of the final prediction layers
    gradient_names: ClassVar[tuple[str, ...]] = ()
    #: a one-stage detector (one head over every anchor): per-anchor outputs, one batched loss pass
    dense: ClassVar[bool] = False

    def __init__(self, model_cfg: ModelConfig, num_classes: int, variant: str = "plain",
                 device: str | torch.device = "cpu", head_kwargs: dict[str, Any] | None = None) -> None:
        if variant not in self.variants:
            from activedet.models import families

            able = [a for a in families.names() if variant in families.adapter_class(a).variants]
            raise ConfigError(f"model variant '{variant}' (chosen by the strategy) needs model.arch "
                              f"{' or '.join(repr(a) for a in able) or 'of another family'}, not '{model_cfg.arch}'")
        backbone = resolve_backbone(model_cfg.backbone, model_cfg.pretrained, model_cfg.offline_fallback)  # before any ledger
        self.cfg = dataclasses.replace(model_cfg, backbone=backbone)
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

    # ------------------------------------------------------------------ family hooks
    @classmethod
    @abc.abstractmethod
    def build_model(cls, cfg: ModelConfig, num_classes: int,
                    head_factory: Callable[[int, int, int], nn.Module] | None = None) -> nn.Module:
        """The torchvision detector for ``num_classes`` classes (``num_classes + 1`` outputs);
        ``head_factory(in_channels, num_anchors, num_outputs)`` replaces a dense head (MIAL)."""

    @classmethod
    def mial_head_factory(cls, kwargs: dict[str, Any]) -> Callable[[int, int, int], nn.Module]:
        """MIAL's head for this family (families whose :attr:`variants` include "mial")."""
        raise ConfigError(f"model.arch '{cls.arch}' has no MIAL head")

    @abc.abstractmethod
    def infer_images(self, images: list[torch.Tensor], keep_anchors: bool) -> list[Inference]:
        """Detections for images (3, H, W) on the device, in eval mode (see :meth:`infer`)."""

    def image_losses(self, images: list[torch.Tensor], targets: list[dict]) -> torch.Tensor:
        """``(N,)`` per-image training losses (the sum of the loss terms), batch-norm and
        dropout frozen: each image's loss that of a batch holding only that image."""
        self._loss_mode()
        return torch.stack([sum(self.model([im], [t]).values()) for im, t in zip(images, targets)])

    @abc.abstractmethod
    def feature_maps(self, image_list: Any,
                     levels: list[torch.Tensor]) -> tuple[list[torch.Tensor], Callable[[], list[torch.Tensor]], bool]:
        """For :meth:`features`: the maps to pool (B, D, H_l, W_l) per level, a function giving
        the per-level foreground logits (B, K, H_l, W_l), and whether levels are averaged
        (True) or concatenated (False)."""

    # ------------------------------------------------------------------ lifecycle
    def reset(self, seed: int) -> None:
        """A fresh detector: ImageNet backbone (if configured), heads initialised from ``seed``.

        The global torch RNG is left as it was (the seed is applied inside ``fork_rng``).
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            factory = self.mial_head_factory(self.head_kwargs) if self.variant == "mial" else None
            self.model = self.build_model(self.cfg, self.num_classes, factory).to(self.device)
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
    @classmethod
    def capabilities(cls, variant: str) -> frozenset[str]:
        """What this family's detector of ``variant`` provides (:data:`activedet.models.base.CAPABILITIES`)."""
        out = {"det_probs", "box_features", "image_features", "image_losses", "scorer"}
        if cls.dense:
            out.add("anchor_probs")
        if variant == "mial" and "mial" in cls.variants:
            out.add("mial_head")
        if variant == "learning_loss" and "learning_loss" in cls.variants:
            out.add("loss_prediction")
        return frozenset(out)

    @property
    def provides(self) -> frozenset[str]:
        return self.capabilities(self.variant)

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
        """The family of a torchvision detector (``retinanet``, ``fcos``, ``faster_rcnn``;
        subclasses included: MaskRCNN is a FasterRCNN), else None."""
        from activedet.models import families

        for arch in families.names():
            if isinstance(model, families.adapter_class(arch).model_class):
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

    @staticmethod
    def boxes_to_input(boxes: torch.Tensor, original_size: tuple[int, int],
                       input_size: tuple[int, int]) -> torch.Tensor:
        """(K, 4) xyxy boxes in an image's pixels -> in the model's input frame (its transform's resize)."""
        return resize_boxes(boxes, original_size, input_size)

    def levels(self, images: list[torch.Tensor], targets: list[dict] | None = None) -> tuple[Any, list[dict] | None,
                                                                                          list[torch.Tensor]]:
        """The model's transform, then its backbone: the ``ImageList``, the targets in its
        frame (None: none given) and the FPN levels (B, D, H_l, W_l), in the model's current
        mode and the caller's gradient context."""
        image_list, tgts = self.model.transform(images, targets)
        return image_list, tgts, list(self.model.backbone(image_list.tensors).values())

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
                outs = self.infer_images(images, keep_anchors)
                for image_id, out in zip(chunk, outs):
                    out.image_id = int(image_id)
                    yield out
                bar.update(len(chunk))
        bar.close()

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
        rows, order = [], []
        with torch.no_grad():
            for chunk, loaded in image_batches(dataset, ids, batch_size, self.workers, group=self.input_size):
                order += chunk
                image_list, _, levels = self.levels([img.to(self.device) for img in loaded])
                maps, logits, average = self.feature_maps(image_list, levels)
                probs = [x.sigmoid().amax(1, keepdim=True) for x in logits()] if pooling == "foreground" else None
                pooled = pool_levels(maps, probs)
                rows.append((torch.stack(pooled).mean(0) if average else torch.cat(pooled, 1)).cpu())
        if not rows:
            return np.zeros((0, 0), np.float32)
        where = {image_id: k for k, image_id in enumerate(order)}
        feats = torch.cat(rows).numpy().astype(np.float32, copy=False)  # one copy: the reorder below
        return feats[[where[i] for i in ids]]

    def gradient_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """ISAL's parameters: :attr:`gradient_names` (the final prediction layers' weights)."""
        params = dict(self.model.named_parameters())
        missing = [n for n in self.gradient_names if n not in params]
        if missing:
            raise ConfigError(f"model has no parameter '{missing[0]}' (variant {self.variant})")
        return [(n, params[n]) for n in self.gradient_names]


@dataclass
class DensePass:
    """One forward pass of a dense detector over a batch (transform -> backbone -> head ->
    anchors): what its detections (:meth:`DenseDetectionAdapter.pass_detections`) and its
    per-image losses (:meth:`DenseDetectionAdapter.pass_image_loss`) are computed from."""

    image_list: Any  #: torchvision ``ImageList``: ``tensors`` (B, 3, H, W), ``image_sizes`` [(h, w)]
    targets: list[dict] | None  #: the targets in the transformed images' coordinates (None: none given)
    features: list[torch.Tensor]  #: FPN levels (B, D, H_l, W_l)
    head_out: dict[str, torch.Tensor]  #: the head's outputs (B, A, ·)
    anchors: list[torch.Tensor]  #: per image (A, 4), in the transformed image
    per_level: list[int]  #: anchors per level (H_l x W_l x anchors per location)

    def detached(self) -> "DensePass":
        """The same pass with the head's outputs cut from the graph (post-processing reads these)."""
        return dataclasses.replace(self, head_out={k: v.detach() for k, v in self.head_out.items()})


class DenseDetectionAdapter(DetectionAdapter):
    """A one-stage detector (torchvision's RetinaNet / FCOS layout): one head over every
    anchor of every FPN level. A family adds :meth:`anchor_scores`, :meth:`decode_boxes` and
    :meth:`loss_terms`; detections, per-anchor outputs and losses come from one
    :class:`DensePass`."""

    dense = True
    variants = ("plain", "mial", "learning_loss")

    @abc.abstractmethod
    def anchor_scores(self, head_out: dict[str, torch.Tensor], b: int) -> torch.Tensor:
        """(A, C + 1) per-anchor class scores of image ``b`` (what torchvision thresholds)."""

    @abc.abstractmethod
    def decode_boxes(self, regression: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """(A, 4) boxes from one image's box regression (A, 4) and anchors (A, 4)."""

    @abc.abstractmethod
    def loss_terms(self, targets: list[dict], head_out: dict[str, torch.Tensor], anchors: list[torch.Tensor],
                   per_level: list[int]) -> dict[str, torch.Tensor]:
        """The model's own ``compute_loss`` on these head outputs."""

    def dense_pass(self, images: list[torch.Tensor], targets: list[dict] | None = None) -> DensePass:
        """The forward pass over images (3, H, W) on the device, in the model's current mode and
        the caller's gradient context."""
        model = self.model
        image_list, tgts, features = self.levels(images, targets)
        head_out = model.head(features)
        anchors = model.anchor_generator(image_list, features)
        hw = [f.shape[-2] * f.shape[-1] for f in features]
        per_loc = head_out["cls_logits"].shape[1] // sum(hw)
        return DensePass(image_list, tgts, features, head_out, anchors, [n * per_loc for n in hw])

    def image_losses(self, images: list[torch.Tensor], targets: list[dict]) -> torch.Tensor:
        """``(N,)`` per-image training losses from one batched forward, batch-norm and dropout
        frozen; each image's loss that of a batch holding only that image (same-size images;
        losses are normalised per image)."""
        self._loss_mode()
        return self.pass_losses(self.dense_pass(images, targets))

    def pass_losses(self, p: DensePass) -> torch.Tensor:
        """(N,) per-image training losses of a pass made with targets (:meth:`pass_image_loss`
        of each image against its own)."""
        assert p.targets is not None
        return torch.stack([self.pass_image_loss(p, t, i) for i, t in enumerate(p.targets)])

    def pass_image_loss(self, p: DensePass, target: dict, i: int) -> torch.Tensor:
        """Training loss (sum of its terms) of image ``i`` of pass ``p``, ``target`` in the
        transformed image's coordinates."""
        one = {k: v[i:i + 1] for k, v in p.head_out.items()}
        return sum(self.loss_terms([target], one, [p.anchors[i]], p.per_level).values())

    def infer_images(self, images: list[torch.Tensor], keep_anchors: bool) -> list[Inference]:
        """Detections for images (3, H, W) on the device, in eval mode, gradients as the
        caller's context has them (see :meth:`infer`)."""
        return self.pass_detections(self.dense_pass(images), [tuple(img.shape[-2:]) for img in images], keep_anchors)

    def pass_detections(self, p: DensePass, original_sizes: Sequence[tuple[int, int]],
                        keep_anchors: bool) -> list[Inference]:
        """torchvision's post-processing of pass ``p``, keeping each detection's anchor, its
        class probabilities and its feature row (see :meth:`infer`)."""
        model, head_out, anchors = self.model, p.head_out, p.anchors
        results = []
        for b in range(len(original_sizes)):
            logits = head_out["cls_logits"][b]  # (A, K)
            scores_all = self.anchor_scores(head_out, b).clone()
            scores_all[:, 0] = 0.0  # channel 0 is background (never a target): never a detection
            boxes_all = self.decode_boxes(head_out["bbox_regression"][b], anchors[b])
            keep_idx, labels = _dense_candidates(scores_all, p.per_level, model.score_thresh,
                                                 model.topk_candidates)
            boxes = box_ops.clip_boxes_to_image(boxes_all[keep_idx], p.image_list.image_sizes[b])
            # boxes clipped to nothing at the border are no detection (torchvision's RetinaNet and
            # FCOS keep them; its Faster R-CNN drops them so, before NMS): no empty pre-annotation,
            # pseudo box or reference box downstream
            sized = box_ops.remove_small_boxes(boxes, 1e-2)
            keep_idx, labels, boxes = keep_idx[sized], labels[sized], boxes[sized]
            scores = scores_all[keep_idx, labels]
            keep = box_ops.batched_nms(boxes, scores, labels, model.nms_thresh)[: model.detections_per_img]
            anchor_idx, boxes, scores, labels = keep_idx[keep], boxes[keep], scores[keep], labels[keep]
            scale_from = p.image_list.image_sizes[b]
            boxes = resize_boxes(boxes, scale_from, original_sizes[b])
            probs = torch.sigmoid(logits[anchor_idx, 1:])
            extra: dict[str, Any] = {"anchor_index": anchor_idx.cpu(), "num_anchors_per_level": p.per_level,
                                     "box_features": anchor_features([f[b] for f in p.features], anchor_idx,
                                                                     p.per_level).float().cpu()}
            if keep_anchors:
                for key, val in head_out.items():
                    if key != "bbox_regression" and val.shape[-1] == logits.shape[-1]:
                        extra[key] = val[b, :, 1:].float().cpu()
                extra["anchors"] = resize_boxes(anchors[b], scale_from, original_sizes[b]).cpu()
                extra["valid"] = anchors_inside(anchors[b], scale_from).cpu()  # not in batch padding
            results.append(Inference(0, boxes.cpu(), scores.cpu(), labels.cpu(), probs.cpu(), extra))
        return results

    def feature_maps(self, image_list: Any,
                     levels: list[torch.Tensor]) -> tuple[list[torch.Tensor], Callable[[], list[torch.Tensor]], bool]:
        """Plain heads: the classification and regression towers' outputs (averaged over
        levels), foreground from the class logits; MIAL heads: the FPN levels (concatenated),
        foreground from f1's logits."""
        head = self.model.head
        if self.variant == "mial":
            return levels, lambda: [head.f1.cls_logits(head.f1.conv(f)) for f in levels], False
        cls = head.classification_head
        towers = [cls.conv(f) for f in levels]
        maps = [torch.cat([c, head.regression_head.conv(f)], 1) for c, f in zip(towers, levels)]
        return maps, lambda: [cls.cls_logits(c) for c in towers], True


def detection_adapter(model_cfg: ModelConfig, num_classes: int, variant: str = "plain",
                      device: str | torch.device = "cpu",
                      head_kwargs: dict[str, Any] | None = None) -> DetectionAdapter:
    """The adapter of ``model_cfg.arch``'s family (:mod:`activedet.models.families`)."""
    from activedet.models import families

    return families.adapter_class(model_cfg.arch)(model_cfg, num_classes, variant, device, head_kwargs)


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


__all__ = ["DetectionAdapter", "DenseDetectionAdapter", "DensePass", "detection_adapter", "resolve_device",
           "detections_per_image_boxes", "anchor_features"]

