"""Diverse batches: choose ``k`` of a ranked candidate list so that they are not redundant.

Every ranking strategy (the default ``Strategy._select``, MIAL) accepts
``strategy.batch`` and ``strategy.preselect`` (:class:`BatchSettings`). ``topk`` takes the
highest scores, as the papers do. The other modes are the two-stage scheme of PPAL (CVPR
2024), Cluster-Margin and BADGE: take the top ``preselect × k`` images by score, then
choose ``k`` of them that differ from each other:

- ``kcenter``: k-center greedy (core-set) on the model's pooled features (a detector's
  weighted by its foreground probability, as core-set's default ``pooling``), the labeled
  images counting as centers: each pick is the candidate farthest from every labeled
  image and every earlier pick.
- ``kmeanspp``: k-means++ seeding on the same features, within the batch: the first pick
  is the top-scored candidate, each next one is drawn with probability proportional to
  its squared distance to the nearest earlier pick (a seeded generator).
- ``class_balanced``: round-robin over the predicted classes (classifier: arg-max class;
  detector: the class of the image's highest-scoring detection, images without one
  forming their own group), best score first within a class; the classes take turns in
  the order of their best candidate's score.

The result is still a full ranking (the loop's box budget takes ranked images until the
boxes are spent): the chosen ``k`` first, in pick order, then every other image in its
score order. Features and classes are computed only for the preselected candidates (and,
for ``kcenter``, the labeled set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch

from activedet import distributed
from activedet.errors import ConfigError, StrategyError
from activedet.settings import Settings, setting

if TYPE_CHECKING:
    from activedet.models.base import Adapter, Inference

__all__ = ["BatchSettings", "BatchMode", "k_center_greedy", "min_distances", "squared_euclidean",
           "kmeanspp_seeding", "class_round_robin", "diverse_choice", "diverse_ranking", "predicted_classes"]

BatchMode = Literal["topk", "kcenter", "kmeanspp", "class_balanced"]


@dataclass(frozen=True)
class BatchSettings(Settings):
    """Keys every ranking strategy accepts: how a batch is chosen from the ranking."""

    batch: BatchMode = setting(
        "topk", "the batch: the top scores (topk), or a diverse batch among the top preselect x batch "
                "images: kcenter | kmeanspp on pooled features, class_balanced over predicted classes",
        provenance="topk: the papers; the others: two-stage selection as in PPAL (CVPR 2024), "
                   "Cluster-Margin, BADGE")
    preselect: float = setting(3.0, "batch other than topk: candidates are the top preselect x batch "
                                    "images by score", ge=1, le=1000)

#: distance(x (n, D) float64, y (m, D) float64) -> (n, m) float64
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def squared_euclidean(x: torch.Tensor, y: torch.Tensor, x_norms: torch.Tensor | None = None) -> torch.Tensor:
    """x (n, D), y (m, D) -> (n, m) squared Euclidean distances, clamped at 0.
    ``x_norms`` (n,): ``(x * x).sum(1)`` when the caller holds it already (:func:`row_norms`)."""
    xx = (x * x).sum(1, keepdim=True) if x_norms is None else x_norms[:, None]
    d = xx + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return d.clamp_min_(0.0)


def _rows_per_block(x: torch.Tensor, m: int, chunk_size: int) -> int:
    """Rows of ``x`` per block so that a block holds about ``chunk_size``² float64 numbers."""
    width = max(x.shape[1] if x.ndim == 2 else 1, min(m, chunk_size), 1)
    return max(chunk_size, chunk_size * chunk_size // width)


def row_norms(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """x (N, D) of any float dtype -> (N,) float64 ``(x * x).sum(1)``, block by block."""
    step = _rows_per_block(x, 1, chunk_size)
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for i in range(0, x.shape[0], step):
        rows = x[i:i + step].to(torch.float64)
        out[i:i + step] = (rows * rows).sum(1, keepdim=True)[:, 0]
    return out


def min_distances(x: torch.Tensor, centers: torch.Tensor, chunk_size: int,
                  distance: Distance = squared_euclidean, x_norms: torch.Tensor | None = None) -> torch.Tensor:
    """x (N, D), centers (M, D) of any float dtype -> (N,) float64 distance of each row to its
    nearest center (+inf when M = 0).

    Blocks of rows and centers are cast to float64 one at a time, so a float32 ``x`` is never
    copied whole; a block holds about ``chunk_size``² numbers (fewer centers: more rows).
    ``x_norms`` (:func:`row_norms`) spares :func:`squared_euclidean` recomputing them."""
    n, m = x.shape[0], centers.shape[0]
    step = _rows_per_block(x, m, chunk_size)
    out = torch.full((n,), float("inf"), dtype=torch.float64)
    for i in range(0, n, step):
        rows = x[i:i + step].to(torch.float64)
        for j in range(0, m, chunk_size):
            c = centers[j:j + chunk_size].to(torch.float64)
            if x_norms is not None and distance is squared_euclidean:
                d = squared_euclidean(rows, c, x_norms[i:i + step])
            else:
                d = distance(rows, c)
            torch.minimum(out[i:i + step], d.min(1).values, out=out[i:i + step])
    return out


def _float_rows(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The features as a float tensor without a copy when they are float32 or float64
    already (the distances are float64 either way, block by block)."""
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float64)


