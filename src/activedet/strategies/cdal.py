"""CDAL-CS: contextual diversity (Agarwal et al., ECCV 2020) with k-center greedy selection.

Per image and predicted class c, the class-specific confusion is the entropy-weighted mean
of the probability vectors of the regions (kept detections) predicted as c::

    P_I^c = Σ_{r: label(r) = c} w_r P_r / Σ w_r,    w_r = H(P_r)

(the authors' preprocessing weights regions by the entropy of their prediction). The
contextual diversity of two images is the mean over classes present in both of the
symmetric KL divergence ``½ KL(P_a^c ‖ P_b^c) + ½ KL(P_b^c ‖ P_a^c)`` (0 when they share no
class, as in the authors' CDAL_CS.py); selection is k-center greedy on that distance.

Detector class scores are independent per-class probabilities (sigmoids; Faster R-CNN's
softmax without background is treated the same way), so a region's "distribution" is the
vector of C Bernoullis: KL sums the C binary KLs and H is the summed binary entropy (the
convention of :mod:`activedet.strategies.entropy`). This stays meaningful with one class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from activedet import distributed
from activedet.data.pool import Pool
from activedet.errors import StrategyError
from activedet.settings import setting
from activedet.strategies.base import Selection, Strategy
from activedet.strategies.coreset import CoresetSettings, candidate_subset, k_center_greedy
from activedet.strategies.entropy import binary_entropy
from activedet.strategies.registry import register

if TYPE_CHECKING:
    from activedet.models.base import Adapter

_EPS = 1e-6


def contextual_feature(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class-specific confusion of one image.

    probs (K, C) per-class probabilities of K regions, labels (K,) predicted class in
    0..C-1 -> (C, C) matrix whose row c is P_I^c (entropy-weighted mean of the probs of the
    regions labeled c), or NaN when no region is labeled c. Weights are the summed binary
    entropies, floored at 1e-6 so confident-only classes still get a row.
    """
    out = torch.full((num_classes, num_classes), float("nan"), dtype=torch.float64)
    if probs.shape[0] == 0:
        return out
    p = probs.double().clamp(_EPS, 1 - _EPS)
    w = binary_entropy(p).clamp_min(_EPS)  # (K,)
    for c in labels.unique().tolist():
        sel = labels == c
        out[int(c)] = (w[sel, None] * p[sel]).sum(0) / w[sel].sum()
    return out


def contextual_diversity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise contextual diversity of two sets of images.

    a (n, C, C), b (m, C, C) from :func:`contextual_feature` (NaN rows = class absent)
    -> (n, m): mean over the classes present in both images of the symmetric Bernoulli KL
    ``½ Σ_k (a_k − b_k)(logit a_k − logit b_k)``; 0 where the images share no class.
    """
    pa, pb = torch.nan_to_num(a, nan=0.5), torch.nan_to_num(b, nan=0.5)
    la, lb = torch.logit(pa), torch.logit(pb)
    # ½ Σ_k (a−b)(la−lb) = ½ (Σ a·la + Σ b·lb − a·lb − b·la), per class c: (n, m)
    aa = (pa * la).sum(-1)  # (n, C)
    bb = (pb * lb).sum(-1)  # (m, C)
    cross = torch.einsum("ick,jck->ijc", pa, lb) + torch.einsum("ick,jck->ijc", la, pb)
    skl = 0.5 * (aa[:, None, :] + bb[None, :, :] - cross)  # (n, m, C)
    both = (~a[..., 0].isnan())[:, None, :] & (~b[..., 0].isnan())[None, :, :]  # (n, m, C)
    count = both.sum(-1)
    total = (skl.clamp_min(0.0) * both).sum(-1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))


def cdal_features(adapter: Adapter, dataset: Any, ids: list[int], min_score: float,
                  batch_size: int, progress: bool = False) -> torch.Tensor:
    """(N, C, C) contextual features of ``ids``, rows in the order of ``ids``, from the
    detector's kept detections."""
    rows = {}
    for inf in adapter.infer(dataset, ids, batch_size, progress=progress, keep_anchors=False):
        keep = inf.scores >= min_score
        rows[inf.image_id] = contextual_feature(inf.probs[keep], inf.labels[keep] - 1, adapter.num_classes)
    return torch.stack([rows[i] for i in ids]) if ids else torch.zeros((0, adapter.num_classes, adapter.num_classes))


@dataclass(frozen=True)
class CDALSettings(CoresetSettings):
    min_score: float = setting(0.05, "detections scoring at least this are the image's regions", ge=0, le=1)
    chunk_size: int = setting(512, "block size of the distance computation (memory, not result)", ge=1)


@register
class CDALStrategy(Strategy):
    name = "cdal"
    reference = "Agarwal et al. 2020 (CDAL-CS: contextual diversity + k-center greedy)"
    tasks = ("detection",)
    archs = None  # any model that provides what it wants
    wants = frozenset({"det_probs"})
    settings_type = CDALSettings

    def _select(self, adapter: Adapter, pool: Pool, budget: int, rng: np.random.Generator,
                batch: int) -> Selection:
        if adapter.task != "detection":
            raise StrategyError(f"strategy 'cdal' needs a detector, got a {adapter.task} model")
        cands = candidate_subset(pool, self.settings.subset, rng)
        if budget > len(cands):
            raise StrategyError(f"strategy 'cdal': subset of {len(cands)} is smaller than the budget {budget}")
        labeled = list(pool.labeled)
        bs = int(self.settings.batch_size)
        feats = torch.from_numpy(distributed.gather_rows(  # sharded over processes
            lambda part: cdal_features(adapter, pool.dataset, part, self.settings.min_score, bs,
                                       self.progress).numpy(), labeled + cands, bs))
        n, c = feats.shape[0], adapter.num_classes
        mask = np.zeros(n, dtype=bool)
        mask[:len(labeled)] = True

        def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return contextual_diversity(x.view(-1, c, c), y.view(-1, c, c))

        picks, gains = k_center_greedy(feats.reshape(n, c * c), mask, budget, rng,
                                       int(self.settings.chunk_size), distance)
        ids = [cands[p - len(labeled)] for p in picks]
        return Selection(ids, {i: float(g) if np.isfinite(g) else 0.0 for i, g in zip(ids, gains)})


__all__ = ["contextual_feature", "contextual_diversity", "cdal_features"]
