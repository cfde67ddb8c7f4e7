"""PPAL: plug and play active learning for object detection (Yang et al., CVPR 2024).

Two stages, both on the adapter's outputs for the kept detections (``det_probs`` and
``box_features``), so one strategy serves RetinaNet, FCOS and Faster R-CNN:

1. **Difficulty-calibrated uncertainty (DCUS).** Each class c has a training quality
   ``q_c``: the mean over its ground-truth boxes of ``p^xi * IoU^(1 - xi)`` of the detections
   covering them (IoU >= ``match_iou``; ``p``: the detection's probability of the box's class;
   none: 0). Its difficulty weight is ``w_c = 1 + alpha * upper * log(b * (1 - q_c) + 1)``,
   ``b = exp(1 / alpha) - 1``, from 1 (an easy class, ``q_c = 1``) to ``1 + upper``
   (``q_c = 0``). An image's score is ``sum_k w_{c_k} * H(p_k)`` over its detections
   scoring at least ``min_score``, ``H`` the binary entropy of the detection's probability
   of its own class.
2. **Diverse prototypes.** The top ``pool_ratio x budget`` images by that score are
   candidates. Two images' distance is category-conditioned matching: every detection of
   image i is matched to the most similar (cosine of ``box_features``) detection of image
   j with the same label (distance ``1 - cos``; no detection of that label: 2), and the
   distances are averaged weighted by the detection scores of i, then symmetrised
   ``(D_ij + D_ji) / 2``. k-means++ seeding on that distance, then k-medoids (k-centroid)
   steps, choose ``budget`` images.

Where this differs from the authors' code (ChenhongyiYang/PPAL, Apache-2.0; read, not
copied):

- ``q_c`` there is a running average (momentum 0.999) of the same quality over each
  class's positive anchors during training, kept in the detection head. Here it is measured
  with the trained model on the labeled set when the strategy selects: the strategy keeps
  nothing between rounds and no trainer changes (the limit of that running average for the
  final model).
- The entropy there is of the detection score; here of the class probability behind it
  (the same number for RetinaNet and Faster R-CNN; FCOS's score also holds centerness).
- Their distance forces the matched distance of detection slot k of image i and slot k of
  every image j to 0 (meant for i = j only); here only ``D_ii = 0``. An image without a
  detection there is at distance 0 from every image; here at distance 2 from images with
  detections (0 from one without).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from activedet.data.pool import Pool
from activedet.errors import StrategyError
from activedet.settings import Settings, setting
from activedet.strategies.base import Selection, Strategy, rank_by_score
from activedet.strategies.registry import register

if TYPE_CHECKING:
    from activedet.models.base import Adapter

EPS = 1e-10


# ---------------------------------------------------------------------- pure maths
def difficulty_weights(quality: np.ndarray, alpha: float, upper: float) -> np.ndarray:
    """(C,) difficulty weights ``1 + alpha * upper * log(b * (1 - q) + 1)``, ``b = exp(1/alpha) - 1``,
    of (C,) class qualities ``q`` in [0, 1]: 1 for ``q = 1``, ``1 + upper`` for ``q = 0``."""
    q = np.clip(np.asarray(quality, dtype=np.float64), 0.0, 1.0)
    b = math.expm1(1.0 / alpha)
    return 1.0 + alpha * upper * np.log(b * (1.0 - q) + 1.0)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """(K,) ``-(p log p + (1 - p) log(1 - p))`` of (K,) probabilities (natural log; 0 at 0 and 1)."""
    p = np.asarray(p, dtype=np.float64)
    return -(p * np.log(p + EPS) + (1.0 - p) * np.log(1.0 - p + EPS))


def dcus_score(probs: np.ndarray, labels: np.ndarray, scores: np.ndarray, weights: np.ndarray,
               min_score: float) -> float:
    """An image's difficulty-calibrated uncertainty: ``sum_k weights[labels_k - 1] * H(p_k)``
    over detections with ``scores >= min_score``; ``probs`` (K,) each detection's probability
    of its own label, ``labels`` (K,) in 1..C, ``scores`` (K,), ``weights`` (C,)."""
    keep = np.asarray(scores) >= min_score
    if not keep.any():
        return 0.0
    w = np.asarray(weights, dtype=np.float64)[np.asarray(labels)[keep] - 1]
    return float((w * binary_entropy(np.asarray(probs)[keep])).sum())


def box_quality(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, boxes: torch.Tensor, probs: torch.Tensor,
                xi: float, match_iou: float) -> torch.Tensor:
    """(G,) quality of each ground-truth box: the mean over detections with IoU >= ``match_iou``
    of ``p^xi * IoU^(1 - xi)``, ``p`` the detection's probability of the box's class (0 when no
    detection covers it). ``gt_boxes`` (G, 4), ``gt_labels`` (G,) in 1..C, ``boxes`` (K, 4),
    ``probs`` (K, C)."""
    if len(gt_boxes) == 0:
        return torch.zeros(0, dtype=torch.float64)
    if len(boxes) == 0:
        return torch.zeros(len(gt_boxes), dtype=torch.float64)
    iou = box_iou(gt_boxes.double(), boxes.double())  # (G, K)
    p = probs.double().T[gt_labels.long() - 1]  # (G, K): each detection's probability of the box's class
    q = p.clamp(min=0) ** xi * iou ** (1.0 - xi)
    covered = iou >= match_iou
    n = covered.sum(1)
    return torch.where(n > 0, (q * covered).sum(1) / n.clamp(min=1), torch.zeros_like(q[:, 0]))


def class_quality(qualities: Sequence[np.ndarray], labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """(C,) mean quality per class over every ground-truth box (:func:`box_quality` per image,
    labels 1..C); a class without a box: 0 (the hardest)."""
    total, count = np.zeros(num_classes), np.zeros(num_classes)
    for q, lab in zip(qualities, labels):
        np.add.at(total, np.asarray(lab, dtype=np.int64) - 1, np.asarray(q, dtype=np.float64))
        np.add.at(count, np.asarray(lab, dtype=np.int64) - 1, 1.0)
    return np.where(count > 0, total / np.maximum(count, 1.0), 0.0)


def matching_distances(labels: np.ndarray, scores: np.ndarray, feats: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(N, N) symmetric category-conditioned matching distance between N images.

    ``labels`` (N, K) int, ``scores`` (N, K), ``feats`` (N, K, D), ``valid`` (N, K) bool: up
    to K detections per image (padding not valid). ``d_ij = sum_a s_a m_a / sum_a s_a`` over
    image i's valid detections a, ``m_a = min_b (1 - cos(f_a, f_b))`` over image j's valid
    detections b with a's label (2 if none); ``D = (d + d^T) / 2``, ``D_ii = 0``; an image
    without a valid detection is at 2 from images with one and 0 from those without."""
    f = torch.as_tensor(feats, dtype=torch.float64)
    f = f / f.norm(dim=-1, keepdim=True).clamp(min=EPS)
    lab, s = torch.as_tensor(labels), torch.as_tensor(scores, dtype=torch.float64)
    ok = torch.as_tensor(valid, dtype=torch.bool)
    s = s * ok
    n = len(f)
    d = torch.zeros((n, n), dtype=torch.float64)
    for i in range(n):
        cos = torch.einsum("kd,njd->nkj", f[i], f).clamp(-1.0, 1.0)  # (N, K, K)
        dist = torch.where(lab[i][None, :, None] == lab[:, None, :], 1.0 - cos, torch.full_like(cos, 2.0))
        dist = dist.masked_fill(~ok[:, None, :], math.inf).amin(-1)  # (N, K): best match in each image
        dist = torch.where(torch.isinf(dist), torch.full_like(dist, 2.0), dist)
        weight = s[i].sum()
        d[i] = (dist * s[i][None, :]).sum(-1) / weight if weight > 0 else 2.0
    d = 0.5 * (d + d.T)
    empty = ~ok.any(1)
    d[empty[:, None] & empty[None, :]] = 0.0
    d.fill_diagonal_(0.0)
    return d.numpy()


