"""Annotator time: what it costs to turn a model's pre-annotations into an image's true boxes.

An annotator looks at the image; each pre-annotated box that is right is verified, each
one that overlaps a true box but is off (a loose box, or the wrong class) is adjusted, each
false one deleted, and each true box no pre-annotation found is drawn:

    seconds = look + verify * right + adjust * off + delete * false + draw * missed

Matching is pycocotools' greedy rule: pre-annotations in descending score, each to the
unmatched true box of its class with the highest IoU at least ``accept_iou`` (right). The
rest are then matched the same way to the still unmatched true boxes of any class at IoU at
least ``overlap_iou`` (off). Unmatched pre-annotations are false, unmatched true boxes
missed. Without pre-annotations (round 0, or no model) every box is drawn.

Default times (seconds; all configurable under the config's ``annotator:`` section and
recorded in the run's ledger):

- ``draw`` 7.0: one box by extreme clicking, about 7 s per box (Papadopoulos et al.,
  "Extreme clicking for efficient object annotation", ICCV 2017). Drawing a high-quality
  box the ILSVRC way took about 35 s: set ``draw: 35`` to count that way;
- ``verify`` 1.6: a yes/no verification of one box. Our assumption, not a figure checked
  against a paper: Papadopoulos et al. ("We don't need no bounding-boxes", CVPR 2016) found
  verifying instead of drawing cut total annotation time 6-9x, which is all we take from it;
- ``adjust`` 7.0, ``delete`` 1.6, ``look`` 1.6: our assumptions too: adjusting a box costs
  a redraw, deleting one a verification, and a look at the image a verification.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from activedet.errors import ConfigError


@dataclass
class AnnotatorTimes:
    """Seconds per action, and the pre-annotation rules (see the module docstring); the
    config's ``annotator:`` section."""

    look: float = 1.6
    verify: float = 1.6
    adjust: float = 7.0
    delete: float = 1.6
    draw: float = 7.0
    #: detections at least this confident are shown as pre-annotations (``select``'s default)
    prelabel_score: float = 0.5
    accept_iou: float = 0.5  # a pre-annotation of the right class at least this close is right
    overlap_iou: float = 0.1  # one this close to an unmatched true box is off (adjusted)

    def __post_init__(self) -> None:
        if all(isinstance(getattr(self, f), (int, float)) for f in ("look", "verify", "adjust", "delete", "draw",
                                                                     "accept_iou", "overlap_iou")):
            self.check()  # else the config reader converts the values, then checks

    def check(self) -> None:
        for name in ("look", "verify", "adjust", "delete", "draw"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"config key 'annotator.{name}' = {getattr(self, name)!r} must be >= 0 seconds")
        if not 0 < self.overlap_iou <= self.accept_iou <= 1:
            raise ConfigError(f"config keys annotator.overlap_iou ({self.overlap_iou}) and accept_iou "
                              f"({self.accept_iou}) need 0 < overlap_iou <= accept_iou <= 1")


@dataclass(frozen=True)
class Edits:
    """What an annotator does on one image: counts of each action."""

    right: int = 0
    off: int = 0
    false: int = 0
    missed: int = 0

    def seconds(self, t: AnnotatorTimes) -> float:
        return t.look + t.verify * self.right + t.adjust * self.off + t.delete * self.false + t.draw * self.missed


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) and (M, 4) xyxy boxes -> (N, M) IoU (pycocotools' ``maskUtils.iou`` on boxes)."""
    from pycocotools import mask as mask_utils

    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    xywh = lambda x: np.column_stack([x[:, 0], x[:, 1], x[:, 2] - x[:, 0], x[:, 3] - x[:, 1]]).astype(np.float64)
    return np.asarray(mask_utils.iou(xywh(a).tolist(), xywh(b).tolist(), [0] * len(b)), np.float64).reshape(len(a), len(b))


def _greedy(order: np.ndarray, iou: np.ndarray, allowed: np.ndarray, threshold: float,
            gt_taken: np.ndarray) -> np.ndarray:
    """pycocotools' rule: each prediction in ``order`` takes the untaken true box with the
    highest IoU >= ``threshold`` among ``allowed`` (N, M) bool; returns (N,) bool matched and
    marks ``gt_taken`` (M,) in place."""
    matched = np.zeros(iou.shape[0], bool)
    for p in order:
        cand = np.where(allowed[p] & ~gt_taken & (iou[p] >= threshold), iou[p], -1.0)
        if cand.size and cand.max() >= 0:
            g = int(cand.argmax())
            gt_taken[g] = True
            matched[p] = True
    return matched


def edits(pred_boxes: np.ndarray, pred_labels: np.ndarray, pred_scores: np.ndarray, true_boxes: np.ndarray,
          true_labels: np.ndarray, t: AnnotatorTimes) -> Edits:
    """The annotator's actions on one image: predictions (K, 4) xyxy / (K,) / (K,) against
    true boxes (M, 4) / (M,); predictions below ``t.prelabel_score`` are not shown. Pass
    empty predictions for an image without pre-annotations (every box drawn)."""
    keep = np.asarray(pred_scores) >= t.prelabel_score
    boxes, labels = np.asarray(pred_boxes, np.float64).reshape(-1, 4)[keep], np.asarray(pred_labels)[keep]
    order = np.argsort(-np.asarray(pred_scores)[keep], kind="stable")
    gt_boxes = np.asarray(true_boxes, np.float64).reshape(-1, 4)
    iou = box_iou(boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), bool)
    same_class = labels[:, None] == np.asarray(true_labels)[None, :]
    right = _greedy(order, iou, same_class, t.accept_iou, taken)
    off = _greedy(order[~right[order]], iou, np.ones_like(same_class), t.overlap_iou, taken)
    return Edits(right=int(right.sum()), off=int(off.sum()), false=int(len(boxes) - right.sum() - off.sum()),
                 missed=int((~taken).sum()))


def scratch(n_boxes: int) -> Edits:
    """An image labeled without pre-annotations: every one of its ``n_boxes`` drawn."""
    return Edits(missed=int(n_boxes))


__all__ = ["AnnotatorTimes", "Edits", "box_iou", "edits", "scratch"]
