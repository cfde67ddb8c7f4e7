"""MIAL: multiple instance active learning (Yuan et al., CVPR 2021 / TPAMI), RetinaNet or FCOS.

With ``model.arch: fcos`` every FCOS location is an instance (one "anchor" per location):
:class:`~activedet.models.mial_head.MIALFCOSHead`; the box branch and its losses are FCOS's
(GIoU + centerness, ``model.box_prior``), so ``regression_loss`` is RetinaNet's only.

The strategy holds MIAL's settings and scores images; the model variant ``"mial"`` (the
head with f1, f2 and f_mil, :mod:`activedet.models.mial_head`) and the trainer ``"mial"``
(label-set / max / min stages, :mod:`activedet.training.mial`) are chosen through the
class attributes the loop reads. The loop hands ``strategy.params`` to the trainer, so one
``strategy:`` block in the config carries everything:

- training (:class:`activedet.models.mial_settings.MIALTrainSettings`): ``lambda`` (0.5),
  ``iul`` (min/max stages on), ``iur`` (MIL head on), ``reweight`` (``w_i`` of Eq. 7:
  ``none`` | ``f1`` | ``mil``), ``train_squared``, ``pseudo_threshold``, ``label_epochs``,
  ``rounds``, ``repeat``, ``order`` (``max_min`` paper | ``min_max`` authors' code),
  ``min_epochs``, ``max_epochs``, ``min_lr_scale``, ``max_lr_scale``, ``final_lr_scale``,
  ``detector`` (``joint``: one model runs the schedule, the paper | ``separate``: the detector
  trains as the plain trainer and a copy of it, the scorer, runs the IUL rounds and scores |
  ``auto``, the default: ``separate`` when there are IUL rounds to run, else ``joint``);
- head (:class:`~activedet.models.mial_settings.MIALHeadSettings`): ``mil_weighting`` (``paper`` | ``code``, Eq. 5's anchor factor),
  ``regression_loss`` (RetinaNet: ``smooth_l1`` paper | ``l1`` authors' code), ``det_reduction``
  (``mean`` of the f1 and f2 focal losses, authors' code | ``sum``, paper Eq. 1);
- selection (Sec. 3.4): ``top_k`` (10,000, clipped to the anchor count), ``aggregate``
  (``topk`` | ``mean`` | ``max``), ``uncertainty`` (``abs`` paper | ``squared`` code),
  ``weighting`` (``none`` | ``mil``: weight each anchor's class-wise discrepancy by its MIL
  instance score), ``score_fraction`` (score a random fraction of the pool, the COCO
  protocol's 1/5; unscored images come after every scored one), ``batch_size``;
- the keys of every ranking strategy: ``cost_aware``, ``batch`` and ``preselect``
  (:mod:`activedet.strategies.diversity`).

Scoring is batched and keeps one float per image, so memory does not grow with the pool.
Every image is scored (an image without objects still has anchors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from activedet.data.pool import Pool
from activedet.errors import ConfigError, StrategyError
from activedet.models import mial_losses as L
from activedet.models.mial_settings import MIALHeadSettings, MIALTrainSettings
from activedet.settings import Settings, setting
from activedet.strategies.base import ImageScores, Selection, Strategy
from activedet.strategies.diversity import predicted_class
from activedet.strategies.mial_scoring import anchor_uncertainty, image_uncertainty
from activedet.strategies.registry import register

if TYPE_CHECKING:
    from activedet.models.base import Adapter

__all__ = ["MIALStrategy", "MIALSelectSettings", "MIALSettings", "anchor_maps", "mial_instance_scores"]


@dataclass(frozen=True)
class MIALSelectSettings(Settings):
    """Selection keys (Sec. 3.4)."""

    top_k: int = setting(10000, "anchors whose uncertainties are averaged (clipped to the anchor count)",
                         ge=1, provenance="paper: 10,000 of ~100k anchors at 1000x600")
    aggregate: Literal["topk", "mean", "max"] = setting("topk", "how anchor uncertainties make the image score")
    weighting: Literal["none", "mil"] = setting(
        "none", "weight each anchor's discrepancy by its MIL instance score (needs iur: true)")
    uncertainty: Literal["abs", "squared"] = setting(
        "abs", "anchor discrepancy |p1 - p2| or its square",
        provenance="paper: abs; the authors' code: squared")
    score_fraction: float = setting(1.0, "score a seeded random fraction of the pool; the rest come "
                                         "after every scored image", gt=0, le=1,
                                    provenance="the COCO protocol scores 1/5 of the pool")
    batch_size: int = setting(8, "images per inference batch", ge=1)


@dataclass(frozen=True)
class MIALSettings(MIALSelectSettings, MIALHeadSettings, MIALTrainSettings):
    """Every key of the ``mial`` strategy: training, head, selection."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weighting == "mil" and not self.iur:
            raise ConfigError("strategy key 'weighting' = 'mil' needs the MIL head (iur: true)")


