"""The strategy contract.

A strategy ranks unlabeled images. ``select(adapter, pool, budget, rng)`` returns
``budget`` distinct unlabeled ids, best first, and leaves the per-image scores it computed
in ``last_scores`` (recorded in the ledger). Scoring is a pure function of model outputs,
kept as a free function next to each strategy so it can be tested on arrays.

A strategy never trains. It declares what it needs from the model and the trainer through
class attributes that the loop reads without asking which strategy it holds:

- ``tasks``: the tasks it applies to (``detection``, ``classification``);
- ``archs``: model architectures it can score (``None``: any);
- ``model_variant``: which adapter variant to build (``"plain"``, ``"mial"``, ...);
- ``trainer``: which training schedule to run (``"plain"``, ``"mial"``, ...);
- ``settings_type``: its declared settings (:mod:`activedet.settings`), the trainer's
  included; ranking strategies (the default ``_select``, or ``ranks = True``) also get
  :class:`RankingSettings`: ``cost_aware`` and the batch keys of
  :mod:`activedet.strategies.diversity` (``batch``, ``preselect``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np

from activedet import distributed
from activedet.data.pool import Pool
from activedet.errors import StrategyError
from activedet.settings import NoSettings, Settings, setting
from activedet.strategies.diversity import BatchSettings, diverse_choice, diverse_ranking


@dataclass(frozen=True)
class CostAwareSettings(Settings):
    """Keys every ranking strategy accepts: with ``cost_aware: true`` an image's score is
    divided by its predicted number of boxes, so a method cannot win by choosing crowded
    images (meant for ``loop.unit: boxes``)."""

    cost_aware: bool = setting(False, "divide each score by the image's predicted box count (detectors)")
    cost_min_score: float = setting(0.5, "detections scoring at least this count as predicted boxes",
                                    ge=0, le=1)


@dataclass(frozen=True)
class RankingSettings(BatchSettings, CostAwareSettings):
    """What every ranking strategy accepts besides its own keys."""


class Strategy:
    """Base class: holds settings; the algorithm lives in free functions."""

    name: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ("detection", "classification")
    archs: ClassVar[tuple[str, ...] | None] = None
    model_variant: ClassVar[str] = "plain"
    trainer: ClassVar[str] = "plain"
    #: declared settings (the trainer's included); unknown keys are a ConfigError
    settings_type: ClassVar[type[Settings]] = NoSettings
    #: show progress bars while scoring (the loop turns them off with --quiet)
    progress: bool = True
    #: True: ranks images by a score through :meth:`rank` (None: decided by whether the
    #: default ``_select`` is used); ranking strategies get :class:`RankingSettings`
    ranks: ClassVar[bool | None] = None
    #: ``score`` may run shard by shard over processes (:meth:`score_all`): an image's score
    #: does not depend on the other ids scored with it, and ``score`` draws from ``rng`` the
    #: same way whatever ids it gets. False: every process scores every image.
    shardable: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.ranks_by_score() and not issubclass(cls.settings_type, RankingSettings):
            base = cls.settings_type
            cls.settings_type = dataclasses.make_dataclass(
                base.__name__, [], bases=(RankingSettings, base), frozen=True)

    def __init__(self, **params: Any) -> None:
        #: the validated, typed settings; ``params``: the same resolved, keyed by YAML key
        self.settings = self.settings_type.parse(params, owner=f"strategy '{self.name}'")
        self.params: dict[str, Any] = self.settings.to_dict()
        self.last_scores: dict[int, float] | None = None
        #: images the caller takes from the front of the ranking (see :meth:`select`)
        self.batch_images: int | None = None

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the model variant this strategy asks for (e.g. MIAL's head)."""
        return {}

    def check_model(self, task: str, arch: str) -> None:
        """Raise :class:`StrategyError` if this strategy cannot score ``arch``."""
        if task not in self.tasks:
            raise StrategyError(f"strategy '{self.name}' does not apply to task '{task}'")
        if self.archs is not None and arch not in self.archs:
            raise StrategyError(
                f"strategy '{self.name}' cannot score model '{arch}' (supports: {', '.join(self.archs)})"
            )

    def select(self, adapter: Any, pool: Pool, budget: int, rng: np.random.Generator,
               batch: int | None = None) -> list[int]:
        """Return ``budget`` distinct unlabeled ids, best first.

        ``batch``: how many of them the caller will take (``loop.unit: boxes`` asks for a
        full ranking and takes images until the boxes are spent: an estimate); a diverse
        ``batch`` mode makes the first ``batch`` ids diverse. None: ``budget``.
        """
        pool.check_budget(budget)
        if budget == 0:
            self.last_scores = {}
            return []
        self.batch_images = budget if batch is None else max(1, min(int(batch), budget))
        ids = self._select(adapter, pool, budget, rng)
        check_selection(ids, pool, budget, self.name)
        return ids

    def _select(self, adapter: Any, pool: Pool, budget: int, rng: np.random.Generator) -> list[int]:
        """Default: score every unlabeled image and take the top ones.

        Unscored images (e.g. no detection) fill the budget at random, after every scored
        one. Set-based strategies (core-set, ...) override this instead of ``score``.
        """
        candidates = pool.unlabeled
        return self.rank(adapter, pool, candidates, self.score_all(adapter, pool, candidates, rng), budget, rng)

    def rank(self, adapter: Any, pool: Pool, candidates: list[int], scores: Mapping[int, float], budget: int,
             rng: np.random.Generator) -> list[int]:
        """``budget`` ids of ``candidates`` by ``scores`` (divided by predicted boxes with
        ``cost_aware``), the first ``batch_images`` of them chosen by the ``batch`` mode
        (:mod:`activedet.strategies.diversity`); records ``last_scores``."""
        if self.params.get("cost_aware", False):
            scores = apply_cost_aware(self.params, adapter, pool, scores)
        self.last_scores = dict(scores)
        mode = self.params.get("batch", "topk")
        if mode == "topk":
            return rank_by_score(candidates, scores, budget, rng)
        ranked = rank_by_score(candidates, scores, len(candidates), rng)
        k = min(budget, self.batch_images or budget)
        choose = diverse_choice(mode, adapter, pool, int(self.params.get("batch_size", 8)), rng)
        return diverse_ranking(ranked, scores, k, mode, float(self.params["preselect"]), choose)[:budget]

    def score_all(self, adapter: Any, pool: Pool, ids: list[int], rng: np.random.Generator) -> dict[int, float]:
        """:meth:`score` of ``ids``; in a distributed run each process scores its shard (in
        blocks of the strategy's ``batch_size``, so batches match the one-process run) and
        every process gets all the scores, keyed in the order of ``ids``."""
        if not self.shardable:
            return self.score(adapter, pool, ids, rng)
        return distributed.score_sharded(lambda part: self.score(adapter, pool, part, rng), ids,
                                         int(self.params.get("batch_size", 1) or 1))

    def score(self, adapter: Any, pool: Pool, ids: list[int], rng: np.random.Generator) -> dict[int, float]:
        """Per-image informativeness, higher first; images missing from the result are unscored."""
        raise StrategyError(f"strategy '{self.name}' does not score images one by one")

    @classmethod
    def ranks_by_score(cls) -> bool:
        """True for ranking strategies (the default ``_select``, or ``ranks = True`` for
        one that overrides it and ends in :meth:`rank`): they accept the
        :class:`RankingSettings` keys. Set-based strategies override ``_select``."""
        return cls.ranks if cls.ranks is not None else cls._select is Strategy._select



