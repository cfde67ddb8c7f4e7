"""MIAL's losses and scores as pure functions (paper Sec. 3.2–3.3, Eq. 3, 5–10).

Shapes (torchvision layout, all levels concatenated along the anchor axis):

- ``cls1``, ``cls2``: logits of the instance classifiers f1, f2, (N, A, K);
- ``mil_logits``: MIL classifier scores s, (N, A, K);
- ``num_anchors_per_level``: anchors of each pyramid level, in the order they are
  concatenated (``sum == A``), e.g. ``[H3*W3*a, H4*W4*a, ...]`` (a = anchors per location).

Class channels. activedet's detectors follow torchvision: labels are 1..C, the model has
K = C + 1 output channels and channel 0 is never a target. Everything MIAL computes over
classes (softmax over classes, image labels, discrepancy) must ignore it, so every function
takes ``first_class`` (default 1): only channels ``[first_class:]`` are object classes and
results have ``C = K - first_class`` class columns. Pass ``first_class=0`` for heads
without a background channel (the authors' MMDetection layout).

Probabilities are sigmoids of logits (focal-loss heads). Per-image results are returned
per image; batch reductions are stated on each function.

Batch padding. A batch of images of different sizes is padded to the largest; anchors
whose centre lies in an image's padding (:func:`anchors_inside`) see no image. Every
unlabeled-image term takes ``valid`` (N, A) bool: such anchors are left out of the
per-level softmax of the MIL scores, of the pseudo labels' max and of the discrepancy
sums, so an image's losses and scores do not depend on its batch-mates.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

MILMode = Literal["paper", "code"]
ClassActivation = Literal["auto", "softmax", "sigmoid"]
Reweight = Literal["none", "f1", "mil"]

#: image class scores are clamped to [EPS, 1 - EPS] before the BCE (authors' code)
EPS = 1e-5

__all__ = [
    "EPS",
    "anchors_inside",
    "object_class_logits",
    "instance_mil_scores",
    "image_class_scores",
    "image_labels_from_targets",
    "mil_loss",
    "pseudo_image_labels",
    "discrepancy",
    "discrepancy_weights",
    "max_step_unlabeled_loss",
    "min_step_unlabeled_loss",
]


def object_class_logits(logits: Tensor, first_class: int = 1) -> Tensor:
    """The object-class channels ``logits[..., first_class:]``: (..., K) -> (..., C).

    Raises ``ValueError`` when ``first_class`` leaves no class channel.
    """
    k = logits.shape[-1]
    if not 0 <= first_class < k:
        raise ValueError(f"first_class must be in [0, {k - 1}] for {k} channels, got {first_class}")
    return logits[..., first_class:]


def anchors_inside(anchors: Tensor, image_size: Sequence[int]) -> Tensor:
    """Anchors (A, 4) xyxy whose centre lies in the image ``(H, W)`` (not in batch padding): (A,) bool."""
    h, w = float(image_size[0]), float(image_size[1])
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    return (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)


def _check_valid(x: Tensor, valid: Tensor | None) -> Tensor | None:
    """``valid`` (N, A) bool on ``x``'s device, or None."""
    if valid is None:
        return None
    if valid.shape != x.shape[:2]:
        raise ValueError(f"valid must be (N, A) = {tuple(x.shape[:2])}, got {tuple(valid.shape)}")
    return valid.to(device=x.device, dtype=torch.bool)


def _check_levels(x: Tensor, num_anchors_per_level: Sequence[int]) -> list[int]:
    levels = [int(n) for n in num_anchors_per_level]
    if not levels or any(n < 1 for n in levels):
        raise ValueError(f"num_anchors_per_level must be positive counts, got {levels}")
    if sum(levels) != x.shape[1]:
        raise ValueError(
            f"num_anchors_per_level {levels} sums to {sum(levels)}, but the outputs have "
            f"{x.shape[1]} anchors"
        )
    return levels


def _check_pair(cls1: Tensor, cls2: Tensor) -> None:
    if cls1.dim() != 3 or cls1.shape != cls2.shape:
        raise ValueError(
            f"cls1 and cls2 must both be (N, A, K), got {tuple(cls1.shape)} and {tuple(cls2.shape)}"
        )


