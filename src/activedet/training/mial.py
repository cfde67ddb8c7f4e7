"""MIAL's training schedule: label-set training and the max / min discrepancy stages.

One active-learning cycle (paper Sec. 3.2–3.3, Fig. 3–4; schedule from the authors' code)::

    label  (label_epochs)                                  all parameters, labeled set
    rounds × [ max (max_epochs) → min (min_epochs)         order "max_min" (paper, default)
               or min → max                                 order "min_max" (authors' code)
               → label (label_epochs) ]                     the very last label stage at lr × final_lr_scale

Each "epoch" passes over the data ``repeat`` times. A fresh SGD optimizer (lr, momentum,
weight decay from ``TrainConfig``) is built for every stage. ``cfg.epochs`` and
``cfg.lr_steps`` are not used: the stage list above is the schedule;
``cfg.warmup_iters`` warms up the first stage, ``stage_warmup_iters`` every later one. The keys in quotes are the
``mial`` strategy's, declared in :class:`activedet.models.mial_settings.MIALTrainSettings`.
The stage loop (:func:`run_stage`) is shared with the classifier's MIAL-IUL trainer
(:mod:`activedet.training.mial_iul`), which passes its own :class:`StageOps`.

Stages (labeled batches always contribute ``l_det + l_mil`` with ground-truth image labels):

- ``label``: every parameter trains on labeled batches.
- ``max`` (Eq. 8): the head trains (``max_params: head``, the paper: f1, f2, the box
  regressor and the MIL head) or only f1 and f2 (``classifiers``, the authors' code);
  everything else is frozen (``requires_grad`` False, so its gradients are never computed
  and the optimizer never sees it) and batch norms of frozen parts run in eval mode, so
  their running statistics do not move. Each
  iteration takes one labeled step and one unlabeled step with
  ``λ·Σ(1 − |σ1 − σ2|)·w``.
- ``min`` (Eq. 9): f1 and f2 are frozen (their batch norms, if any, in eval mode);
  backbone, FPN, box regressor and MIL head train. The unlabeled step minimises
  ``λ·Σ|σ1 − σ2|·w`` plus the MIL loss against pseudo image labels (Eq. 10).

With ``detector: separate`` the schedule above is not the detector's: the detector trains
with the plain trainer (``train.epochs``, ``train.lr_steps``: the baseline's budget) and a deep
copy of it, the scorer (``adapter.scorer``), runs :func:`scorer_schedule` and scores the pool;
its history rows carry ``"model": "scorer"``.

The unlabeled images of a cycle are a random subset of the pool the size of the labeled
set, drawn from ``seed``. ``iul: false`` drops the min/max stages (label-set training
only, same number of label epochs); ``iur: false`` is the head built without MIL (the
strategy passes ``use_mil`` to the head), and needs ``reweight`` ``none`` or ``f1``.

Deterministic on CPU for a given seed: batch order, flips and the unlabeled subset come
from a generator seeded with ``seed``; the global torch RNG is seeded inside
``fork_rng`` and restored afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Literal, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from activedet import distributed
from activedet.config import TrainConfig
from activedet.errors import ActivedetError, ConfigError
from activedet.models.mial_losses import anchors_inside
from activedet.models.mial_settings import MIALTrainSettings
from activedet.training.trainer import (Precision, TrainResult, batches, decoded_batches, guarded_step,
                                         make_optimizer, model_device, stop_if_dead, train_plain,
                                         warmup_factor, warmup_length)

if TYPE_CHECKING:
    from activedet.models.base import Adapter, DetectorAdapter

__all__ = [
    "Stage",
    "StageOps",
    "DETECTION_STAGES",
    "build_schedule",
    "stage_trainable",
    "unlabeled_subset",
    "run_stage",
    "run_schedule",
    "train_mial",
    "scorer_schedule",
]

StageKind = Literal["label", "min", "max"]

@dataclass(frozen=True)
class Stage:
    """One stage of the cycle: ``epochs`` epochs of ``kind`` at ``cfg.lr × lr_scale``.

    ``round``: 0 for the initial label-set training, 1..rounds for the IUL rounds.
    """

    kind: StageKind
    epochs: int
    lr_scale: float
    round: int


def build_schedule(s: Any) -> list[Stage]:
    """The stage list of one cycle (see the module docstring). Stages with 0 epochs are left
    out; the last label stage runs at ``final_lr_scale``."""
    stages = [Stage("label", s.label_epochs, 1.0, 0)]
    for r in range(1, s.rounds + 1):
        if s.iul:
            pair = [Stage("max", s.max_epochs, s.max_lr_scale, r), Stage("min", s.min_epochs, s.min_lr_scale, r)]
            if s.order == "min_max":
                pair.reverse()
            stages += [st for st in pair if st.epochs > 0]
        stages.append(Stage("label", s.label_epochs, 1.0, r))
    last = stages[-1]
    stages[-1] = Stage(last.kind, last.epochs, s.final_lr_scale, last.round)
    return stages


def _mial_head(adapter: Adapter) -> Any:
    head = adapter.mial_head()
    if head is None:
        raise ConfigError("trainer 'mial' needs a RetinaNet or FCOS with the MIAL head (strategy 'mial', "
                          f"model variant 'mial'); got {adapter.arch} variant '{adapter.variant}'")
    return head


def stage_trainable(model: nn.Module, kind: StageKind, max_params: str = "head") -> dict[str, bool]:
    """Which parameters a stage may train: ``{name: allowed}`` over ``model.named_parameters()``.

    ``label``: all; ``max``: the head (``max_params="head"``, paper Eq. 8) or its f1/f2
    group only (``"classifiers"``, authors' code); ``min``: everything but f1/f2.
    (A parameter that was already frozen, e.g. a pretrained stem, stays frozen.)
    """
    if max_params not in ("head", "classifiers"):
        raise ConfigError(f"strategy key 'max_params' = {max_params!r}: expected head or classifiers")
    head: Any = model.head  # a MIAL head (train_mial checks the adapter provides one)
    f12 = {f"head.{n}" for n, _ in head.named_parameter_groups()["f1_f2"]}
    max_set = f12 if max_params == "classifiers" else {f"head.{n}" for n, _ in head.named_parameters()}
    out = {}
    for name, _ in model.named_parameters():
        if kind == "label":
            out[name] = True
        elif kind == "max":
            out[name] = name in max_set
        elif kind == "min":
            out[name] = name not in f12
        else:
            raise ValueError(f"stage kind must be 'label', 'min' or 'max', got {kind!r}")
    return out


@contextlib.contextmanager
def _stage_mode(model: nn.Module, kind: StageKind, max_params: str = "head") -> Iterator[None]:
    """Set ``requires_grad`` and train/eval modes for a stage; restore both afterwards.

    Batch norms whose own parameters are all frozen in this stage run in eval mode (their
    running statistics stay put): the backbone's in the max stage, f1/f2's in the min stage.
    """
    allowed = stage_trainable(model, kind, max_params)
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    modes = {m: m.training for m in model.modules()}
    try:
        for n, p in params.items():
            p.requires_grad_(flags[n] and allowed[n])
        model.train()
        for mod_name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                own = [f"{mod_name}.{pn}" for pn, _ in m.named_parameters(recurse=False)]
                if own and not any(allowed[n] for n in own):
                    m.eval()
        model.zero_grad(set_to_none=True)
        yield
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        for m, training in modes.items():
            m.training = training


def unlabeled_subset(labeled: Sequence[int], unlabeled: Sequence[int], generator: torch.Generator) -> list[int]:
    """A random subset of ``unlabeled`` the size of the labeled set (or all of it if smaller),
    drawn from ``generator``; returned in sorted order."""
    pool = sorted(int(i) for i in unlabeled)
    n = min(len(labeled), len(pool))
    if n == 0:
        return []
    idx = torch.randperm(len(pool), generator=generator)[:n].tolist()
    return sorted(pool[j] for j in idx)


@dataclass(frozen=True)
class StageOps:
    """What the detection (MIAL) and classification (MIAL-IUL) stage loops do differently.

    - ``mode(adapter, kind, s)``: context setting ``requires_grad`` and train/eval modes of a stage;
    - ``labeled(adapter, inputs, targets)``: loss terms of a labeled batch;
    - ``unlabeled(adapter, inputs, kind, s)``: loss terms of an unlabeled batch (min/max)
      and extra per-batch means to log (not trained on).
    """

    name: str
    mode: Callable[[Any, StageKind, Any], ContextManager[None]]
    labeled: Callable[[Any, Any, Any], dict[str, torch.Tensor]]
    unlabeled: Callable[[Any, Any, StageKind, Any], tuple[dict[str, torch.Tensor], dict[str, float]]]


def _unlabeled_losses(detector: DetectorAdapter, images: list[torch.Tensor], kind: StageKind,
                      s: MIALTrainSettings) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Transform → backbone → MIAL head (train mode, no targets) → unlabeled losses of
    ``kind`` (``discrepancy``, and ``mil`` in the min stage with the MIL head), anchors in
    batch padding left out."""
    p = detector.dense_pass(images)  # head outputs (N, HWA, K) each; the head records num_anchors_per_level
    valid = torch.stack([anchors_inside(a, size) for a, size in zip(p.anchors, p.image_list.image_sizes)])
    return detector.mial_head().unlabeled_loss(p.head_out, kind, lam=s.lam, reweight=s.reweight,
                                               squared=s.train_squared, pseudo_threshold=s.pseudo_threshold,
                                               valid=valid), {}


#: RetinaNet or FCOS + MIAL head: the model's own loss dict on labeled batches
DETECTION_STAGES = StageOps("MIAL", lambda adapter, kind, s: _stage_mode(adapter.model, kind, s.max_params),
                            lambda adapter, inputs, targets: adapter.model(inputs, targets),
                            _unlabeled_losses)



def run_stage(adapter: Adapter, dataset: Any, stage: Stage, labeled: Sequence[int], unlabeled: Sequence[int],
              cfg: TrainConfig, s: Any, generator: torch.Generator, *, first_epoch: int = 1,
              warmup_iters: int = 0, bar: Any = None,
              ops: StageOps = DETECTION_STAGES) -> tuple[list[dict[str, Any]], int]:
    """Train one stage; returns its history rows (one per epoch) and the images it processed.

    Label stages pass over ``labeled``; min/max stages pair every labeled batch with an
    unlabeled batch of ``unlabeled`` (cycled if it holds fewer batches) and take two SGD
    steps. ``s``: the schedule's settings (:class:`MIALTrainSettings` or the classifier's);
    ``ops``: the model-specific parts (:data:`DETECTION_STAGES` or the classifier's).
    History rows: ``{"stage", "epoch", "round", "lr", <labeled loss terms>,
    "unlabeled_<term>"..., <ops' extra means>}``, each the image-weighted mean of its batch values.
    """
    lr = cfg.lr * stage.lr_scale
    rows: list[dict[str, Any]] = []
    if stage.kind in ("min", "max") and not unlabeled:
        raise ActivedetError(f"{ops.name} {stage.kind} stage needs unlabeled images, got none")
    amp = Precision(cfg.amp, model_device(adapter))  # train.amp: autocast + gradient scaling on CUDA
    if stage.kind in ("min", "max") and cfg.grad_clip is None and s.discrepancy_grad_clip is not None:
        cfg = dataclasses.replace(cfg, grad_clip=s.discrepancy_grad_clip)  # the summed discrepancy's bound
    # distributed: gradients averaged over ranks per stage, its parameters taken after the stage froze them
    with ops.mode(adapter, stage.kind, s), distributed.synced(adapter.model) as call:
        opt = make_optimizer(adapter.model.parameters(), cfg, lr=lr)
        steps = _StageSteps(adapter, dataset, stage, cfg, s, generator, ops, opt, call, amp, lr, warmup_iters, bar)
        for e in range(stage.epochs):
            means = _Means()
            for _ in range(s.repeat):
                steps.one_pass(labeled, unlabeled, means)
            sums, counts = distributed.reduce_counts(means.sums, means.counts)  # data-parallel: every rank, the same history
            rows.append({"stage": stage.kind, "epoch": first_epoch + e, "round": stage.round, "lr": lr,
                         **{k: sums[k] / max(1, counts[k]) for k in sums}})
        adapter.model.zero_grad(set_to_none=True)
    return rows, steps.images


class _Means:
    """Image-weighted sums of loss terms over an epoch, and how many images each holds."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, prefix: str, values: dict[str, Any], n: int) -> None:
        """Add each term's value (a batch mean, tensor or float) times ``n`` images under ``prefix + term``."""
        for k, v in values.items():
            v = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
            self.sums[prefix + k] = self.sums.get(prefix + k, 0.0) + v * n
            self.counts[prefix + k] = self.counts.get(prefix + k, 0) + n


@dataclass
class _StageSteps:
    """The SGD steps of one stage: what its batches share, the step count ``it`` (for the
    warmup) and the images processed."""

    adapter: Adapter
    dataset: Any
    stage: Stage
    cfg: TrainConfig
    s: Any
    generator: torch.Generator
    ops: StageOps
    opt: torch.optim.Optimizer
    call: Any
    amp: Precision
    lr: float
    warmup_iters: int
    bar: Any
    it: int = 0
    images: int = 0

    def one_pass(self, labeled: Sequence[int], unlabeled: Sequence[int], means: _Means) -> None:
        """One pass over ``labeled`` in shuffled batches; in min/max stages each labeled batch
        is followed by an unlabeled batch (``unlabeled`` cycled if it holds fewer batches)."""
        adapter, dataset, cfg, generator = self.adapter, self.dataset, self.cfg, self.generator
        paired = self.stage.kind in ("min", "max")
        lab_batches = batches(labeled, cfg.batch_size, generator)
        unl_batches = batches(unlabeled, cfg.batch_size, generator) if paired else []
        unl_seq = [unl_batches[b % len(unl_batches)] for b in range(len(lab_batches))] if paired else []
        unl_pixels = decoded_batches(adapter, dataset, unl_seq)  # loader processes read ahead
        lab_pixels = decoded_batches(adapter, dataset, lab_batches)
        for b, (batch, pixels) in enumerate(zip(lab_batches, lab_pixels)):
            step_lr = self.lr * warmup_factor(self.it, self.warmup_iters)
            for g in self.opt.param_groups:
                g["lr"] = step_lr
            losses = self.labeled_step(batch, pixels, step_lr, means)
            if paired:
                self.unlabeled_step(unl_seq[b], next(unl_pixels), step_lr, means)
            self.it += 1
            if self.bar is not None:
                loss = float(sum(v.detach() for v in losses.values()))
                self.bar.set_postfix(stage=self.stage.kind, round=self.stage.round, loss=f"{loss:.3f}")
                self.bar.update(1)

    def labeled_step(self, batch: list[int], pixels: Any, step_lr: float, means: _Means) -> dict[str, Any]:
        """One step on the model's loss of a labeled batch; its loss dict."""
        adapter, ops, stage = self.adapter, self.ops, self.stage
        inputs, targets = adapter.load_batch(self.dataset, batch, self.cfg.hflip, self.generator, pixels)
        with self.amp.autocast():
            losses = self.call(lambda: ops.labeled(adapter, inputs, targets))  # train mode: set by ops.mode
        if guarded_step(self.opt, losses, self.it, step_lr, self.cfg, f"{ops.name} {stage.kind} stage",
                        self.amp.scaler):
            means.add("", losses, len(batch))
        self.images += len(batch)
        return losses

    def unlabeled_step(self, ubatch: list[int], pixels: Any, step_lr: float, means: _Means) -> None:
        """One step on ``ops.unlabeled``'s losses of an unlabeled batch (the stage's own terms)."""
        adapter, ops, stage = self.adapter, self.ops, self.stage
        uinputs, _ = adapter.load_batch(self.dataset, ubatch, self.cfg.hflip, self.generator, pixels)
        with self.amp.autocast():
            ulosses, extra = self.call(lambda: ops.unlabeled(adapter, uinputs, stage.kind, self.s))
        if guarded_step(self.opt, ulosses, self.it, step_lr, self.cfg, f"{ops.name} {stage.kind} stage (unlabeled)",
                        self.amp.scaler):
            means.add("unlabeled_", ulosses, len(ubatch))
            means.add("", extra, len(ubatch))
        self.images += len(ubatch)


def train_mial(adapter: Adapter, dataset: Any, labeled: Sequence[int], unlabeled: Sequence[int],
               cfg: TrainConfig, params: dict[str, Any], seed: int, progress: bool = True) -> TrainResult:
    """Train ``adapter.model`` (RetinaNet or FCOS + MIAL head) for one active-learning cycle.

    Args:
        adapter: a :class:`~activedet.models.detection_adapter.DetectionAdapter` of variant
            ``"mial"``.
        dataset: the training dataset (labeled and unlabeled ids index into it).
        labeled: labeled image ids (targets are read from ``dataset``).
        unlabeled: the unlabeled pool; a random subset the size of ``labeled`` is used.
        cfg: lr, momentum, weight decay, batch size, flips, gradient clipping, warm-up.
        params: the strategy's params (:class:`MIALTrainSettings` keys; others ignored).
        seed: the only source of randomness.
    Returns:
        :class:`TrainResult` with one history row per stage epoch.
    """
    labeled = [int(i) for i in labeled]
    if not labeled:
        raise ActivedetError("cannot train on an empty labeled set")
    s = MIALTrainSettings.pick(params)
    head = _mial_head(adapter)
    if s.reweight == "mil" and not head.use_mil:
        raise ConfigError("strategy key 'reweight' = 'mil' but the model's MIAL head has no MIL branch")
    if s.detector == "joint":
        return run_schedule(DETECTION_STAGES, adapter, dataset, labeled, unlabeled, cfg, s, seed, progress,
                            "train mial")
    # separate: the detector gets the plain trainer's schedule, a copy of it the IUL rounds
    result = train_plain(adapter, dataset, labeled, unlabeled, cfg, params, seed, progress)
    adapter.scorer = None
    if not unlabeled:  # nothing left to score
        return result
    scorer = adapter.with_model(copy.deepcopy(adapter.model))
    iul = run_schedule(DETECTION_STAGES, scorer, dataset, labeled, unlabeled, cfg, s, seed + 1, progress,
                       "train mial scorer", schedule=scorer_schedule(s))
    adapter.scorer = scorer.model
    result.history.extend({**row, "model": "scorer"} for row in iul.history)
    result.images += iul.images
    result.seconds += iul.seconds
    return result


def scorer_schedule(s: MIALTrainSettings) -> list[Stage]:
    """The scorer's stages with ``detector: separate``: :func:`build_schedule` without its
    first label stage (the scorer starts from the trained detector), i.e. ``rounds ×
    [max, min, label]``, the last label stage at ``final_lr_scale``; every stage warms up
    over ``stage_warmup_iters``."""
    return build_schedule(s)[1:]


def run_schedule(ops: StageOps, adapter: Adapter, dataset: Any, labeled: list[int], unlabeled: Sequence[int],
                 cfg: TrainConfig, s: Any, seed: int, progress: bool, desc: str,
                 schedule: list[Stage] | None = None) -> TrainResult:
    """Run ``schedule`` (default :func:`build_schedule` ``(s)``, whose first stage warms up over
    ``train.warmup_iters``; a given schedule warms every stage up over ``stage_warmup_iters``)
    stage by stage with :func:`run_stage` and ``ops`` (:data:`DETECTION_STAGES` or the
    classifier's), on a seeded random unlabeled subset the size of ``labeled``.

    Without unlabeled images (none left, or ``s.iul`` off) only the label stages run.
    """
    gen = torch.Generator().manual_seed(seed)
    subset = unlabeled_subset(labeled, unlabeled, gen) if s.iul else []
    first_warmup = schedule is None
    schedule = build_schedule(s) if schedule is None else schedule
    if not subset:
        schedule = [st for st in schedule if st.kind == "label"]  # still ends at final_lr_scale
    result = TrainResult()
    start = time.perf_counter()
    with distributed.data_parallel(adapter), torch.random.fork_rng(devices=[]):
        share = len(distributed.epoch_part(labeled))  # this process's labeled images per epoch
        per_epoch = math.ceil(share / cfg.batch_size) * s.repeat
        total_iters = sum(st.epochs for st in schedule) * per_epoch
        torch.manual_seed(seed)
        bar = tqdm(total=total_iters, desc=desc, unit="it", disable=not progress, leave=False)
        epoch = 1
        for k, stage in enumerate(schedule):
            warmup = warmup_length(total_iters, cfg) if k == 0 and first_warmup else s.stage_warmup_iters
            rows, n = run_stage(adapter, dataset, stage, labeled, subset, cfg, s, gen, first_epoch=epoch,
                                warmup_iters=warmup, bar=bar, ops=ops)
            result.history.extend(rows)
            stop_if_dead(result.history, cfg)
            result.images += n
            epoch += stage.epochs
        bar.close()
    result.seconds = time.perf_counter() - start
    return result