def kmeanspp_medoids(dist: np.ndarray, k: int, rng: np.random.Generator, iters: int = 100) -> list[int]:
    """``k`` medoid indices of (N, N) distances: k-means++ seeding (the first uniformly at
    random, each next with probability proportional to its squared distance to the nearest
    chosen; all remaining at distance 0: uniformly), then k-medoids steps (assign each point
    to its nearest medoid, move each medoid to the member with the smallest summed distance
    to its cluster) until nothing moves or ``iters`` steps. Seeded by ``rng``."""
    n = len(dist)
    if k >= n:
        return list(range(n))
    chosen = [int(rng.integers(n))]
    near = dist[chosen[0]].astype(np.float64).copy()
    while len(chosen) < k:
        w = near ** 2
        w[chosen] = 0.0
        free = np.setdiff1d(np.arange(n), chosen)
        p = w / w.sum() if w.sum() > 0 else np.isin(np.arange(n), free) / len(free)
        nxt = int(rng.choice(n, p=p))
        chosen.append(nxt)
        near = np.minimum(near, dist[nxt])
    medoids = np.array(chosen)
    for _ in range(iters):
        assign = np.argmin(dist[:, medoids], axis=1)
        assign[medoids] = np.arange(k)  # a medoid stays in its own cluster (ties at distance 0)
        moved = medoids.copy()
        for c in range(k):
            members = np.flatnonzero(assign == c)
            moved[c] = members[np.argmin(dist[np.ix_(members, members)].sum(1))]
        if np.array_equal(moved, medoids) or len(set(moved.tolist())) < k:
            break
        medoids = moved
    return [int(m) for m in medoids]


