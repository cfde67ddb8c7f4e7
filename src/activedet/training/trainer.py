"""The plain training schedule: SGD with momentum, warm-up, step decay, gradient clipping.

Works for any adapter (detector or classifier) through ``load_batch`` + ``train_loss``.
Seeded and deterministic on CPU: batch order and augmentation come from a generator
seeded with ``seed``; the global RNG (used inside torchvision, e.g. Faster R-CNN's
sampler) is seeded inside ``fork_rng`` and restored afterwards.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from activedet import distributed
from activedet.config import TrainConfig
from activedet.data.stream import chunk_batches
from activedet.errors import ActivedetError, ConfigError, TrainingCollapseError, TrainingError
from activedet.training.health import Health, assess, dead_branch

if TYPE_CHECKING:
    from activedet.models.base import Adapter

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run reports: mean loss terms per stage/epoch, timing."""

    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch (or stage)
    seconds: float = 0.0
    images: int = 0
    skipped_batches: int = 0  # batches dropped for a non-finite loss (train.on_nonfinite: skip_batch)
    health: dict[str, Any] = field(default_factory=dict)  # set by train_round: verdict and attempts

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig, lr: float | None = None,
                   weight_decay: float | None = None) -> torch.optim.SGD:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ActivedetError("no trainable parameters")
    return torch.optim.SGD(params, lr=cfg.lr if lr is None else lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay if weight_decay is None else weight_decay)


def warmup_length(total: int, cfg: TrainConfig) -> int:
    """Warm-up iterations of a schedule of ``total``: ``cfg.warmup_iters``, or
    ``cfg.warmup_fraction`` of ``total`` when that is longer (a round of a small labeled set
    has few iterations, so a fixed count can be over before the heads settle)."""
    return max(cfg.warmup_iters, int(math.ceil(cfg.warmup_fraction * total)))


def warmup_factor(it: int, iters: int) -> float:
    """Linear warm-up multiplier from 0.001 to 1 over ``iters`` iterations."""
    if iters <= 0 or it >= iters:
        return 1.0
    alpha = it / iters
    return 0.001 * (1 - alpha) + alpha


def lr_factor(it: int, total: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr at iteration ``it`` of ``total``: linear warm-up from 0.001
    (:func:`warmup_length`), then ×0.1 after each fraction in ``cfg.lr_steps``."""
    f = warmup_factor(it, warmup_length(total, cfg))
    for step in cfg.lr_steps:
        if it >= int(math.ceil(step * total)) and step < 1:
            f *= 0.1
    return f


def batches(ids: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch of shuffled mini-batches (the last one may be smaller); under data-parallel training this
    rank's share of the epoch (:func:`activedet.distributed.epoch_part`)."""
    ids = list(ids)
    order = distributed.epoch_part(torch.randperm(len(ids), generator=generator).tolist())
    return [[ids[j] for j in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]


def decoded_batches(adapter: Adapter, dataset: Any, chunks: Sequence[Sequence[int]]) -> Iterator[Sequence[Any] | None]:
    """Per batch of ``chunks`` (an epoch's, in order): its pixels decoded ahead by the
    adapter's ``workers`` loader processes (``dataset.workers``), for ``load_batch(...,
    decoded=)``; ``None`` for every batch when there are none (``load_batch`` reads them).
    The pixels are those ``load_batch`` would read, so training does not depend on workers."""
    workers = int(adapter.workers or 0)
    if workers == 0 or len(chunks) <= 1:
        for _ in chunks:
            yield None
        return
    for chunk, pixels in chunk_batches(dataset, chunks, workers, pixels=adapter.pixels):
        yield pixels


def check_finite(losses: dict[str, torch.Tensor], it: int, lr: float, policy: str = "stop",
                 where: str = "") -> torch.Tensor | None:
    """The summed loss, or, when it is NaN/inf: ``None`` under ``policy`` ``skip_batch``
    (the caller drops the batch), else a :class:`TrainingError` naming ``where`` (stage),
    the iteration and the loss terms."""
    total = sum(losses.values())
    if not torch.isfinite(total):
        if policy == "skip_batch":
            return None
        bad = {k: round(float(v.detach()), 4) for k, v in losses.items()}
        raise TrainingError(f"{where + ' ' if where else ''}training loss is not finite at iteration {it} "
                            f"(lr {lr:g}): {bad}; lower train.lr, set train.grad_clip, or "
                            "train.on_nonfinite: skip_batch")
    return total  # type: ignore[return-value]


class Precision:
    """``train.amp`` for one training run: float16 autocast and a gradient scaler on CUDA
    (the torch.amp recipe); on any other device ``amp`` is ignored with a warning and
    training runs in float32, so a config written for a GPU machine also runs on a laptop.
    Disabled, :meth:`autocast` does nothing and the scaler passes ``backward`` / ``step``
    through unchanged."""

    def __init__(self, amp: bool, device: torch.device | str) -> None:
        device = torch.device(device)
        self.enabled = bool(amp) and device.type == "cuda"
        if amp and not self.enabled:
            _warn_amp_ignored(device.type)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled)

    def autocast(self) -> Any:
        """Context for the forward pass and losses (float16 where torch.autocast allows)."""
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.enabled)


