"""The strategy contract.

A strategy ranks unlabeled images. ``select(adapter, pool, budget, rng)`` returns a
:class:`Selection`: ``budget`` distinct unlabeled ids, best first, with the per-image
scores it computed (recorded in the ledger) and what it reports; no state is kept on the
strategy between calls. Scoring is a pure function of model outputs,
kept as a free function next to each strategy so it can be tested on arrays.

A strategy never trains. It declares what it needs from the model and the trainer through
class attributes that the loop reads without asking which strategy it holds:

- ``tasks``: the tasks it applies to (``detection``, ``classification``);
- ``archs``: model architectures it can score (``None``: any);
- ``model_variant``: which adapter variant to build (``"plain"``, ``"mial"``, ...);
- ``trainer``: which training schedule to run (``"plain"``, ``"mial"``, ...);
- ``wants``: the adapter outputs it reads (checked against what the model provides);
- ``settings_type``: its declared settings (:mod:`activedet.settings`), the trainer's
  included; ranking strategies (the default ``_select``, or ``ranks = True``) also get
  :class:`RankingSettings`: ``cost_aware`` and the batch keys of
  :mod:`activedet.strategies.diversity` (``batch``, ``preselect``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping

import numpy as np

from activedet import distributed
from activedet.data.pool import Pool
from activedet.errors import StrategyError
from activedet.models.base import capabilities, known_archs
from activedet.settings import NoSettings, Settings, setting
from activedet.strategies.diversity import BatchSettings, diverse_choice, diverse_ranking

if TYPE_CHECKING:
    from activedet.models.base import Adapter, Inference


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


@dataclass(frozen=True)
class Selection:
    """What :meth:`Strategy.select` chose, recorded by the loop the same way for every
    strategy: ``ids`` best first; ``scores`` per scored image (images the strategy could
    not score, e.g. without detections, are absent and were drawn at random after the
    scored ones; empty for strategies that do not score, e.g. ``random``); ``info``: what
    the strategy reports about its choice (ISAL: reference set, LiSSA check)."""

    ids: list[int]
    scores: dict[int, float] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class ImageScores(dict):  # type: ignore[type-arg]
    """Per-image scores (id -> score, a dict) and what the scoring pass saw of each image it
    ran the model on, so the ranking wrappers need no second inference pass: ``boxes``, its
    predicted box count (detections scoring at least ``cost_min_score``; detectors only),
    and ``classes``, its predicted class (:func:`~activedet.strategies.diversity.predicted_class`).
    None: the pass did not record them."""

    def __init__(self, scores: Mapping[int, float] | None = None, boxes: Mapping[int, int] | None = None,
                 classes: Mapping[int, int] | None = None) -> None:
        super().__init__(scores or {})
        self.boxes: dict[int, int] | None = None if boxes is None else dict(boxes)
        self.classes: dict[int, int] | None = None if classes is None else dict(classes)


#: (adapter, pool, candidates, scores, budget, batch, rng) -> (ranked ids, the scores ranked by)
Ranker = Callable[["Adapter", Pool, list[int], Mapping[int, float], int, int, np.random.Generator],
                  tuple[list[int], dict[int, float]]]


def top_scores(adapter: Adapter, pool: Pool, candidates: list[int], scores: Mapping[int, float], budget: int,
               batch: int, rng: np.random.Generator) -> tuple[list[int], dict[int, float]]:
    """The plain ranking: ``budget`` ids of ``candidates`` by descending score (:func:`rank_by_score`)."""
    return rank_by_score(candidates, scores, budget, rng), dict(scores)


@dataclass(frozen=True)
class DiverseBatch:
    """A :data:`Ranker` whose first ``batch`` ids are chosen by a diverse ``mode`` among the
    top ``preselect`` x ``batch`` (:mod:`activedet.strategies.diversity`); composes with any
    ranking strategy's scores."""

    mode: str
    preselect: float
    batch_size: int

    def __call__(self, adapter: Adapter, pool: Pool, candidates: list[int], scores: Mapping[int, float],
                 budget: int, batch: int, rng: np.random.Generator) -> tuple[list[int], dict[int, float]]:
        ranked = rank_by_score(candidates, scores, len(candidates), rng)
        k = min(budget, batch or budget)
        classes = scores.classes if isinstance(scores, ImageScores) else None
        choose = diverse_choice(self.mode, adapter, pool, self.batch_size, rng, classes)  # type: ignore[arg-type]
        return diverse_ranking(ranked, scores, k, self.mode, self.preselect, choose)[:budget], dict(scores)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CostAware:
    """A :data:`Ranker` wrapper: each score divided by the image's predicted box count
    (:func:`apply_cost_aware`) before ``inner`` ranks; composes with any ranking."""

    inner: Ranker
    min_score: float

    def __call__(self, adapter: Adapter, pool: Pool, candidates: list[int], scores: Mapping[int, float],
                 budget: int, batch: int, rng: np.random.Generator) -> tuple[list[int], dict[int, float]]:
        seen = scores if isinstance(scores, ImageScores) else ImageScores(scores)
        divided = apply_cost_aware(self.min_score, adapter, pool, scores, seen.boxes)
        return self.inner(adapter, pool, candidates, ImageScores(divided, seen.boxes, seen.classes), budget, batch, rng)