# ---------------------------------------------------------------------- model side
@dataclass(frozen=True)
class PPALSettings(Settings):
    batch_size: int = setting(8, "images per inference batch", ge=1)
    min_score: float = setting(0.05, "detections scoring at least this count (uncertainty and matching)",
                               ge=0, le=1, provenance="authors' code: score_thr 0.05")
    pool_ratio: float = setting(4.0, "candidates: the top pool_ratio x budget images by difficulty-"
                                     "calibrated uncertainty", ge=1, provenance="authors' VOC config: 4")
    class_weight_upper: float = setting(0.2, "difficulty weights range from 1 to 1 + this", ge=0,
                                        provenance="authors' config: class_weight_ub 0.2")
    class_weight_alpha: float = setting(0.3, "alpha: curvature of the difficulty weight", gt=0,
                                        provenance="authors' config: class_weight_alpha 0.3")
    quality_xi: float = setting(0.6, "box quality p^xi * IoU^(1 - xi)", ge=0, le=1,
                                provenance="authors' code: quality_xi 0.6")
    match_iou: float = setting(0.5, "a detection covers a ground-truth box at this IoU (class quality)",
                               gt=0, le=1)
    max_boxes: int = setting(100, "detections per image kept for matching (highest scores)", ge=1,
                             provenance="authors' code: max_per_img 100")
    kmeans_iters: int = setting(100, "k-medoids steps after k-means++ seeding", ge=0,
                                provenance="authors' code: 100")


@dataclass
class _Dets:
    """One image's detections for matching: (K,) labels, scores, (K, D) features."""

    labels: np.ndarray
    scores: np.ndarray
    feats: np.ndarray


def labeled_class_quality(adapter: Adapter, dataset: Any, ids: Sequence[int], settings: PPALSettings) -> np.ndarray:
    """(C,) class quality (:func:`class_quality`) of ``adapter``'s model on the labeled ``ids``."""
    qualities, labels = [], []
    for inf in adapter.infer(dataset, list(ids), settings.batch_size, keep_anchors=False):
        gt = dataset.target(inf.image_id)
        qualities.append(box_quality(gt["boxes"], gt["labels"], inf.boxes, inf.probs, settings.quality_xi,
                                     settings.match_iou).numpy())
        labels.append(gt["labels"].numpy())
    return class_quality(qualities, labels, adapter.num_classes)