def instance_mil_scores(
    cls1: Tensor,
    cls2: Tensor,
    mil_logits: Tensor,
    num_anchors_per_level: Sequence[int],
    *,
    mode: MILMode = "paper",
    first_class: int = 1,
    class_activation: ClassActivation = "auto",
    valid: Tensor | None = None,
) -> Tensor:
    """MIL instance scores ŷ^mil (Eq. 5), per image and pyramid level: (N, A, C).

    ``score[n, i, c] = class_factor[n, i, c] * anchor_factor[n, i, c]`` where

    - class factor: ``softmax_c(s[n, i, :])`` over the C object classes;
    - anchor factor (detached from the graph in both modes), a softmax over the anchors i
      of the level that holds anchor i, computed separately for every image:

      - ``mode="paper"`` (Eq. 5): ``softmax_i((σ(z1[i,c]) + σ(z2[i,c])) / 2)`` class by class;
      - ``mode="code"`` (authors' code): ``softmax_i(max_c σ((z1[i,c] + z2[i,c]) / 2))``,
        one weight per anchor shared by all classes.

    ``class_activation``: with a single class (C = 1) the softmax over classes is
    identically 1, so every image class score would be 1 and the MIL loss constant (the
    released code's single-class failure). ``"auto"`` (default) uses softmax when C > 1
    and a sigmoid σ(s) when C = 1 (= softmax over the class and an implicit background
    logit 0); ``"softmax"`` / ``"sigmoid"`` force one.

    Args:
        cls1, cls2: f1 / f2 logits, (N, A, K).
        mil_logits: MIL classifier scores s, (N, A, K).
        num_anchors_per_level: anchors per level, summing to A.
        valid: (N, A) bool or None: anchors outside it (batch padding) get score 0 and are
            left out of the softmax over anchors.
    Returns:
        (N, A, C) scores; for one image, level and class they sum to at most 1.
    """
    _check_pair(cls1, cls2)
    valid = _check_valid(cls1, valid)
    if mil_logits.shape != cls1.shape:
        raise ValueError(f"mil_logits must be {tuple(cls1.shape)}, got {tuple(mil_logits.shape)}")
    levels = _check_levels(cls1, num_anchors_per_level)
    s = object_class_logits(mil_logits, first_class)  # (N, A, C)
    z1 = object_class_logits(cls1, first_class).detach()
    z2 = object_class_logits(cls2, first_class).detach()
    return _class_factor(s, class_activation) * _anchor_factor(z1, z2, mode, levels, valid)


def _class_factor(s: Tensor, class_activation: ClassActivation) -> Tensor:
    """MIL logits s (N, A, C) -> (N, A, C): softmax over the classes, or a sigmoid (see
    :func:`instance_mil_scores`: ``"auto"`` takes the sigmoid when C = 1)."""
    act = class_activation
    if act == "auto":
        act = "sigmoid" if s.shape[-1] == 1 else "softmax"
    if act == "softmax":
        return s.softmax(dim=-1)
    if act == "sigmoid":
        return s.sigmoid()
    raise ValueError(f"class_activation must be 'auto', 'softmax' or 'sigmoid', got {class_activation!r}")


def _anchor_factor(z1: Tensor, z2: Tensor, mode: MILMode, levels: list[int], valid: Tensor | None) -> Tensor:
    """f1 / f2 object-class logits z1, z2 (N, A, C) -> softmax over the anchors of each
    level, per image: (N, A, C) for ``mode="paper"``, (N, A, 1) for ``"code"``; 0 at anchors
    outside ``valid`` (N, A) and at every anchor of a level with none valid."""
    if mode == "paper":
        anchor_logit = (z1.sigmoid() + z2.sigmoid()) / 2  # (N, A, C)
    elif mode == "code":
        anchor_logit = ((z1 + z2) / 2).sigmoid().amax(dim=-1, keepdim=True)  # (N, A, 1)
    else:
        raise ValueError(f"mode must be 'paper' or 'code', got {mode!r}")
    if valid is not None:
        anchor_logit = anchor_logit.masked_fill(~valid[..., None], float("-inf"))
    # a level with no valid anchor of an image: softmax of all -inf is NaN -> 0
    anchor_factor = torch.cat([x.softmax(dim=1) for x in anchor_logit.split(levels, dim=1)], dim=1)
    if valid is not None:
        anchor_factor = torch.nan_to_num(anchor_factor, nan=0.0)
    return anchor_factor


def image_class_scores(instance_scores: Tensor, num_anchors_per_level: Sequence[int]) -> Tensor:
    """Image class scores: sum over the anchors of each level, max over levels, clamped.

    Args:
        instance_scores: (N, A, C) MIL instance scores (:func:`instance_mil_scores`).
        num_anchors_per_level: anchors per level, summing to A.
    Returns:
        (N, C) scores in ``[EPS, 1 - EPS]``.
    """
    levels = _check_levels(instance_scores, num_anchors_per_level)
    per_level = torch.stack([x.sum(dim=1) for x in instance_scores.split(levels, dim=1)])  # (L, N, C)
    return per_level.amax(dim=0).clamp(EPS, 1.0 - EPS)