def k_center_greedy(features: np.ndarray | torch.Tensor, labeled: np.ndarray, budget: int,
                    rng: np.random.Generator, chunk_size: int = 2048,
                    distance: Distance = squared_euclidean) -> tuple[list[int], list[float]]:
    """Greedy k-center: pick ``budget`` rows of ``features`` that are not ``labeled``.

    features: (N, D); labeled: (N,) bool mask of the existing centers. Returns the picked
    row indices in pick order and each pick's distance to its nearest center at the moment
    it was picked (a non-increasing sequence). Ties go to the lowest index. With no labeled
    row the first pick is drawn from ``rng``. Rows already centers are never picked, even
    when every remaining distance is 0 (duplicate features).
    """
    x = _float_rows(features)
    labeled = np.asarray(labeled, dtype=bool)
    if x.ndim != 2 or labeled.shape != (x.shape[0],):
        raise StrategyError(f"k-center greedy needs features (N, D) and a mask (N,), got {tuple(x.shape)} "
                            f"and {labeled.shape}")
    n_free = int((~labeled).sum())
    if budget > n_free:
        raise StrategyError(f"k-center greedy asked for {budget} picks but only {n_free} rows are free")
    if chunk_size < 1:
        raise ConfigError(f"strategy key 'chunk_size' = {chunk_size!r} must be >= 1")
    taken = torch.as_tensor(labeled).clone()
    norms = row_norms(x, chunk_size) if distance is squared_euclidean else None
    dist = min_distances(x, x[taken], chunk_size, distance, norms)
    picks: list[int] = []
    gains: list[float] = []
    for _ in range(budget):
        masked = dist.masked_fill(taken, -float("inf"))
        if not bool(taken.any()):
            free = np.flatnonzero(~taken.numpy())
            idx = int(free[rng.integers(len(free))])
        else:
            idx = int(masked.argmax())
        picks.append(idx)
        gains.append(float(masked[idx]))
        taken[idx] = True
        dist = torch.minimum(dist, min_distances(x, x[idx:idx + 1], chunk_size, distance, norms))
    return picks, gains


