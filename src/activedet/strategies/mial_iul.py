"""MIAL's instance uncertainty learning for image classification (MIAL paper, Table 2).

The model is a two-head classifier (adapter variant ``"mial"``) trained by the
``mial_iul`` trainer (label-set training, then max- and min-discrepancy stages on
unlabeled images; see :mod:`activedet.training.mial_iul`). An image's score is the
discrepancy of the two heads, ``mean_c |p1_c − p2_c|`` of their softmax probabilities
(paper Eq. 3 with one instance per image); the highest-scored images are selected.

Keys: the trainer's (:class:`activedet.models.mial_settings.IULTrainSettings`:
``lambda``, ``iul``, ``label_epochs``, ``rounds``, ...), ``batch_size`` (inference) and ``selection``:
``discrepancy`` (default) or ``random``. Table 2 selects at random in both of its rows and
compares training with IUL (``iul: true``) and without (``iul: false``): that is
``selection: random`` with each ``iul`` value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from activedet.data.pool import Pool
from activedet.errors import ConfigError
from activedet.models.mial_settings import IULTrainSettings
from activedet.settings import setting
from activedet.strategies.base import Strategy
from activedet.strategies.mial_scoring import anchor_uncertainty
from activedet.strategies.registry import register

if TYPE_CHECKING:
    from activedet.models.base import Adapter

__all__ = ["MIALIULStrategy", "head_discrepancy"]


def head_discrepancy(probs1: np.ndarray | torch.Tensor, probs2: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, C), (N, C) class probabilities of the two heads -> (N,) float64
    ``mean_c |probs1[n, c] − probs2[n, c]|``. Raises ValueError on a shape mismatch or NaN."""
    return anchor_uncertainty(probs1, probs2)


@dataclass(frozen=True)
class MIALIULSettings(IULTrainSettings):
    batch_size: int = setting(64, "images per inference batch", ge=1)
    selection: Literal["discrepancy", "random"] = setting(
        "discrepancy", "rank by the heads' discrepancy, or select at random (Table 2 trains with and "
                       "without IUL and selects at random in both rows)")


@register
class MIALIULStrategy(Strategy):
    name = "mial_iul"
    reference = ("Yuan et al., CVPR 2021 (MIAL), Table 2: instance uncertainty learning for "
                 "classification; score = mean |p1 - p2| of two adversarial heads")
    tasks = ("classification",)
    model_variant = "mial"
    trainer = "mial_iul"
    settings_type = MIALIULSettings

    def score(self, adapter: Adapter, pool: Pool, ids: list[int], rng: np.random.Generator) -> dict[int, float]:
        if adapter.variant != "mial":
            raise ConfigError(f"strategy 'mial_iul' needs the two-head classifier (variant 'mial'), "
                              f"got variant {adapter.variant!r}")
        if self.settings.selection == "random":  # unscored: the base class ranks them by rng
            return {}
        out_ids: list[int] = []
        p1: list[torch.Tensor] = []
        p2: list[torch.Tensor] = []
        for inf in adapter.infer(pool.dataset, ids, self.settings.batch_size):
            out_ids.append(inf.image_id)
            p1.append(inf.extra["probs1"])
            p2.append(inf.extra["probs2"])
        if not out_ids:
            return {}
        scores = head_discrepancy(torch.stack(p1), torch.stack(p2))
        return {i: float(s) for i, s in zip(out_ids, scores)}