def score_pool(adapter: Adapter, dataset: Any, ids: Sequence[int], weights: np.ndarray,
               settings: PPALSettings, progress: bool) -> tuple[dict[int, float], dict[int, _Dets]]:
    """One inference pass over ``ids``: each image's :func:`dcus_score` and its detections
    (at least ``min_score``, the ``max_boxes`` best) for matching."""
    scores: dict[int, float] = {}
    dets: dict[int, _Dets] = {}
    for inf in adapter.infer(dataset, list(ids), settings.batch_size, progress=progress, keep_anchors=False):
        lab = inf.labels.numpy().astype(np.int64)
        own = inf.probs[torch.arange(len(lab)), torch.as_tensor(lab) - 1].double().numpy() if len(lab) else \
            np.zeros(0)
        sc = inf.scores.double().numpy()
        scores[inf.image_id] = dcus_score(own, lab, sc, weights, settings.min_score)
        keep = np.flatnonzero(sc >= settings.min_score)[: settings.max_boxes]  # detections come best first
        dets[inf.image_id] = _Dets(lab[keep], sc[keep], inf.extra["box_features"][keep].double().numpy())
    return scores, dets


def stack_detections(dets: Sequence[_Dets]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pad per-image detections to (N, K) labels, scores, valid and (N, K, D) features."""
    n, k = len(dets), max([len(x.labels) for x in dets] + [1])
    dim = next((x.feats.shape[1] for x in dets if x.feats.ndim == 2 and x.feats.shape[1]), 1)
    labels, scores = np.zeros((n, k), np.int64), np.zeros((n, k))
    feats, valid = np.zeros((n, k, dim)), np.zeros((n, k), bool)
    for i, x in enumerate(dets):
        m = len(x.labels)
        labels[i, :m], scores[i, :m], valid[i, :m] = x.labels, x.scores, True
        if m:
            feats[i, :m] = x.feats
    return labels, scores, feats, valid


@register
class PPALStrategy(Strategy):
    name = "ppal"
    reference = "Yang et al., CVPR 2024, Plug and Play Active Learning for Object Detection (PPAL)"
    tasks = ("detection",)
    archs = None  # any model that provides what it wants
    wants: ClassVar[frozenset[str]] = frozenset({"det_probs", "box_features"})
    settings_type = PPALSettings

    def _select(self, adapter: Adapter, pool: Pool, budget: int, rng: np.random.Generator,
                batch: int) -> Selection:
        s: PPALSettings = self.settings
        if pool.dataset is None:
            raise StrategyError("strategy 'ppal' needs the pool's dataset (Pool.from_dataset)")
        quality = labeled_class_quality(adapter, pool.dataset, pool.labeled, s)
        weights = difficulty_weights(quality, s.class_weight_alpha, s.class_weight_upper)
        scores, dets = score_pool(adapter, pool.dataset, pool.unlabeled, weights, s, self.progress)
        ranked = rank_by_score(pool.unlabeled, scores, len(pool.unlabeled), rng)
        k = min(budget, batch or budget)
        cands = ranked[: min(len(ranked), max(k, math.ceil(s.pool_ratio * k)))]
        dist = matching_distances(*stack_detections([dets[i] for i in cands]))
        picks = [cands[j] for j in kmeanspp_medoids(dist, k, rng, s.kmeans_iters)]
        picks.sort(key=lambda i: (-scores[i], ranked.index(i)))  # best first
        taken = set(picks)
        rest = [i for i in ranked if i not in taken]
        info = {"candidates": len(cands), "class_quality": [float(q) for q in quality]}
        return Selection((picks + rest)[:budget], scores, info)


__all__ = ["PPALSettings", "PPALStrategy", "binary_entropy", "box_quality", "class_quality", "dcus_score",
           "difficulty_weights", "kmeanspp_medoids", "matching_distances", "stack_detections"]