def k_center_greedy_sharded(features: Callable[[list[int]], np.ndarray], centers: Sequence[int],
                            candidates: Sequence[int], budget: int, rng: np.random.Generator,
                            chunk_size: int = 2048, block: int = 1,
                            distance: Distance = squared_euclidean) -> tuple[list[int], list[float]]:
    """:func:`k_center_greedy` over ``centers + candidates`` (the centers taken) with each
    process holding only its shard of the candidates' features.

    ``features(ids)`` -> (len(ids), D) rows. The centers' rows are gathered on every rank;
    the candidates are sharded in ``block``-sized blocks (:func:`activedet.distributed.shard`).
    Each greedy step: every rank proposes its farthest free candidate (ties: lowest index)
    with its feature row, one all-gather, all take the farthest (ties: lowest index) and
    update their distances to it. Returns indices into ``candidates`` in pick order and each
    pick's distance, as :func:`k_center_greedy` gives them (rows of ``candidates`` offset by
    ``len(centers)``) in one process. Non-finite features are a :class:`StrategyError`."""
    centers, candidates = list(centers), list(candidates)
    n, n_c = len(candidates), len(centers)
    if budget > n:
        raise StrategyError(f"k-center greedy asked for {budget} picks but only {n} rows are free")
    if chunk_size < 1:
        raise ConfigError(f"strategy key 'chunk_size' = {chunk_size!r} must be >= 1")
    if not distributed.active():
        x = np.asarray(features(centers + candidates))
        if not np.isfinite(x).all():
            raise StrategyError("the model produced non-finite features")
        mask = np.arange(n_c + n) < n_c
        picks, gains = k_center_greedy(x, mask, budget, rng, chunk_size, distance)
        return [p - n_c for p in picks], gains
    c = torch.as_tensor(distributed.gather_rows(features, centers, block) if n_c else np.zeros((0, 0)),
                        dtype=torch.float64)
    mine = distributed.shard(list(range(n)), block)
    lo = mine[0] if mine else 0
    x = _float_rows(features([candidates[j] for j in mine]) if mine else np.zeros((0, 0)))
    if not distributed.all_true(bool(torch.isfinite(x).all() and torch.isfinite(c).all())):
        raise StrategyError("the model produced non-finite features")
    dist = torch.full((len(mine),), float("inf"), dtype=torch.float64)  # no center: +inf (as in one process)
    if mine and n_c:
        dist = min_distances(x, c, chunk_size, distance)
    taken = torch.zeros(n, dtype=torch.bool)  # every rank: the whole candidate mask
    picks: list[int] = []
    gains: list[float] = []
    for _ in range(budget):
        masked = dist.masked_fill(taken[lo:lo + len(mine)], -float("inf"))
        if n_c == 0 and not picks:  # no center yet: a seeded draw, the same on every rank
            free = np.flatnonzero(~taken.numpy())
            want = int(free[rng.integers(len(free))])
            j = want - lo if lo <= want < lo + len(mine) else None
        else:
            j = int(masked.argmax()) if mine else None
        offer = (float(masked[j]), lo + j, x[j].numpy()) if j is not None else (-float("inf"), n, None)
        value, idx, row = max(distributed.all_gather_object(offer), key=lambda o: (o[0], -o[1]))
        picks.append(idx)
        gains.append(value)
        taken[idx] = True
        if mine:
            dist = torch.minimum(dist, min_distances(x, torch.as_tensor(row, dtype=torch.float64)[None],
                                                     chunk_size, distance))
    return picks, gains


def kmeanspp_seeding(features: np.ndarray | torch.Tensor, k: int, rng: np.random.Generator,
                     chunk_size: int = 2048) -> list[int]:
    """k-means++ seeding: ``k`` distinct row indices of ``features`` (N, D), in pick order.

    The first pick is row 0 (the caller passes rows best first); each next pick is drawn
    from ``rng`` with probability proportional to the squared Euclidean distance to the
    nearest earlier pick. When every unpicked row duplicates a pick (all distances 0), the
    lowest unpicked index is taken.
    """
    x = _float_rows(features)
    if x.ndim != 2:
        raise StrategyError(f"k-means++ needs features (N, D), got {tuple(x.shape)}")
    n = x.shape[0]
    if not 0 <= k <= n:
        raise StrategyError(f"k-means++ asked for {k} picks from {n} rows")
    if k == 0:
        return []
    picks = [0]
    taken = np.zeros(n, dtype=bool)
    taken[0] = True
    dist = min_distances(x, x[:1], chunk_size)
    while len(picks) < k:
        d = dist.numpy().copy()
        d[taken] = 0.0
        total = float(d.sum())
        if total > 0 and math.isfinite(total):
            idx = int(rng.choice(n, p=d / total))
        else:
            idx = int(np.flatnonzero(~taken)[0])
        picks.append(idx)
        taken[idx] = True
        dist = torch.minimum(dist, min_distances(x, x[idx:idx + 1], chunk_size))
    return picks


def class_round_robin(classes: Sequence[int], k: int) -> list[int]:
    """``k`` indices into ``classes`` (one predicted class per candidate, candidates best
    first), taking turns over the classes: the best candidate of each class in the order of
    their best candidate, then the second best of each, and so on."""
    if not 0 <= k <= len(classes):
        raise StrategyError(f"class round-robin asked for {k} picks from {len(classes)} candidates")
    groups: dict[int, list[int]] = {}
    for j, c in enumerate(classes):
        groups.setdefault(int(c), []).append(j)  # dict order: order of each class's best
    queues = list(groups.values())
    picks: list[int] = []
    depth = 0
    while len(picks) < k:
        for q in queues:
            if depth < len(q) and len(picks) < k:
                picks.append(q[depth])
        depth += 1
    return picks


