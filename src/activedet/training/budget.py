"""How much labeled training a round gets: SGD iterations on labeled batches, split by lr.

Strategies are compared fairly only when every one of them trains the detector as much:
MIAL's stage schedule (:mod:`activedet.training.mial`) and the plain step schedule
(:mod:`activedet.training.trainer`) count their work differently, so a config that gives
MIAL 8 full-lr labeled passes and random 16 measures the schedule, not the selection.
:func:`labeled_budget` counts both in one unit — iterations over labeled batches, at the
base lr after warm-up, in a warm-up, or at a decayed lr — from the settings alone, without
training. A warm-up is not full-lr training: MIAL's per-stage warm-up (``stage_warmup_iters``)
makes every stage start below the lr the plain trainer runs at, so it counts separately.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from activedet.config import LoopConfig, TrainConfig
from activedet.errors import ConfigError
from activedet.training.trainer import warmup_length

__all__ = ["Budget", "labeled_budget", "protocol_sizes", "SIZES"]

#: labeled-set sizes to compare budgets at when the loop's sizes are not known in images
#: (fractions of the pool, or box budgets), awkward ones included (batch remainders)
SIZES = (40, 61, 160, 827, 1000, 1655, 4000)


@dataclass(frozen=True)
class Budget:
    """Iterations of one round on ``n`` labeled images (one process, global batches).

    ``full_lr``: labeled batches at the base lr; ``warmup``: in a linear warm-up towards it;
    ``reduced_lr``: at a decayed lr (a warm-up inside a decayed stage counts here);
    ``unlabeled``: unlabeled batches (MIAL's max/min stages take one per labeled batch);
    ``scorer``: labeled batches that train MIAL's separate scorer (``detector: separate``),
    not the detector (its unlabeled batches are in ``unlabeled``).
    """

    full_lr: int
    reduced_lr: int
    unlabeled: int = 0
    warmup: int = 0
    scorer: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"full_lr": self.full_lr, "warmup": self.warmup, "reduced_lr": self.reduced_lr,
                "unlabeled": self.unlabeled, "scorer": self.scorer}


def _plain(cfg: TrainConfig, n: int) -> Budget:
    """The plain trainer: ``epochs × ⌈n / batch⌉`` iterations, the first
    :func:`~activedet.training.trainer.warmup_length` a warm-up, ×0.1 from ``⌈step × total⌉`` on."""
    total = cfg.epochs * math.ceil(n / cfg.batch_size)
    steps = [s for s in cfg.lr_steps if s < 1]
    full = min(math.ceil(s * total) for s in steps) if steps else total
    warm = min(warmup_length(total, cfg), full)
    return Budget(full - warm, total - full, 0, warm)


def _stages(schedule: list[Any], repeat: int, stage_warmup: int, cfg: TrainConfig, n: int,
            first_warmup: bool = True) -> Budget:
    """A stage schedule (:func:`activedet.training.mial.run_schedule`): every stage epoch is
    ``repeat × ⌈n / batch⌉`` labeled batches; max/min stages pair each with an unlabeled batch;
    the first stage warms up over :func:`warmup_length` of the whole schedule (with
    ``first_warmup``), every other one over ``stage_warmup`` iterations."""
    per_epoch = repeat * math.ceil(n / cfg.batch_size)
    total = sum(st.epochs for st in schedule) * per_epoch
    full = reduced = unlabeled = warm = 0
    for k, st in enumerate(schedule):
        its = st.epochs * per_epoch
        if st.lr_scale >= 1.0:
            w = min(warmup_length(total, cfg) if k == 0 and first_warmup else stage_warmup, its)
            full += its - w
            warm += w
        else:
            reduced += its
        if st.kind in ("max", "min"):
            unlabeled += its
    return Budget(full, reduced, unlabeled, warm)


def labeled_budget(trainer: str, cfg: TrainConfig, params: Mapping[str, Any], n: int) -> Budget:
    """The iterations ``trainer`` (a strategy's ``trainer`` name) runs on ``n`` labeled images
    under ``cfg`` and the strategy's ``params``, with unlabeled images available.

    ``plain`` and ``learning_loss`` follow ``train.epochs`` / ``train.lr_steps``, as does ``mial``
    with ``detector: separate`` (its scorer's iterations in ``unlabeled`` and ``scorer``); ``mial``
    and ``mial_iul`` otherwise their stage schedules (``train.epochs`` / ``lr_steps`` unused, except that
    ``mial_iul`` derives ``label_epochs`` from ``train.epochs`` when it is null).
    """
    if n < 1:
        raise ConfigError(f"a labeled budget needs at least one labeled image, got n = {n}")
    if trainer in ("plain", "learning_loss"):
        return _plain(cfg, n)
    if trainer == "mial":
        from activedet.models.mial_settings import MIALTrainSettings
        from activedet.training.mial import build_schedule, scorer_schedule

        s = MIALTrainSettings.pick(dict(params))
        if s.detector == "separate":  # the detector trains as the plain trainer; the scorer on top
            sc = _stages(scorer_schedule(s), s.repeat, s.stage_warmup_iters, cfg, n, first_warmup=False)
            return dataclasses.replace(_plain(cfg, n), unlabeled=sc.unlabeled,
                                       scorer=sc.full_lr + sc.warmup + sc.reduced_lr)
        return _stages(build_schedule(s), s.repeat, s.stage_warmup_iters, cfg, n)
    if trainer == "mial_iul":
        from activedet.training.mial import build_schedule
        from activedet.training.mial_iul import iul_settings

        s = iul_settings(dict(params), cfg.epochs)
        return _stages(build_schedule(s), s.repeat, s.stage_warmup_iters, cfg, n)
    raise ConfigError(f"unknown trainer '{trainer}' (known: plain, learning_loss, mial, mial_iul)")


def protocol_sizes(loop: LoopConfig) -> list[int]:
    """The labeled-set size of every round when ``loop`` counts images, else :data:`SIZES`.
    (Below a warm-up's length the schedules cannot agree: MIAL's first stage ends its warm-up
    early and its later stages run at full lr while the plain trainer is still warming up.)"""
    if loop.unit == "images" and loop.initial >= 1 and loop.per_cycle >= 1:
        return [int(loop.initial + k * loop.per_cycle) for k in range(loop.cycles + 1)]
    return list(SIZES)
