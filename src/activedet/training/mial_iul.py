"""MIAL's instance uncertainty learning (IUL) for image classifiers (MIAL paper, Table 2).

An image is one "instance": a :class:`~activedet.models.classifier.TwoHeadClassifier`
(adapter variant ``"mial"``) has two classifier heads f1, f2 on one feature extractor g.
There is no MIL re-weighting (one instance per image). One active-learning cycle::

    label  (label_epochs)                                all parameters, labeled set
    rounds × [ max (max_epochs) → min (min_epochs)       order "max_min" (paper, default)
               or min → max                               order "min_max" (authors' code)
               → label (label_epochs) ]                   the very last label stage at lr × final_lr_scale

The stage list is :func:`activedet.training.mial.build_schedule` (shared with the
detection trainer). ``label_epochs`` defaults to ``round(cfg.epochs / (rounds + 1))`` so
the label stages add up to about ``train.epochs``; ``iul: false`` keeps only the label
stages (the "no IUL" row of Table 2, same labeled epochs). ``cfg.lr_steps`` is not used.
A fresh SGD optimizer (lr, momentum, weight decay of ``TrainConfig``) per stage.

Losses, with ``d(x) = mean_c |p1_c(x) − p2_c(x)|`` on the heads' softmax probabilities
(paper Eq. 3), averaged over the images of a batch:

- labeled batches (every stage): the mean of both heads' cross-entropy (``l_det``);
- ``max`` (Eq. 2): only f1, f2 train (g frozen, its batch norms in eval mode); the
  unlabeled step minimises ``λ · mean(1 − d)`` (the authors' sign-flipped form of
  ``−λ · d``: same gradient);
- ``min`` (Eq. 4): f1, f2 frozen; g trains; the unlabeled step minimises ``λ · mean(d)``.

Each min/max iteration takes one labeled SGD step and one unlabeled SGD step. The
unlabeled images of a cycle are a random subset of the pool the size of the labeled set,
drawn from ``seed`` (:func:`activedet.training.mial.unlabeled_subset`). Deterministic on
CPU for a given seed; the global torch RNG is restored afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from activedet.config import TrainConfig
from activedet.errors import ActivedetError, ConfigError
from activedet.models.mial_settings import IULTrainSettings
from activedet.training import mial
from activedet.training.mial import StageKind, StageOps, run_schedule
from activedet.training.trainer import TrainResult

if TYPE_CHECKING:
    from activedet.models.base import Adapter

__all__ = ["CLASSIFIER_STAGES", "iul_settings", "discrepancy", "unlabeled_loss", "run_stage", "train_mial_iul"]


def iul_settings(params: Mapping[str, Any], epochs: int) -> IULTrainSettings:
    """The trainer's settings from strategy ``params`` (other keys ignored), with
    ``label_epochs`` resolved from ``train.epochs``. Raises :class:`ConfigError` naming a bad key."""
    s = IULTrainSettings.pick(params)
    if s.label_epochs is None:
        s = dataclasses.replace(s, label_epochs=max(1, round(epochs / (s.rounds + 1))))
    return s


def discrepancy(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """(B, C), (B, C) logits of f1, f2 -> (B,) ``mean_c |softmax(l1)_c − softmax(l2)_c|``,
    in [0, 2 / C]."""
    if logits1.shape != logits2.shape or logits1.dim() != 2:
        raise ValueError(f"logits must be two (B, C) tensors of one shape, got "
                         f"{tuple(logits1.shape)} and {tuple(logits2.shape)}")
    return (logits1.softmax(-1) - logits2.softmax(-1)).abs().mean(-1)


def unlabeled_loss(logits1: torch.Tensor, logits2: torch.Tensor, kind: StageKind,
                   lam: float) -> dict[str, torch.Tensor]:
    """``{"discrepancy": loss}`` of an unlabeled batch: ``λ · mean(1 − d)`` in the max stage
    (maximises d), ``λ · mean(d)`` in the min stage (minimises d)."""
    d = discrepancy(logits1, logits2)
    if kind == "max":
        return {"discrepancy": lam * (1.0 - d).mean()}
    if kind == "min":
        return {"discrepancy": lam * d.mean()}
    raise ValueError(f"unlabeled loss needs stage 'min' or 'max', got {kind!r}")


def _check_adapter(adapter: Adapter) -> None:
    if adapter.task != "classification" or adapter.variant != "mial":
        raise ConfigError("trainer 'mial_iul' needs a two-head classifier (task 'classification', "
                          f"model variant 'mial'); got task {adapter.task!r}, "
                          f"variant {adapter.variant!r}")


@contextlib.contextmanager
def _stage_mode(adapter: Adapter, kind: StageKind, s: Any = None) -> Iterator[None]:
    """``requires_grad`` and train/eval modes of a stage, restored afterwards.

    ``max``: only the heads train and the feature extractor runs in eval mode (its batch
    norm statistics stay put); ``min``: the heads are frozen; ``label``: everything trains.
    """
    model: nn.Module = adapter.model
    heads = {id(p) for p in adapter.head_parameters()}
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    modes = {m: m.training for m in model.modules()}
    try:
        for p, flag in zip(params, flags):
            allowed = kind == "label" or ((id(p) in heads) == (kind == "max"))
            p.requires_grad_(flag and allowed)
        model.train()
        if kind == "max":
            model.body.eval()
        model.zero_grad(set_to_none=True)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        for m, training in modes.items():
            m.training = training


def _forward_heads(adapter: Adapter, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both heads' logits (B, C) in the modes :func:`_stage_mode` set (no ``model.train()``)."""
    model = adapter.model
    f = model.features(inputs)
    return model.fc1(f), model.fc2(f)