def predicted_class(inf: Inference) -> int:
    """An image's predicted class: a classifier's arg-max label; a detector's label of its
    highest-scoring detection, or -1 when it has none."""
    return int(inf.labels[int(inf.scores.argmax())]) if inf.labels.numel() else -1


def predicted_classes(adapter: Adapter, dataset: Any, ids: Sequence[int], batch_size: int,
                      known: Mapping[int, int] | None = None) -> list[int]:
    """:func:`predicted_class` of every image of ``ids``; ``known``: classes the scoring pass
    already recorded (then no inference runs when it holds every id)."""
    if known is not None and all(i in known for i in ids):
        return [int(known[i]) for i in ids]
    kwargs = {"keep_anchors": False} if adapter.task == "detection" else {}
    out = {}
    for inf in adapter.infer(dataset, list(ids), batch_size, **kwargs):
        out[inf.image_id] = predicted_class(inf)
    return [out[i] for i in ids]


def diverse_ranking(ranked: Sequence[int], scores: Mapping[int, float], k: int, mode: BatchMode,
                    preselect: float, choose: Callable[[list[int], int], list[int]]) -> list[int]:
    """Reorder a ranking so that a diverse batch of ``k`` comes first.

    ``ranked``: ids best first, scored ids before unscored ones (:func:`rank_by_score`);
    candidates are the first ``ceil(preselect × k)`` scored ids. ``choose(candidates, k)``
    returns ``k`` distinct indices into ``candidates``. Returns every id of ``ranked``: the
    chosen ones in pick order, then the rest in their ranked order. ``topk``, or no more
    candidates than ``k``, returns ``ranked`` unchanged.
    """
    scored = [i for i in ranked if i in scores]
    m = min(len(scored), int(math.ceil(preselect * k)))
    if mode == "topk" or k <= 0 or m <= k:
        return list(ranked)
    candidates = scored[:m]
    picks = choose(candidates, k)
    if len(picks) != k or len(set(picks)) != k or not all(0 <= p < m for p in picks):
        raise StrategyError(f"batch '{mode}' chose {picks!r}, expected {k} distinct indices below {m}")
    chosen = [candidates[p] for p in picks]
    first = set(chosen)
    return chosen + [i for i in ranked if i not in first]


def diverse_choice(mode: BatchMode, adapter: Adapter, pool: Any, batch_size: int,
                   rng: np.random.Generator,
                   classes: Mapping[int, int] | None = None) -> Callable[[list[int], int], list[int]]:
    """The ``choose(candidates, k)`` of :func:`diverse_ranking` for ``mode``, reading
    features or predicted classes of the candidates (and labeled images) from ``adapter``;
    ``classes``: the predicted classes the scoring pass recorded (class_balanced then runs
    no inference)."""
    dataset = pool.dataset
    if dataset is None and not (mode == "class_balanced" and classes is not None):
        raise StrategyError(f"strategy key 'batch' = '{mode}' needs the pool's dataset")

    def features(ids: list[int]) -> np.ndarray:
        feats = adapter.features(dataset, ids, batch_size)
        if not np.isfinite(feats).all():
            raise StrategyError(f"strategy key 'batch' = '{mode}': the model produced non-finite features")
        return feats

    def choose(candidates: list[int], k: int) -> list[int]:
        if mode == "kcenter":  # labeled images are the centers; sharded over processes as in core-set
            picks, _ = k_center_greedy_sharded(features, list(pool.labeled), candidates, k, rng, block=batch_size)
            return picks
        if mode == "kmeanspp":
            return kmeanspp_seeding(features(candidates), k, rng)
        if mode == "class_balanced":
            return class_round_robin(predicted_classes(adapter, dataset, candidates, batch_size, classes), k)
        raise ConfigError(f"strategy key 'batch' = {mode!r}: expected one of topk, kcenter, kmeanspp, "
                          "class_balanced")

    return choose
