"""MIAL's image scoring (paper Sec. 3.4) as pure functions on arrays.

Inputs are numpy arrays or torch tensors (converted to float64 numpy); outputs are numpy
arrays or Python floats. Probabilities are the sigmoid outputs of f1 and f2 for the
object classes only, (A, C) for the A anchors of one image (all pyramid levels). Arrays in
torchvision's layout with the unused background channel 0, (A, C + 1), can be passed with
``first_class=1``.

- :func:`anchor_uncertainty`: per anchor, mean over classes of ``|p1 - p2|`` (paper Eq. 3;
  ``squared=True``: ``(p1 - p2)²`` as in the authors' selection code), optionally weighted
  class by class by the MIL instance scores (Eq. 7's ``w_i``).
- :func:`aggregate`: image score = mean of the top-k anchor uncertainties (paper, k = 10,000
  for ≈100k anchors), or their mean, or their max.
- :func:`image_uncertainty`: both steps at once.
- :func:`uncertainty_map`: anchor values summed onto the image plane (paper Fig. 6).
"""

from __future__ import annotations

from typing import Literal, Union

import numpy as np
import torch

from activedet.strategies.entropy import REDUCERS

ArrayLike = Union[np.ndarray, torch.Tensor]
Aggregation = Literal["topk", "mean", "max"]
Weighting = Literal["none", "mil"]

__all__ = ["anchor_uncertainty", "aggregate", "image_uncertainty", "uncertainty_map"]


def _as_array(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    return arr


def anchor_uncertainty(
    prob1: ArrayLike,
    prob2: ArrayLike,
    *,
    squared: bool = False,
    weights: ArrayLike | None = None,
    first_class: int = 0,
) -> np.ndarray:
    """Per-anchor uncertainty: ``u[i] = mean_c(|p1[i,c] - p2[i,c]| · w[i,c])``, shape (A,).

    Args:
        prob1, prob2: class probabilities of f1 and f2, (A, C) (or (A, K) with
            ``first_class`` columns to drop, e.g. 1 for torchvision's channel 0).
        squared: use ``(p1 - p2)²`` (authors' code) instead of ``|p1 - p2|`` (paper Eq. 3).
        weights: None (w = 1) or per-anchor-and-class weights of the same shape as the
            probabilities, e.g. MIL instance scores (A, C); multiplied class by class
            before the mean over classes, as in Eq. 7.
    Raises:
        ValueError: shapes differ, are not 2-D, or contain NaN.
    """
    p1, p2 = _as_array(prob1, "prob1"), _as_array(prob2, "prob2")
    if p1.ndim != 2 or p1.shape != p2.shape:
        raise ValueError(f"prob1 and prob2 must both be (A, C), got {p1.shape} and {p2.shape}")
    if not 0 <= first_class < p1.shape[1]:
        raise ValueError(f"first_class must be in [0, {p1.shape[1] - 1}], got {first_class}")
    d = p1[:, first_class:] - p2[:, first_class:]
    d = d * d if squared else np.abs(d)
    if weights is not None:
        w = _as_array(weights, "weights")
        if w.shape == p1.shape:
            w = w[:, first_class:]
        if w.shape != d.shape:
            raise ValueError(f"weights must be {d.shape} (or {p1.shape}), got {w.shape}")
        d = d * w
    return d.mean(axis=1)


def aggregate(u: ArrayLike, how: Aggregation = "topk", k: int = 10000) -> float:
    """Image score from per-anchor uncertainties ``u`` (A,).

    ``"topk"``: mean of the ``min(k, A)`` largest values (paper); ``"mean"``; ``"max"``.

    Raises:
        ValueError: empty or NaN ``u``, ``k < 1``, unknown ``how``.
    """
    arr = _as_array(u, "u").reshape(-1)
    if arr.size == 0:
        raise ValueError("cannot aggregate an empty uncertainty array")
    if how == "topk":
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        kk = min(int(k), arr.size)
        top = np.partition(arr, arr.size - kk)[arr.size - kk:]
        return float(top.mean())
    if how in ("mean", "max"):
        return REDUCERS[how](arr)
    raise ValueError(f"how must be 'topk', 'mean' or 'max', got {how!r}")


def image_uncertainty(
    prob1: ArrayLike,
    prob2: ArrayLike,
    *,
    how: Aggregation = "topk",
    k: int = 10000,
    squared: bool = False,
    weighting: Weighting = "none",
    mil_scores: ArrayLike | None = None,
    first_class: int = 0,
) -> float:
    """One image's MIAL score: :func:`aggregate` of :func:`anchor_uncertainty`.

    ``weighting="none"`` (paper and authors' code) or ``"mil"``: weight each anchor's
    class-wise discrepancy by its MIL instance scores ``mil_scores`` (A, C) (an extension;
    the scores are per-level softmaxes over anchors, so they are small and larger on
    levels with fewer anchors).
    """
    if weighting == "none":
        weights = None
    elif weighting == "mil":
        if mil_scores is None:
            raise ValueError("weighting='mil' needs mil_scores (A, C)")
        weights = mil_scores
    else:
        raise ValueError(f"weighting must be 'none' or 'mil', got {weighting!r}")
    u = anchor_uncertainty(prob1, prob2, squared=squared, weights=weights, first_class=first_class)
    return aggregate(u, how=how, k=k)


def uncertainty_map(u: ArrayLike, anchors: ArrayLike, image_size: tuple[int, int]) -> np.ndarray:
    """Per-anchor values summed onto the image plane at each anchor's centre: (H, W).

    The pixel of an anchor ``(x1, y1, x2, y2)`` is ``(floor((y1 + y2) / 2), floor((x1 + x2) / 2))``;
    anchors sharing a pixel add up; anchors centred outside ``[0, W) × [0, H)`` (e.g. on
    batch padding) are dropped.

    Args:
        u: (A,) values, e.g. :func:`anchor_uncertainty`.
        anchors: (A, 4) xyxy boxes in the same pixel coordinates as ``image_size``.
        image_size: (H, W).
    """
    vals = _as_array(u, "u").reshape(-1)
    boxes = _as_array(anchors, "anchors")
    if boxes.ndim != 2 or boxes.shape != (vals.size, 4):
        raise ValueError(f"anchors must be ({vals.size}, 4) for {vals.size} values, got {boxes.shape}")
    h, w = int(image_size[0]), int(image_size[1])
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive (H, W), got {image_size}")
    cx = np.floor((boxes[:, 0] + boxes[:, 2]) / 2)
    cy = np.floor((boxes[:, 1] + boxes[:, 3]) / 2)
    inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
    out = np.zeros((h, w), dtype=np.float64)
    np.add.at(out, (cy[inside].astype(np.int64), cx[inside].astype(np.int64)), vals[inside])
    return out