@functools.lru_cache(maxsize=None)
def _warn_amp_ignored(device_type: str) -> None:  # once per process and device type, not every stage
    log.warning("train.amp is ignored on %s (mixed precision runs on CUDA only): training in float32",
                device_type)


def model_device(adapter: Adapter) -> torch.device:
    """The device of ``adapter.model``'s parameters (CPU for a model without any)."""
    return next((p.device for p in adapter.model.parameters()), torch.device("cpu"))


def sgd_step(optimizer: torch.optim.Optimizer, total: torch.Tensor, grad_clip: float | None,
             scaler: torch.amp.GradScaler | None = None) -> None:
    """Backward and one step; with an enabled ``scaler`` (``train.amp``) the loss is scaled,
    gradients unscaled before clipping, and a step with inf/NaN gradients skipped by it."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None or not scaler.is_enabled():
        total.backward()
        if grad_clip:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        return
    scaler.scale(total).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()


def guarded_step(optimizer: torch.optim.Optimizer, losses: dict[str, torch.Tensor], it: int, lr: float,
                 cfg: TrainConfig, where: str, scaler: torch.amp.GradScaler | None = None) -> bool:
    """One SGD step on the summed ``losses`` (clipped per ``cfg``); ``False`` when the batch
    was dropped for a non-finite loss (``cfg.on_nonfinite: skip_batch``). A loss with no
    trainable input (every term frozen) takes no step."""
    total = check_finite(losses, it, lr, cfg.on_nonfinite, where)
    if not distributed.finite_everywhere(total is not None):  # data-parallel: all ranks skip together
        return False
    if total.requires_grad:
        sgd_step(optimizer, total, cfg.grad_clip, scaler)
    return True


class WeightAverage:
    """``train.average_last``: the uniform average of ``model``'s weights (and buffers) after
    every step from iteration ``ceil((1 - fraction) * total)`` on, copied into ``model`` by
    :meth:`finish`; with ``fraction`` 0 it does nothing. The averaging is
    :class:`torch.optim.swa_utils.AveragedModel`'s."""

    def __init__(self, model: torch.nn.Module, fraction: float, total: int) -> None:
        self.model, self.start = model, math.ceil((1.0 - fraction) * total) if fraction > 0 else None
        self.averaged: torch.optim.swa_utils.AveragedModel | None = None

    def step(self, it: int) -> None:
        """After step number ``it`` (counted from 1)."""
        if self.start is None or it <= self.start:
            return
        if self.averaged is None:
            self.averaged = torch.optim.swa_utils.AveragedModel(self.model, use_buffers=True)
        self.averaged.update_parameters(self.model)

    def finish(self) -> None:
        if self.averaged is not None:
            self.model.load_state_dict(self.averaged.module.state_dict())


