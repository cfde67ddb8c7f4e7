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
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from activedet.config import TrainConfig
from activedet.errors import ActivedetError, ConfigError
from activedet.training.mial import MIALTrainSettings, Stage, StageKind, run_schedule
from activedet.training.trainer import TrainResult, batches, guarded_step, make_optimizer, warmup_factor

__all__ = ["TRAIN_DEFAULTS", "iul_settings", "discrepancy", "unlabeled_loss", "run_stage", "train_mial_iul"]

#: the strategy keys this trainer reads, with their defaults
TRAIN_DEFAULTS: dict[str, Any] = {
    "lambda": 0.5,
    "iul": True,
    "label_epochs": None,  # None: round(train.epochs / (rounds + 1)), at least 1
    "rounds": 2,
    "repeat": 1,
    "order": "max_min",
    "min_epochs": 1,
    "max_epochs": 1,
    "min_lr_scale": 1.0,
    "max_lr_scale": 1.0,
    "final_lr_scale": 0.1,
}


def iul_settings(params: Mapping[str, Any], epochs: int) -> MIALTrainSettings:
    """Validated settings from strategy ``params`` (other keys ignored) and ``train.epochs``.

    Raises :class:`ConfigError` naming a bad key.
    """
    p = {**TRAIN_DEFAULTS, **{k: v for k, v in params.items() if k in TRAIN_DEFAULTS}}
    if p["label_epochs"] is None:
        rounds = p["rounds"]
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ConfigError(f"strategy key 'rounds' = {rounds!r}: expected an integer >= 0")
        p["label_epochs"] = max(1, round(epochs / (rounds + 1)))
    return MIALTrainSettings.from_params({**p, "iur": False, "reweight": "none"})


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


def _check_adapter(adapter: Any) -> None:
    if getattr(adapter, "task", None) != "classification" or getattr(adapter, "variant", None) != "mial":
        raise ConfigError("trainer 'mial_iul' needs a two-head classifier (task 'classification', "
                          f"model variant 'mial'); got task {getattr(adapter, 'task', None)!r}, "
                          f"variant {getattr(adapter, 'variant', None)!r}")


@contextlib.contextmanager
def _stage_mode(adapter: Any, kind: StageKind) -> Iterator[None]:
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


def _forward_heads(adapter: Any, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both heads' logits (B, C) in the modes :func:`_stage_mode` set (no ``model.train()``)."""
    model = adapter.model
    f = model.features(inputs)
    return model.fc1(f), model.fc2(f)



def run_stage(adapter: Any, dataset: Any, stage: Stage, labeled: Sequence[int], unlabeled: Sequence[int],
              cfg: TrainConfig, s: MIALTrainSettings, generator: torch.Generator, *, first_epoch: int = 1,
              warmup_iters: int = 0, bar: Any = None) -> tuple[list[dict[str, Any]], int]:
    """Train one stage; returns its history rows (one per epoch) and the images processed.

    Rows: ``{"stage", "epoch", "round", "lr", "classification", "unlabeled_discrepancy"
    (min/max), "discrepancy" (min/max: mean d on the unlabeled batches)}``.
    """
    lr = cfg.lr * stage.lr_scale
    paired = stage.kind in ("min", "max")
    if paired and not unlabeled:
        raise ActivedetError(f"IUL {stage.kind} stage needs unlabeled images, got none")
    rows: list[dict[str, Any]] = []
    images = 0
    with _stage_mode(adapter, stage.kind):
        opt = make_optimizer(adapter.model.parameters(), cfg, lr=lr)
        it = 0
        for e in range(stage.epochs):
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}

            def add(key: str, value: float, n: int) -> None:
                sums[key] = sums.get(key, 0.0) + value * n
                counts[key] = counts.get(key, 0) + n

            for _ in range(s.repeat):
                lab_batches = batches(labeled, cfg.batch_size, generator)
                unl_batches = batches(unlabeled, cfg.batch_size, generator) if paired else []
                for b, batch in enumerate(lab_batches):
                    step_lr = lr * warmup_factor(it, warmup_iters)
                    for g in opt.param_groups:
                        g["lr"] = step_lr
                    inputs, targets = adapter.load_batch(dataset, batch, cfg.hflip, generator)
                    l1, l2 = _forward_heads(adapter, inputs)
                    losses = {"classification": (F.cross_entropy(l1, targets) + F.cross_entropy(l2, targets)) / 2}
                    if guarded_step(opt, losses, it, step_lr, cfg, f"IUL {stage.kind} stage"):
                        add("classification", float(losses["classification"].detach()), len(batch))
                    images += len(batch)
                    if paired:
                        ubatch = unl_batches[b % len(unl_batches)]
                        uinputs, _ = adapter.load_batch(dataset, ubatch, cfg.hflip, generator)
                        u1, u2 = _forward_heads(adapter, uinputs)
                        ulosses = unlabeled_loss(u1, u2, stage.kind, s.lam)
                        if guarded_step(opt, ulosses, it, step_lr, cfg, f"IUL {stage.kind} stage (unlabeled)"):
                            add("unlabeled_discrepancy", float(ulosses["discrepancy"].detach()), len(ubatch))
                            add("discrepancy", float(discrepancy(u1.detach(), u2.detach()).mean()), len(ubatch))
                        images += len(ubatch)
                    it += 1
                    if bar is not None:
                        bar.set_postfix(stage=stage.kind, round=stage.round,
                                        loss=f"{float(losses['classification'].detach()):.3f}")
                        bar.update(1)
            rows.append({"stage": stage.kind, "epoch": first_epoch + e, "round": stage.round, "lr": lr,
                         **{k: sums[k] / max(1, counts[k]) for k in sums}})
        adapter.model.zero_grad(set_to_none=True)
    return rows, images


def train_mial_iul(adapter: Any, dataset: Any, labeled: Sequence[int], unlabeled: Sequence[int],
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
        params: the strategy's params (:data:`TRAIN_DEFAULTS` keys; others ignored).
        seed: the only source of randomness.
    """
    _check_adapter(adapter)
    labeled = [int(i) for i in labeled]
    if not labeled:
        raise ActivedetError("cannot train on an empty labeled set")
    s = iul_settings(params, cfg.epochs)
    return run_schedule(run_stage, adapter, dataset, labeled, unlabeled, cfg, s, seed, progress,
                        "train mial_iul")