def ranker_for(settings: RankingSettings, batch_size: int) -> Ranker:
    """The ranking ``settings`` ask for: :func:`top_scores` or :class:`DiverseBatch`, wrapped
    in :class:`CostAware` with ``cost_aware``."""
    inner: Ranker = top_scores if settings.batch == "topk" else DiverseBatch(
        settings.batch, float(settings.preselect), batch_size)
    return CostAware(inner, float(settings.cost_min_score)) if settings.cost_aware else inner


class Strategy:
    """Base class: holds settings; the algorithm lives in free functions. Nothing is kept
    on ``self`` between calls: :meth:`select` returns a :class:`Selection`."""

    name: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ("detection", "classification")
    archs: ClassVar[tuple[str, ...] | None] = None
    model_variant: ClassVar[str] = "plain"
    trainer: ClassVar[str] = "plain"
    #: adapter outputs this strategy reads (:data:`activedet.models.base.CAPABILITIES`):
    #: refused by name before training when the model does not provide one
    wants: ClassVar[frozenset[str]] = frozenset()
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
        #: the validated, typed settings (read as attributes; YAML keys in :attr:`params`)
        self.settings: Any = self.settings_type.parse(params, owner=f"strategy '{self.name}'")

    @property
    def params(self) -> dict[str, Any]:
        """The resolved settings keyed by YAML key (what the loop hands the trainer and stores)."""
        return self.settings.to_dict()

    @property
    def batch_size(self) -> int:
        """Images per scoring batch (the ``batch_size`` key; 8 when the strategy has none)."""
        return int(getattr(self.settings, "batch_size", 8) or 8)

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the model variant this strategy asks for (e.g. MIAL's head)."""
        return {}

    def check_model(self, task: str, arch: str) -> None:
        """Raise :class:`StrategyError` if this strategy cannot score ``arch``, or needs an
        output (:attr:`wants`) that model does not provide."""
        if task not in self.tasks:
            raise StrategyError(f"strategy '{self.name}' does not apply to task '{task}'")
        if self.archs is not None and arch not in self.archs:
            raise StrategyError(
                f"strategy '{self.name}' cannot score model '{arch}' (supports: {', '.join(self.archs)})"
            )
        check_provides(self.name, self.wants, capabilities(task, arch, self.model_variant), arch)

    def select(self, adapter: Adapter, pool: Pool, budget: int, rng: np.random.Generator,
               batch: int | None = None) -> Selection:
        """``budget`` distinct unlabeled ids, best first, with the scores behind them.

        ``batch``: how many of them the caller will take (``loop.unit: boxes`` asks for a
        full ranking and takes images until the boxes are spent: an estimate); a diverse
        ``batch`` mode makes the first ``batch`` ids diverse. None: ``budget``.
        """
        pool.check_budget(budget)
        if budget == 0:
            return Selection([], {})
        take = budget if batch is None else max(1, min(int(batch), budget))
        chosen = self._select(adapter, pool, budget, rng, take)
        check_selection(chosen.ids, pool, budget, self.name)
        return chosen

    def _select(self, adapter: Adapter, pool: Pool, budget: int, rng: np.random.Generator,
                batch: int) -> Selection:
        """Default: score every unlabeled image and take the top ones.

        Unscored images (e.g. no detection) fill the budget at random, after every scored
        one. Set-based strategies (core-set, ...) override this instead of ``score``.
        """
        candidates = pool.unlabeled
        return self.rank(adapter, pool, candidates, self.score_all(adapter, pool, candidates, rng), budget,
                         rng, batch)

    def rank(self, adapter: Adapter, pool: Pool, candidates: list[int], scores: Mapping[int, float],
             budget: int, rng: np.random.Generator, batch: int | None = None,
             info: dict[str, Any] | None = None) -> Selection:
        """``budget`` ids of ``candidates`` by ``scores`` through the ranking the settings ask
        for (:func:`ranker_for`: cost-aware and diverse-batch wrappers around the top scores);
        the first ``batch`` of them (None: ``budget``) chosen by the ``batch`` mode."""
        rank = ranker_for(self.settings, self.batch_size)
        ids, ranked_by = rank(adapter, pool, candidates, scores, budget, batch or budget, rng)
        return Selection(ids, ranked_by, dict(info or {}))

    def score_all(self, adapter: Adapter, pool: Pool, ids: list[int], rng: np.random.Generator,
                  **kwargs: Any) -> dict[int, float]:
        """:meth:`score` of ``ids``; in a distributed run each process scores its shard (in
        blocks of the strategy's ``batch_size``, so batches match the one-process run) and
        every process gets all the scores, keyed in the order of ``ids``. ``kwargs`` go to
        :meth:`score`."""
        if not self.shardable:
            return self.score(adapter, pool, ids, rng, **kwargs)
        block = int(getattr(self.settings, "batch_size", 1) or 1)
        seen: list[ImageScores] = []

        def part(shard: list[int]) -> dict[int, float]:
            got = self.score(adapter, pool, shard, rng, **kwargs)
            seen.append(got if isinstance(got, ImageScores) else ImageScores(got))
            return got

        scores = distributed.score_sharded(part, ids, block)
        mine = seen[0] if seen else ImageScores()
        return ImageScores(scores, _gathered(mine.boxes, ids), _gathered(mine.classes, ids))

    def predicted_boxes(self, inf: Inference) -> int:
        """An image's predicted box count for ``cost_aware``: its detections scoring at least
        ``cost_min_score`` (ranking strategies; others: all its detections)."""
        return int((inf.scores >= float(getattr(self.settings, "cost_min_score", 0.0))).sum())

    def score(self, adapter: Adapter, pool: Pool, ids: list[int], rng: np.random.Generator,
              **kwargs: Any) -> dict[int, float]:
        """Per-image informativeness, higher first; images missing from the result are unscored."""
        raise StrategyError(f"strategy '{self.name}' does not score images one by one")

    @classmethod
    def supported_archs(cls) -> tuple[str, ...] | None:
        """The architectures this strategy scores: :attr:`archs`, else (with :attr:`wants`)
        every known architecture of its tasks that provides what it wants; None: any (every
        known one does)."""
        if cls.archs is not None or not cls.wants:
            return cls.archs
        known = [a for t in cls.tasks for a in known_archs(t)]
        fit = tuple(a for t in cls.tasks for a in known_archs(t) if cls.wants <= capabilities(t, a, cls.model_variant))
        return None if len(fit) == len(known) else fit

    @classmethod
    def ranks_by_score(cls) -> bool:
        """True for ranking strategies (the default ``_select``, or ``ranks = True`` for
        one that overrides it and ends in :meth:`rank`): they accept the
        :class:`RankingSettings` keys. Set-based strategies override ``_select``."""
        return cls.ranks if cls.ranks is not None else cls._select is Strategy._select


def _gathered(part: dict[int, int] | None, ids: list[int]) -> dict[int, int] | None:
    """Every rank's ``part`` (this shard's per-image counts or classes) merged in a
    distributed run (every rank scored, so all hold one or all hold None); as is in one process."""
    if part is None or not distributed.active():
        return part
    return {i: int(n) for i, n in distributed.gather_scores(part, ids).items()}


def check_provides(name: str, wants: frozenset[str], provides: frozenset[str], arch: str) -> None:
    """Raise :class:`StrategyError` naming the first output in ``wants`` not in ``provides``."""
    missing = sorted(wants - provides)
    if missing:
        raise StrategyError(f"strategy '{name}' needs the model output '{missing[0]}', which model '{arch}' "
                            f"does not provide (it provides: {', '.join(sorted(provides)) or 'nothing'})")


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


def apply_cost_aware(thr: float, adapter: Adapter, pool: Pool, scores: Mapping[int, float],
                     counts: Mapping[int, int] | None = None) -> dict[int, float]:
    """:func:`cost_aware_scores` with box counts (detections scoring at least ``thr``):
    ``counts`` from the scoring pass when it ran the detector, else predicted by ``adapter``
    here (detectors only)."""
    if adapter.task != "detection":
        raise StrategyError("strategy key 'cost_aware' needs a detector (predicted boxes); "
                            f"the model is a {adapter.task} model")
    if counts is None:
        counts = {inf.image_id: int((inf.scores >= thr).sum())
                  for inf in adapter.infer(pool.dataset, list(scores), 8, keep_anchors=False)}
    return cost_aware_scores(scores, counts)


def check_selection(ids: Iterable[int], pool: Pool, budget: int, name: str) -> None:
    ids = list(ids)
    if len(ids) != budget or len(set(ids)) != len(ids):
        raise StrategyError(f"strategy '{name}' returned {len(ids)} ids ({len(set(ids))} distinct), expected {budget}")
    for i in ids:
        if pool.is_labeled(i) or i not in pool._id_set:
            raise StrategyError(f"strategy '{name}' returned image id {i}, which is not unlabeled")