def _labeled_losses(adapter: Adapter, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    l1, l2 = _forward_heads(adapter, inputs)
    return {"classification": (F.cross_entropy(l1, targets) + F.cross_entropy(l2, targets)) / 2}


def _unlabeled_losses(adapter: Adapter, inputs: torch.Tensor, kind: StageKind,
                      s: IULTrainSettings) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """``{"discrepancy": loss}`` of :func:`unlabeled_loss`, and the mean d logged as ``discrepancy``."""
    u1, u2 = _forward_heads(adapter, inputs)
    mean_d = float(discrepancy(u1.detach(), u2.detach()).mean())
    return unlabeled_loss(u1, u2, kind, s.lam), {"discrepancy": mean_d}


#: the two-head classifier's parts of :func:`activedet.training.mial.run_stage`; history rows
#: hold ``classification``, ``unlabeled_discrepancy`` and ``discrepancy`` (min/max: mean d)
CLASSIFIER_STAGES = StageOps("IUL", _stage_mode, _labeled_losses, _unlabeled_losses)

#: one stage of the two-head classifier (:func:`activedet.training.mial.run_stage`)
run_stage = functools.partial(mial.run_stage, ops=CLASSIFIER_STAGES)


def train_mial_iul(adapter: Adapter, dataset: Any, labeled: Sequence[int], unlabeled: Sequence[int],
                   cfg: TrainConfig, params: dict[str, Any], seed: int, progress: bool = True) -> TrainResult:
    """Train a two-head classifier for one active-learning cycle (schedule: module docstring).

    Args:
        adapter: a :class:`~activedet.models.classifier.ClassificationAdapter` of variant
            ``"mial"``.
        dataset: the training dataset; labeled and unlabeled ids index into it.
        labeled: labeled image ids; unlabeled: the unlabeled pool (a random subset the size
            of ``labeled`` is used).
        cfg: lr, momentum, weight decay, batch size, augmentation, clipping, warm-up, and
            ``epochs`` (sets the default ``label_epochs``).
        params: the strategy's params (:class:`IULTrainSettings` keys; others ignored).
        seed: the only source of randomness.
    """
    _check_adapter(adapter)
    labeled = [int(i) for i in labeled]
    if not labeled:
        raise ActivedetError("cannot train on an empty labeled set")
    s = iul_settings(params, cfg.epochs)
    return run_schedule(CLASSIFIER_STAGES, adapter, dataset, labeled, unlabeled, cfg, s, seed, progress,
                        "train mial_iul")