def train_plain(adapter: Adapter, dataset: Any, labeled: Sequence[int], unlabeled: Sequence[int],
                cfg: TrainConfig, params: dict[str, Any], seed: int, progress: bool = True) -> TrainResult:
    """Train ``adapter.model`` on the labeled ids for ``cfg.epochs`` epochs (data-parallel
    in a distributed run, each process on its share of every epoch, gradients averaged)."""
    with distributed.data_parallel(adapter):
        return train_epochs(adapter, dataset, labeled, cfg, seed, progress,
                            lambda inputs, targets, epoch: adapter.train_loss(inputs, targets))


LossFn = Callable[[Any, Any, int], "dict[str, torch.Tensor]"]


def train_epochs(adapter: Adapter, dataset: Any, labeled: Sequence[int], cfg: TrainConfig, seed: int,
                 progress: bool, loss_fn: LossFn, desc: str = "train") -> TrainResult:
    """SGD over seeded shuffled batches of ``labeled`` for ``cfg.epochs`` epochs, minimising
    the sum of ``loss_fn(inputs, targets, epoch)`` (epoch counted from 0); warm-up, step
    decay and clipping from ``cfg``. History: the per-image mean of every loss term per epoch.
    Inside :func:`activedet.distributed.data_parallel` the losses are computed through
    :func:`~activedet.distributed.synced` (gradients averaged over ranks) and each rank takes its share of
    every epoch: ``cfg.batch_size`` is per process."""
    labeled = list(labeled)
    if not labeled:
        raise ActivedetError("cannot train on an empty labeled set")
    gen = torch.Generator().manual_seed(seed)
    share = len(distributed.epoch_part(labeled))  # this process's images per epoch (all in one process)
    per_epoch = math.ceil(share / cfg.batch_size)
    total_iters = per_epoch * cfg.epochs
    result = TrainResult()
    start = time.perf_counter()
    amp = Precision(cfg.amp, model_device(adapter))
    with torch.random.fork_rng(devices=[]), distributed.synced(adapter.model) as call:
        torch.manual_seed(seed)
        opt = make_optimizer(adapter.model.parameters(), cfg)
        bar = tqdm(total=total_iters, desc=desc, unit="it", disable=not progress, leave=False)
        average = WeightAverage(adapter.model, cfg.average_last, total_iters)
        it = 0
        for epoch in range(cfg.epochs):
            sums: dict[str, float] = {}
            seen = 0  # images whose losses are in ``sums`` (skipped batches are not)
            epoch_batches = batches(labeled, cfg.batch_size, gen)
            for batch, pixels in zip(epoch_batches, decoded_batches(adapter, dataset, epoch_batches)):
                lr = cfg.lr * lr_factor(it, total_iters, cfg)
                for g in opt.param_groups:
                    g["lr"] = lr
                inputs, targets = adapter.load_batch(dataset, batch, cfg.hflip, gen, pixels)
                with amp.autocast():
                    losses = call(lambda: loss_fn(inputs, targets, epoch))
                total = check_finite(losses, it, lr, cfg.on_nonfinite, f"{desc} epoch {epoch + 1}")
                if not distributed.finite_everywhere(total is not None):  # data-parallel: all ranks skip together
                    total = None
                it += 1
                if total is None:
                    result.skipped_batches += 1
                    bar.update(1)
                    continue
                sgd_step(opt, total, cfg.grad_clip, amp.scaler)
                average.step(it)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(batch)
                result.images += len(batch)
                seen += len(batch)
                rate = result.images / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(total.detach()):.3f}", img_s=f"{rate:.1f}")
                bar.update(1)
            sums, seen = distributed.reduce_sums(sums, seen)  # data-parallel: every rank sees the same history
            result.history.append({"stage": "train", "epoch": epoch + 1,
                                   **{k: v / max(1, seen) for k, v in sums.items()}})
            stop_if_dead(result.history, cfg)
        bar.close()
        average.finish()
    result.seconds = time.perf_counter() - start
    return result


