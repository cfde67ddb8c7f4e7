"""Uncertainty sampling: entropy, max / mean instance uncertainty, margin, least confidence.

An image's score aggregates the uncertainty of its instances: the detector's kept
detections (score >= ``min_score``) or, for a classifier, the one image prediction.

Instance uncertainty (``measure``), from a probability row ``p`` over C classes:

- ``entropy``: detection — sum over classes of binary entropies (per-class sigmoids, the
  convention of :mod:`activedet.strategies.entropy`); classification — Shannon entropy;
- ``margin``: ``1 − (p_(1) − p_(2))``, the gap between the two most probable classes
  (Scheffer et al. 2001); with one class the gap between ``p`` and ``1 − p``;
- ``least_confidence``: ``1 − max_c p_c`` (Lewis & Gale 1994).

``max_uncertainty`` / ``mean_uncertainty`` are MIAL's Table 1 image-uncertainty rules
(image = max / mean of its instance uncertainties) with a plain detector's instance
uncertainty; ``mean_uncertainty`` with ``measure: entropy`` is ``entropy``.
Images without a kept detection are unscored (they fill the budget at random, after every
scored image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, get_args

import numpy as np
import torch

from activedet.data.pool import Pool
from activedet.errors import ConfigError
from activedet.settings import Settings, setting
from activedet.strategies.base import ImageScores, Strategy
from activedet.strategies.diversity import predicted_class
from activedet.strategies.entropy import aggregate, binary_entropy, categorical_entropy
from activedet.strategies.registry import register

if TYPE_CHECKING:
    from activedet.models.base import Adapter

Measure = Literal["entropy", "margin", "least_confidence"]
MEASURES: tuple[str, ...] = get_args(Measure)


def margin_uncertainty(probs: torch.Tensor) -> torch.Tensor:
    """probs (K, C) -> (K,) ``1 − (p_(1) − p_(2))``; for C = 1, ``1 − |2p − 1|``."""
    if probs.shape[-1] == 1:
        p = probs[:, 0]
        return 1.0 - (2.0 * p - 1.0).abs()
    top2 = probs.topk(2, dim=-1).values
    return 1.0 - (top2[:, 0] - top2[:, 1])


def least_confidence(probs: torch.Tensor) -> torch.Tensor:
    """probs (K, C) -> (K,) ``1 − max_c p_c``."""
    return 1.0 - probs.max(-1).values


def instance_uncertainty(probs: torch.Tensor, measure: str, task: str) -> torch.Tensor:
    """probs (K, C) -> (K,) uncertainty of each instance under ``measure``.

    ``task`` picks the entropy form: binary per class (detection) or categorical.
    """
    if probs.shape[0] == 0:
        return probs.new_zeros((0,))
    if measure == "entropy":
        return categorical_entropy(probs) if task == "classification" else binary_entropy(probs)
    if measure == "margin":
        return margin_uncertainty(probs)
    if measure == "least_confidence":
        return least_confidence(probs)
    raise ConfigError(f"strategy key 'measure' = {measure!r} is not one of {', '.join(MEASURES)}")


@dataclass(frozen=True)
class _Kept(Settings):
    min_score: float = setting(0.05, "detections scoring at least this are the image's instances "
                                     "(detectors)", ge=0, le=1)
    batch_size: int = setting(8, "images per inference batch", ge=1)


@dataclass(frozen=True)
class AggregateSettings(_Kept):
    """Settings of the strategies whose instance measure is fixed."""

    aggregate: Literal["mean", "max", "sum"] = setting("mean", "how instance uncertainties make the image score")


@dataclass(frozen=True)
class MeasureSettings(_Kept):
    """Settings of the strategies whose aggregation is fixed."""

    measure: Measure = setting("entropy", "instance uncertainty: entropy, margin or least confidence")


class _InstanceUncertainty(Strategy):
    """Image score = ``aggregate`` of instance uncertainties under ``measure``.

    Subclasses fix one of the two through ``fixed`` (a key -> value map that the settings
    cannot change) and expose the other as a setting.
    """

    fixed: ClassVar[dict[str, str]] = {}

    def _setting(self, key: str) -> str:
        return self.fixed.get(key) or getattr(self.settings, key)

    def score(self, adapter: Adapter, pool: Pool, ids: list[int], rng: np.random.Generator) -> dict[int, float]:
        measure, how = self._setting("measure"), self._setting("aggregate")
        min_score = self.settings.min_score
        extra = {"keep_anchors": False} if adapter.task == "detection" else {}
        out: dict[int, float] = {}
        boxes: dict[int, int] = {}
        classes: dict[int, int] = {}
        for inf in adapter.infer(pool.dataset, ids, self.settings.batch_size, progress=self.progress, **extra):
            probs = inf.probs if adapter.task == "classification" else inf.probs[inf.scores >= min_score]
            s = aggregate(instance_uncertainty(probs.float(), measure, adapter.task), how)
            if s is not None:
                out[inf.image_id] = s
            # what cost_aware and class_balanced read: no second pass
            boxes[inf.image_id], classes[inf.image_id] = self.predicted_boxes(inf), predicted_class(inf)
        return ImageScores(out, boxes if adapter.task == "detection" else None, classes)


@register
class EntropyStrategy(_InstanceUncertainty):
    name = "entropy"
    reference = "Settles & Craven 2008 (uncertainty sampling); MIAL baseline: mean instance entropy"
    fixed = {"measure": "entropy"}
    settings_type = AggregateSettings


@register
class MaxUncertaintyStrategy(_InstanceUncertainty):
    name = "max_uncertainty"
    reference = "MIAL (Yuan et al. 2021) Table 1: image uncertainty = max instance uncertainty"
    fixed = {"aggregate": "max"}
    settings_type = MeasureSettings


@register
class MeanUncertaintyStrategy(_InstanceUncertainty):
    name = "mean_uncertainty"
    reference = "MIAL (Yuan et al. 2021) Table 1: image uncertainty = mean instance uncertainty"
    fixed = {"aggregate": "mean"}
    settings_type = MeasureSettings


@register
class MarginStrategy(_InstanceUncertainty):
    name = "margin"
    reference = "Scheffer et al. 2001 (margin sampling); instance 1 - (p1 - p2), aggregated per image"
    fixed = {"measure": "margin"}
    settings_type = AggregateSettings


@register
class LeastConfidenceStrategy(_InstanceUncertainty):
    name = "least_confidence"
    reference = "Lewis & Gale 1994 (least confidence); instance 1 - max p, aggregated per image"
    fixed = {"measure": "least_confidence"}
    settings_type = AggregateSettings


__all__ = ["MEASURES", "instance_uncertainty", "least_confidence", "margin_uncertainty"]