def image_labels_from_targets(
    targets: Sequence[dict[str, Tensor]],
    num_classes: int,
    *,
    first_class: int = 1,
    device: torch.device | None = None,
) -> Tensor:
    """Ground-truth image labels from torchvision detection targets: (N, C) float 0/1.

    Column ``c`` is 1 when the image has a box labelled ``c + first_class``. An image with
    no boxes gets an all-zero row (the MIL loss then pushes all its class scores down).

    Args:
        targets: one dict per image with ``labels`` (B,) int64 in
            ``first_class .. first_class + num_classes - 1``.
        num_classes: C, the number of object classes (background excluded).
    Raises:
        ValueError: a label outside that range.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if device is None:
        device = targets[0]["labels"].device if len(targets) else torch.device("cpu")
    out = torch.zeros(len(targets), num_classes, device=device)
    for n, t in enumerate(targets):
        labels = t["labels"].to(device=device, dtype=torch.int64).reshape(-1) - first_class
        if labels.numel():
            bad = (labels < 0) | (labels >= num_classes)
            if bad.any():
                value = int(labels[bad][0]) + first_class
                raise ValueError(
                    f"image {n}: label {value} outside {first_class}..{first_class + num_classes - 1}"
                )
            out[n, labels] = 1.0
    return out


def mil_loss(
    image_scores: Tensor,
    image_labels: Tensor,
    *,
    skip_empty: bool = False,
    class_reduction: Literal["sum", "mean"] = "sum",
) -> Tensor:
    """Image classification (MIL) loss, Eq. 6: scalar.

    Per image ``l = -Σ_c [y_c log p_c + (1 - y_c) log(1 - p_c)]`` (``class_reduction="sum"``,
    the paper; ``"mean"`` divides by C like the authors' ``nn.BCELoss``). The batch loss is
    ``Σ_images l / N``: the mean over the N images of the batch.

    ``skip_empty``: images whose label vector is all zero contribute 0 (they still count
    in N). Use it for pseudo labels of unlabeled images ("if an image gets no positive
    class, its MIL loss is zero"); leave it off for ground-truth labels, where an image
    without objects is a true negative for every class.

    Args:
        image_scores: (N, C) in (0, 1), e.g. :func:`image_class_scores`.
        image_labels: (N, C) 0/1 (ground truth or :func:`pseudo_image_labels`).
    """
    if image_scores.shape != image_labels.shape or image_scores.dim() != 2:
        raise ValueError(
            f"image_scores and image_labels must both be (N, C), got {tuple(image_scores.shape)} "
            f"and {tuple(image_labels.shape)}"
        )
    labels = image_labels.to(image_scores.dtype)
    bce = F.binary_cross_entropy(image_scores, labels, reduction="none")  # (N, C)
    if class_reduction == "sum":
        per_image = bce.sum(dim=1)
    elif class_reduction == "mean":
        per_image = bce.mean(dim=1)
    else:
        raise ValueError(f"class_reduction must be 'sum' or 'mean', got {class_reduction!r}")
    if skip_empty:
        per_image = torch.where(labels.sum(dim=1) > 0, per_image, torch.zeros_like(per_image))
    return per_image.sum() / max(1, per_image.shape[0])


@torch.no_grad()
def pseudo_image_labels(cls1: Tensor, cls2: Tensor, threshold: float = 0.5, *, first_class: int = 1,
                        valid: Tensor | None = None) -> Tensor:
    """Pseudo image labels, Eq. 10: (N, C) float 0/1, no gradient.

    ``y[n, c] = 1`` iff ``max_i (σ(z1[n,i,c]) + σ(z2[n,i,c])) / 2 > threshold`` over all
    anchors of all levels (strictly greater); with ``valid`` (N, A), over valid anchors only.

    Args:
        cls1, cls2: f1 / f2 logits, (N, A, K).
    """
    _check_pair(cls1, cls2)
    valid = _check_valid(cls1, valid)
    p = (object_class_logits(cls1, first_class).sigmoid() + object_class_logits(cls2, first_class).sigmoid()) / 2
    if valid is not None:
        p = p * valid[..., None]
    return (p.amax(dim=1) > threshold).to(cls1.dtype)


def _abs_or_square(cls1: Tensor, cls2: Tensor, squared: bool, first_class: int) -> Tensor:
    _check_pair(cls1, cls2)
    d = object_class_logits(cls1, first_class).sigmoid() - object_class_logits(cls2, first_class).sigmoid()
    return d.pow(2) if squared else d.abs()  # (N, A, C)


def discrepancy(
    cls1: Tensor,
    cls2: Tensor,
    weights: Tensor | None = None,
    *,
    squared: bool = False,
    first_class: int = 1,
) -> Tensor:
    """Prediction discrepancy per image, Eq. 3 / Eq. 7: (N,).

    ``d[n] = Σ_i mean_c(|σ(z1[n,i,c]) - σ(z2[n,i,c])| · w[n,i,c])`` over all anchors of all
    levels (``squared=True``: the squared difference). Sum over images yourself: the
    authors sum the discrepancy over the images of a batch, they do not average it.

    Args:
        cls1, cls2: f1 / f2 logits, (N, A, K).
        weights: None (w = 1) or a tensor broadcastable to (N, A, C), used as given
            (detach it first if it must not receive gradient; see :func:`discrepancy_weights`).
    """
    d = _abs_or_square(cls1, cls2, squared, first_class)
    if weights is not None:
        d = d * weights
    return d.mean(dim=-1).sum(dim=-1)


def discrepancy_weights(
    reweight: Reweight,
    cls1: Tensor,
    mil_scores: Tensor | None = None,
    *,
    first_class: int = 1,
) -> Tensor | None:
    """Instance weights w of Eq. 7, detached: None or (N, A, C).

    ``"none"``: w = 1 (returns None; Table 3 row 1); ``"f1"``: w = σ(f1 logits) (Table 3
    row 2); ``"mil"``: w = the MIL instance scores ``mil_scores`` (N, A, C) (MIAL).
    """
    if reweight == "none":
        return None
    if reweight == "f1":
        return object_class_logits(cls1, first_class).sigmoid().detach()
    if reweight == "mil":
        if mil_scores is None:
            raise ValueError("reweight='mil' needs mil_scores (N, A, C) from instance_mil_scores")
        return mil_scores.detach()
    raise ValueError(f"reweight must be 'none', 'f1' or 'mil', got {reweight!r}")


def _weighted_terms(cls1: Tensor, cls2: Tensor, reweight: Reweight, mil_scores: Tensor | None, squared: bool,
                    first_class: int, *, agreement: bool, valid: Tensor | None = None) -> Tensor:
    """The per-anchor terms of the max / min step losses, (N, A, C): ``|σ1 - σ2|`` (squared
    with ``squared``), or ``1 - `` that with ``agreement``, times the weights w of
    :func:`discrepancy_weights` (detached); 0 at anchors outside ``valid`` (N, A)."""
    w = discrepancy_weights(reweight, cls1, mil_scores, first_class=first_class)
    d = _abs_or_square(cls1, cls2, squared, first_class)
    term = 1.0 - d if agreement else d
    term = term if w is None else term * w
    valid = _check_valid(cls1, valid)
    return term if valid is None else term * valid[..., None]


def max_step_unlabeled_loss(
    cls1: Tensor,
    cls2: Tensor,
    *,
    lam: float = 0.5,
    reweight: Reweight = "mil",
    mil_scores: Tensor | None = None,
    squared: bool = False,
    first_class: int = 1,
    valid: Tensor | None = None,
) -> Tensor:
    """Unlabeled-batch loss of the max step (Eq. 8, authors' form): scalar.

    ``λ · Σ_n Σ_i mean_c((1 - |σ1 - σ2|) · w)``, summed over the images of the batch.
    Minimising it maximises the (weighted) discrepancy; it equals ``-λ·l̃_dis`` up to a
    constant. Gradient should reach only f1 and f2 (the trainer freezes the rest).

    Args:
        cls1, cls2: f1 / f2 logits, (N, A, K).
        reweight, mil_scores: instance weights, see :func:`discrepancy_weights`.
        valid: (N, A) bool or None: anchors in batch padding contribute nothing.
    """
    return lam * _weighted_terms(cls1, cls2, reweight, mil_scores, squared, first_class, agreement=True,
                                 valid=valid).mean(dim=-1).sum()


def min_step_unlabeled_loss(
    cls1: Tensor,
    cls2: Tensor,
    *,
    lam: float = 0.5,
    reweight: Reweight = "mil",
    mil_scores: Tensor | None = None,
    squared: bool = False,
    first_class: int = 1,
    valid: Tensor | None = None,
) -> Tensor:
    """Unlabeled-batch discrepancy loss of the min step (Eq. 9): scalar.

    ``λ · Σ_n Σ_i mean_c(|σ1 - σ2| · w)`` = ``λ · discrepancy(...).sum()``, summed over the
    images of the batch. The min step adds the MIL loss against pseudo labels separately.
    """
    terms = _weighted_terms(cls1, cls2, reweight, mil_scores, squared, first_class, agreement=False,
                            valid=valid)
    return lam * terms.mean(dim=-1).sum(dim=-1).sum()  # = discrepancy(cls1, cls2, w).sum()