def mial_instance_scores(head: Any, extra: dict[str, Any]) -> torch.Tensor:
    """MIL instance scores (Eq. 5) of one image from ``Inference.extra``: (A, C).

    ``extra`` holds ``cls_logits``, ``cls_logits2``, ``mil_logits`` (A, C) without the
    background channel, ``num_anchors_per_level`` and optionally ``valid`` (A,) (anchors
    in batch padding score 0 and leave the softmax over anchors); the head supplies its
    Eq. 5 mode and class activation.
    """
    if "mil_logits" not in extra:
        raise StrategyError("the MIAL head was built without MIL (iur: false): no MIL scores")
    valid = extra.get("valid")
    return L.instance_mil_scores(
        extra["cls_logits"][None], extra["cls_logits2"][None], extra["mil_logits"][None],
        extra["num_anchors_per_level"], mode=head.mil_weighting, first_class=0,
        class_activation=head.mil_class_activation, valid=None if valid is None else valid[None],
    )[0]


def anchor_maps(head: Any, extra: dict[str, Any], squared: bool = False,
                weighting: str = "none") -> tuple[np.ndarray, np.ndarray | None]:
    """Per-anchor instance uncertainty (A,) and, with the MIL head, the MIL score summed over
    classes (A,), from one image's ``Inference.extra``."""
    p1 = torch.sigmoid(extra["cls_logits"])
    p2 = torch.sigmoid(extra["cls_logits2"])
    mil = mial_instance_scores(head, extra) if "mil_logits" in extra else None
    weights = mil if weighting == "mil" else None
    u = anchor_uncertainty(p1, p2, squared=squared, weights=weights)
    return u, None if mil is None else mil.sum(-1).double().numpy()


def _scorer(adapter: Adapter) -> Any:
    """The adapter around the model that scores: the scorer of ``detector: separate``
    (:meth:`~activedet.models.detection_adapter.DetectionAdapter.scoring`), else ``adapter``."""
    return adapter.scoring()


@register
class MIALStrategy(Strategy):
    name = "mial"
    reference = "Yuan et al. 2021, Multiple Instance Active Learning for Object Detection (MIAL)"
    tasks = ("detection",)
    archs = None  # every model that provides what it wants (the dense detector families)
    wants = frozenset({"mial_head", "anchor_probs"})
    model_variant = "mial"
    trainer = "mial"
    settings_type = MIALSettings
    ranks = True  # its _select scores a fraction of the pool, then ranks like the others

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._given = set(params)  # the keys set in the config (not defaulted)

    def check_model(self, task: str, arch: str) -> None:
        """Also: ``regression_loss`` is RetinaNet's; FCOS keeps its GIoU box and centerness losses."""
        super().check_model(task, arch)
        if arch == "fcos" and "regression_loss" in self._given:
            raise StrategyError("strategy key 'regression_loss' applies to model.arch 'retinanet' only: with "
                                "'fcos' the MIAL head keeps FCOS's GIoU box and centerness losses; remove the key")

    def model_kwargs(self) -> dict[str, Any]:
        return {"use_mil": bool(self.settings.iur), "mil_weighting": self.settings.mil_weighting,
                "regression_loss": self.settings.regression_loss,
                "det_reduction": self.settings.det_reduction}

    def _select(self, adapter: Adapter, pool: Pool, budget: int, rng: np.random.Generator,
                batch: int) -> Selection:
        adapter = _scorer(adapter)
        candidates = pool.unlabeled
        frac = float(self.settings.score_fraction)
        to_score = candidates
        if frac < 1:
            n = min(len(candidates), max(budget, math.ceil(frac * len(candidates))))
            to_score = sorted(candidates[int(j)] for j in rng.choice(len(candidates), size=n, replace=False))
        return self.rank(adapter, pool, candidates, self.score_all(adapter, pool, to_score, rng), budget, rng, batch)

    def score(self, adapter: Adapter, pool: Pool, ids: list[int], rng: np.random.Generator) -> dict[int, float]:
        """Image score = aggregate (mean of the top-k by default) of the uncertainties of the
        anchors inside the image (batches hold one input size, so a score does not depend on
        the batch-mates). With ``detector: separate`` the scorer scores, not the detector."""
        adapter = _scorer(adapter)
        head = adapter.mial_head()
        if adapter.task != "detection" or head is None:
            raise StrategyError("strategy 'mial' needs a RetinaNet or FCOS with the MIAL head (model variant 'mial')")
        p = self.settings
        out: dict[int, float] = {}
        boxes: dict[int, int] = {}
        classes: dict[int, int] = {}
        infs = adapter.infer(pool.dataset, ids, p.batch_size, keep_anchors=True)
        for inf in tqdm(infs, total=len(ids), desc="mial scoring", unit="img", disable=not self.progress, leave=False):
            ex = inf.extra
            mil = mial_instance_scores(head, ex) if p.weighting == "mil" else None
            keep = ex["valid"]
            out[inf.image_id] = image_uncertainty(
                torch.sigmoid(ex["cls_logits"][keep]), torch.sigmoid(ex["cls_logits2"][keep]), how=p.aggregate,
                k=p.top_k, squared=p.uncertainty == "squared", weighting=p.weighting,
                mil_scores=None if mil is None else mil[keep])
            # what cost_aware and class_balanced read: no second pass
            boxes[inf.image_id], classes[inf.image_id] = self.predicted_boxes(inf), predicted_class(inf)
        return ImageScores(out, boxes, classes)