Trainer = Callable[..., TrainResult]


def stop_if_dead(history: list[dict[str, Any]], cfg: TrainConfig) -> None:
    """Raise :class:`TrainingCollapseError` as soon as a branch is dead (see
    :mod:`activedet.training.health`), unless ``cfg.on_collapse`` is ``warn``: training on
    would only spend time on a model that cannot recover."""
    if cfg.on_collapse == "warn":
        return
    verdict = dead_branch(history)
    if verdict.unhealthy:
        raise TrainingCollapseError(str(verdict.reason), history)


def train_round(trainer: Trainer, adapter: Adapter, dataset: Any, labeled: Sequence[int], unlabeled: Sequence[int],
                cfg: TrainConfig, params: dict[str, Any], seed: int, progress: bool,
                restart: Callable[[int], int]) -> TrainResult:
    """Train one round with ``trainer`` and judge its health (:func:`~activedet.training.health.assess`).

    A collapsed round is handled per ``cfg.on_collapse``: ``retry`` calls ``restart(attempt)``
    (re-initialise the model; it returns the attempt's training seed) up to
    ``cfg.max_retries`` times, the last attempt trained to the end whatever happens;
    ``stop`` raises :class:`TrainingCollapseError`; ``warn`` logs and keeps the model.
    ``result.health`` records the verdict and every attempt (seed, reason); the history
    rows carry their ``attempt``.
    """
    attempts: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    tries = cfg.max_retries + 1 if cfg.on_collapse == "retry" else 1
    run_cfg = cfg
    for attempt in range(tries):
        if attempt:
            seed = restart(attempt)
        if attempt == tries - 1 and cfg.on_collapse == "retry":
            run_cfg = dataclasses.replace(cfg, on_collapse="warn")  # the last try runs to the end
        try:
            result = trainer(adapter, dataset, labeled, unlabeled, run_cfg, params, seed, progress)
            verdict = assess(result.history)
        except TrainingCollapseError as e:
            result, verdict = TrainResult(history=e.history), Health(True, e.reason)
        history += [{**row, "attempt": attempt} for row in result.history]
        attempts.append({"attempt": attempt, "seed": seed, "reason": verdict.reason})
        if not verdict.unhealthy:
            break
        if cfg.on_collapse == "stop":
            raise TrainingCollapseError(f"training collapsed: {verdict.reason}; set train.on_collapse: retry, "
                                        "or lower train.lr / raise train.warmup_fraction", history)
        if attempt + 1 < tries:
            log.warning("training collapsed (%s); retrying with a new initialisation (%d of %d)",
                        verdict.reason, attempt + 1, tries - 1)
        else:
            log.warning("training is unhealthy (%s)%s; the round keeps this model", verdict.reason,
                        f" after {tries - 1} retries" if tries > 1 else "")
    result.history = history
    result.health = {"unhealthy": verdict.unhealthy, "reason": verdict.reason, "attempts": attempts}
    return result


#: trainer name -> "module:function"; strategies name the trainer they need
_TRAINERS = {
    "plain": "activedet.training.trainer:train_plain",
    "mial": "activedet.training.mial:train_mial",
    "learning_loss": "activedet.training.learning_loss:train_learning_loss",
    "mial_iul": "activedet.training.mial_iul:train_mial_iul",
}


def get_trainer(name: str) -> Trainer:
    if name not in _TRAINERS:
        raise ConfigError(f"unknown trainer '{name}' (known: {', '.join(_TRAINERS)})")
    mod, fn = _TRAINERS[name].split(":")
    return getattr(importlib.import_module(mod), fn)