def rank_by_score(candidates: list[int], scores: Mapping[int, float], budget: int,
                  rng: np.random.Generator) -> list[int]:
    """Top-``budget`` ids by descending score; ties broken by a seeded shuffle;
    unscored ids afterwards in random order. NaN scores raise StrategyError."""
    for i, s in scores.items():
        if not math.isfinite(s):
            raise StrategyError(f"strategy produced a non-finite score {s!r} for image id {i}")
    order = rng.permutation(len(candidates))
    shuffled = [candidates[j] for j in order]
    scored = [i for i in shuffled if i in scores]
    unscored = [i for i in shuffled if i not in scores]
    scored.sort(key=lambda i: -scores[i])  # stable: ties keep the seeded shuffle order
    return (scored + unscored)[:budget]


def cost_aware_scores(scores: Mapping[int, float], predicted_boxes: Mapping[int, int]) -> dict[int, float]:
    """Score per predicted box: ``scores[i] / max(1, predicted_boxes[i])`` for every scored id.

    Meant for non-negative scores (a negative score divided by more boxes moves up)."""
    missing = [i for i in scores if i not in predicted_boxes]
    if missing:
        raise StrategyError(f"no predicted box count for image id {missing[0]}")
    return {i: float(s) / max(1, int(predicted_boxes[i])) for i, s in scores.items()}


def apply_cost_aware(params: Mapping[str, Any], adapter: Any, pool: Pool,
                     scores: Mapping[int, float]) -> dict[int, float]:
    """:func:`cost_aware_scores` with box counts predicted by ``adapter`` (detectors only)."""
    thr = params["cost_min_score"]
    if getattr(adapter, "task", None) != "detection":
        raise StrategyError("strategy key 'cost_aware' needs a detector (predicted boxes); "
                            f"the model is a {getattr(adapter, 'task', '?')} model")
    ids = list(scores)
    counts = {inf.image_id: int((inf.scores >= thr).sum())
              for inf in adapter.infer(pool.dataset, ids, 8, keep_anchors=False)}
    return cost_aware_scores(scores, counts)


def check_selection(ids: Iterable[int], pool: Pool, budget: int, name: str) -> None:
    ids = list(ids)
    if len(ids) != budget or len(set(ids)) != len(ids):
        raise StrategyError(f"strategy '{name}' returned {len(ids)} ids ({len(set(ids))} distinct), expected {budget}")
    for i in ids:
        if pool.is_labeled(i) or i not in pool._id_set:
            raise StrategyError(f"strategy '{name}' returned image id {i}, which is not unlabeled")
