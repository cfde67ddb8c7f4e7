"""The adapter contract: what trainers, strategies and the loop may ask of a model.

An adapter wraps one torch model (a torchvision detector or a classifier) and its device.
Trainers call ``load_batch`` + ``train_loss``; strategies call ``infer`` (per-image
outputs, batched, memory independent of pool size), ``features`` and
``gradient_parameters``; the loop calls ``reset``, ``evaluate`` and the state-dict pair.
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
        ``mial_logits2`` (A, C), ``mil_scores`` (A, C), ``anchor_index`` (K,).
    Classification: probs (1, C) softmax, labels (1,) argmax, boxes/scores empty.
    """

    image_id: int
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    probs: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


class Adapter(Protocol):
    task: str  # "detection" | "classification"
    arch: str  # "retinanet" | "fcos" | "faster_rcnn" | "resnet18" | "small_cnn"
    variant: str  # "plain" | "mial" | ... (chosen by the strategy)
    model: nn.Module
    device: torch.device
    num_classes: int  # C, background excluded

    def reset(self, seed: int) -> None:
        """Build a fresh model (ImageNet backbone when configured), deterministically."""

    #: ``"image"`` or ``"array"``: what :meth:`load_batch` takes as ``decoded``
    pixels: str

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
              progress: bool = False) -> Iterator[Inference]:
        """Eval-mode forward over ``ids`` in batches, one :class:`Inference` per image, not
        necessarily in the order of ``ids`` (detectors group images by size): key results by
        ``Inference.image_id``."""

    def evaluate(self, dataset: Any, ids: Sequence[int] | None = None, batch_size: int | None = None,
                 progress: bool = False) -> dict[str, Any]:
        """Metrics on ``dataset`` (detection: COCO AP via pycocotools; classification: top-1)."""

    def features(self, dataset: Any, ids: Sequence[int], batch_size: int = 8) -> np.ndarray:
        """(N, D) float32 pooled features per image (core-set, CDAL)."""

    def gradient_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters whose gradients influence methods use (ISAL's choice per arch)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
