"""The adapter contract: what trainers, strategies and the loop may ask of a model.

An adapter wraps one torch model (a torchvision detector or a classifier) and its device.
Trainers call ``load_batch`` + ``train_loss``; strategies call ``infer`` (per-image
outputs, batched, memory independent of pool size), ``features`` and
``gradient_parameters``; the loop calls ``reset``, ``evaluate`` and the state-dict pair.
Every adapter declares what it can provide (:attr:`Adapter.provides`,
:func:`capabilities`); callers ask for an output by name, never probe the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import nn


@dataclass
class Inference:
    """What one forward pass says about one image (all tensors on CPU).

    Detection (dense heads: RetinaNet, FCOS):
      boxes (K, 4) xyxy in original image pixels, scores (K,), labels (K,) in 1..C:
        the post-NMS detections;
      probs (K, C): class probabilities of each kept detection (sigmoid for dense heads,
        softmax without background for Faster R-CNN);
      extra: adapter-specific arrays, e.g. ``cls_logits`` (A, C) for all anchors,
        ``mial_logits2`` (A, C), ``mil_scores`` (A, C), ``anchor_index`` (K,),
        ``box_features`` (K, D): one feature row per kept detection (dense heads: the FPN
        level's features at the detection's anchor location; Faster R-CNN: the box head's
        output for the detection's RoI).
    Classification: probs (1, C) softmax, labels (1,) argmax, boxes/scores empty.
    """

    image_id: int
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    probs: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


#: the optional outputs an adapter may provide (:attr:`Adapter.provides`) and a strategy
#: may want (``Strategy.wants``):
#: ``det_probs``: per-detection class probabilities (``Inference.probs``) from the anchor /
#: RoI behind each kept detection; ``class_probs``: a classifier's (1, C) probabilities;
#: ``anchor_probs``: per-anchor logits in ``Inference.extra`` (dense heads);
#: ``box_features``: ``extra["box_features"]`` (K, D), one feature row per kept detection;
#: ``image_features``: :meth:`Adapter.features`; ``image_losses``: per-image losses
#: against given targets; ``mial_head``: MIAL's two classifiers (and MIL) head;
#: ``loss_prediction``: learning loss's module; ``scorer``: a second model that scores
#: (MIAL ``detector: separate``).
CAPABILITIES = frozenset({"det_probs", "class_probs", "anchor_probs", "box_features", "image_features",
                          "image_losses", "mial_head", "loss_prediction", "scorer"})


def capabilities(task: str, arch: str, variant: str) -> frozenset[str]:
    """What an adapter of ``task`` / ``arch`` / ``variant`` provides, known before a model is
    built (the loop refuses a strategy wanting more before training). Each adapter family
    answers for its own archs."""
    if task == "detection":
        from activedet.models import families

        return families.adapter_class(arch).capabilities(variant)
    from activedet.models.classifier import ClassificationAdapter

    return ClassificationAdapter.capabilities(arch, variant)


def known_archs(task: str) -> tuple[str, ...]:
    """The architectures activedet builds for ``task`` (each adapter family lists its own)."""
    if task == "detection":
        from activedet.models import families

        return families.names()
    from activedet.models.classifier import ARCHS

    return tuple(ARCHS)


class Adapter(Protocol):
    """What the loop, trainers, strategies and the report may read of a model; nothing
    outside :mod:`activedet.models` asks which family it is."""

    task: str  # "detection" | "classification"
    arch: str  # "retinanet" | "fcos" | "faster_rcnn" | "resnet18" | "small_cnn"
    variant: str  # "plain" | "mial" | ... (chosen by the strategy)
    model: nn.Module
    device: torch.device
    num_classes: int  # C, background excluded
    #: image-loading processes of training, scoring and evaluation (0: in this process)
    workers: int
    #: a second model that scores (MIAL ``detector: separate``), or None
    scorer: nn.Module | None
    #: ``"image"`` or ``"array"``: what :meth:`load_batch` takes as ``decoded``
    pixels: str

    @property
    def provides(self) -> frozenset[str]:
        """The optional outputs this adapter fills (:data:`CAPABILITIES`)."""

    def reset(self, seed: int) -> None:
        """Build a fresh model (ImageNet backbone when configured), deterministically."""

    def load_batch(self, dataset: Any, ids: Sequence[int], augment: bool,
                   generator: torch.Generator | None = None, decoded: Sequence[Any] | None = None) -> tuple[Any, Any]:
        """Read ``ids`` into model inputs and targets on the adapter's device.

        Detection: (list of (3, H, W) tensors, list of target dicts); classification:
        ((B, 3, H, W) tensor, (B,) int64 labels). ``augment`` applies the training
        transforms (horizontal flip, crop) drawn from ``generator``. ``decoded``: the
        pixels of ``ids`` (:attr:`pixels`) already read, e.g. by loader processes.
        """

    def train_loss(self, inputs: Any, targets: Any) -> dict[str, torch.Tensor]:
        """Model in train mode; returns named scalar losses (summed by the trainer)."""

    def infer(self, dataset: Any, ids: Sequence[int], batch_size: int = 8,
              progress: bool = False, keep_anchors: bool = True) -> Iterator[Inference]:
        """Eval-mode forward over ``ids`` in batches, one :class:`Inference` per image, not
        necessarily in the order of ``ids`` (detectors group images by size): key results by
        ``Inference.image_id``. ``keep_anchors=False``: leave per-anchor arrays out."""

    def evaluate(self, dataset: Any, ids: Sequence[int] | None = None, batch_size: int | None = None,
                 progress: bool = False) -> dict[str, Any]:
        """Metrics on ``dataset`` (detection: COCO AP via pycocotools; classification: top-1)."""

    def features(self, dataset: Any, ids: Sequence[int], batch_size: int = 8, **kwargs: Any) -> np.ndarray:
        """(N, D) float32 pooled features per image (core-set, CDAL); detectors take
        ``pooling``."""

    def gradient_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters whose gradients influence methods use (ISAL's choice per arch)."""

    def head_parameters(self) -> list[nn.Parameter]:
        """The final prediction layers' parameters."""

    def mial_head(self) -> Any:
        """MIAL's head (two instance classifiers, optional MIL branch; ``mial_head`` in
        :attr:`provides`), else None."""

    def loss_module(self) -> Any:
        """Learning loss's loss-prediction module (``loss_prediction`` in :attr:`provides`), else None."""

    def with_model(self, model: nn.Module) -> "Adapter":
        """A shallow copy of this adapter around ``model`` (same data loading and device)."""

    def scoring(self) -> "Adapter":
        """The adapter a strategy scores with: around :attr:`scorer` when there is one, else self."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class DetectorAdapter(Adapter, Protocol):
    """What ISAL's per-image gradients also read of a detector (task ``detection``)."""

    @property
    def dense(self) -> bool:
        """A one-stage detector (RetinaNet, FCOS): one head over every anchor."""

    def batches(self, dataset: Any, ids: Sequence[int], batch_size: int) -> list[list[int]]:
        """``ids`` in batches of one input size (no padding for batch-mates)."""

    def infer_images(self, images: list[torch.Tensor], keep_anchors: bool) -> list[Inference]:
        """Detections of a dense detector for images on the device (gradients as the caller's context has them)."""

    def image_losses(self, images: list[torch.Tensor], targets: list[dict]) -> torch.Tensor:
        """(N,) per-image training losses, batch-norm and dropout frozen."""

    def levels(self, images: list[torch.Tensor],
               targets: list[dict] | None = None) -> tuple[Any, list[dict] | None, list[torch.Tensor]]:
        """The model's transform and backbone: (``ImageList``, targets in its frame, FPN levels)."""

    def dense_pass(self, images: list[torch.Tensor], targets: list[dict] | None = None) -> Any:
        """A dense detector's forward pass over a batch (a
        :class:`~activedet.models.detection_adapter.DensePass`), graph-connected."""

    def pass_detections(self, p: Any, original_sizes: Sequence[tuple[int, int]],
                        keep_anchors: bool) -> list[Inference]:
        """The detections of a :meth:`dense_pass` (as :meth:`infer_images` gives them)."""

    def pass_losses(self, p: Any) -> torch.Tensor:
        """(N,) per-image training losses of a :meth:`dense_pass` made with targets."""

    def pass_image_loss(self, p: Any, target: dict, i: int) -> torch.Tensor:
        """Image ``i``'s training loss from a :meth:`dense_pass`, ``target`` in the input frame."""

    @staticmethod
    def boxes_to_input(boxes: torch.Tensor, original_size: tuple[int, int],
                       input_size: tuple[int, int]) -> torch.Tensor:
        """(K, 4) boxes in an image's pixels -> in the model's input frame."""


def require(adapter: Adapter, output: str, who: str) -> None:
    """Raise :class:`~activedet.errors.StrategyError` naming ``output`` when ``adapter``
    does not provide it (``who``: the strategy, trainer or report asking)."""
    from activedet.errors import StrategyError

    if output not in adapter.provides:
        raise StrategyError(f"{who} needs the model output '{output}', which the {adapter.task} model "
                            f"'{adapter.arch}' (variant '{adapter.variant}') does not provide (it provides: "
                            f"{', '.join(sorted(adapter.provides)) or 'nothing'})")
