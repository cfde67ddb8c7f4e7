"""The plain training schedule: SGD with momentum, warm-up, step decay, gradient clipping.

Works for any adapter (detector or classifier) through ``load_batch`` + ``train_loss``.
Seeded and deterministic on CPU: batch order and augmentation come from a generator
seeded with ``seed``; the global RNG (used inside torchvision, e.g. Faster R-CNN's
sampler) is seeded inside ``fork_rng`` and restored afterwards.
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from activedet.config import TrainConfig
from activedet.errors import ActivedetError, ConfigError


@dataclass
class TrainResult:
    """What a training run reports: mean loss terms per stage/epoch, timing."""

    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch (or stage)
    seconds: float = 0.0
    images: int = 0

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


def lr_factor(it: int, total: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr at iteration ``it`` of ``total``: linear warm-up from 0.001,
    then ×0.1 after each fraction in ``cfg.lr_steps``."""
    f = 1.0
    if cfg.warmup_iters > 0 and it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        f = 0.001 * (1 - alpha) + alpha
    for step in cfg.lr_steps:
        if it >= int(math.ceil(step * total)) and step < 1:
            f *= 0.1
    return f


def batches(ids: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch of shuffled mini-batches (the last one may be smaller)."""
    ids = list(ids)
    order = torch.randperm(len(ids), generator=generator).tolist()
    return [[ids[j] for j in order[s:s + batch_size]] for s in range(0, len(ids), batch_size)]


def check_finite(losses: dict[str, torch.Tensor], it: int, lr: float) -> torch.Tensor:
    total = sum(losses.values())
    if not torch.isfinite(total):
        bad = {k: float(v) for k, v in losses.items()}
        raise ActivedetError(f"training loss is not finite at iteration {it} (lr {lr:g}): {bad}; "
                             "lower train.lr or set train.grad_clip")
    return total  # type: ignore[return-value]


def sgd_step(optimizer: torch.optim.Optimizer, total: torch.Tensor, grad_clip: float | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if grad_clip:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


def train_plain(adapter: Any, dataset: Any, labeled: Sequence[int], unlabeled: Sequence[int],
                cfg: TrainConfig, params: dict[str, Any], seed: int, progress: bool = True) -> TrainResult:
    """Train ``adapter.model`` on the labeled ids for ``cfg.epochs`` epochs."""
    return train_epochs(adapter, dataset, labeled, cfg, seed, progress,
                        lambda inputs, targets, epoch: adapter.train_loss(inputs, targets))


LossFn = Callable[[Any, Any, int], "dict[str, torch.Tensor]"]


def train_epochs(adapter: Any, dataset: Any, labeled: Sequence[int], cfg: TrainConfig, seed: int,
                 progress: bool, loss_fn: LossFn, desc: str = "train") -> TrainResult:
    """SGD over seeded shuffled batches of ``labeled`` for ``cfg.epochs`` epochs, minimising
    the sum of ``loss_fn(inputs, targets, epoch)`` (epoch counted from 0); warm-up, step
    decay and clipping from ``cfg``. History: the per-image mean of every loss term per epoch."""
    labeled = list(labeled)
    if not labeled:
        raise ActivedetError("cannot train on an empty labeled set")
    gen = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(len(labeled) / cfg.batch_size)
    total_iters = per_epoch * cfg.epochs
    result = TrainResult()
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = make_optimizer(adapter.model.parameters(), cfg)
        bar = tqdm(total=total_iters, desc=desc, unit="it", disable=not progress, leave=False)
        it = 0
        for epoch in range(cfg.epochs):
            sums: dict[str, float] = {}
            for batch in batches(labeled, cfg.batch_size, gen):
                lr = cfg.lr * lr_factor(it, total_iters, cfg)
                for g in opt.param_groups:
                    g["lr"] = lr
                inputs, targets = adapter.load_batch(dataset, batch, cfg.hflip, gen)
                losses = loss_fn(inputs, targets, epoch)
                total = check_finite(losses, it, lr)
                sgd_step(opt, total, cfg.grad_clip)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(batch)
                result.images += len(batch)
                it += 1
                rate = result.images / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(total.detach()):.3f}", img_s=f"{rate:.1f}")
                bar.update(1)
            result.history.append({"stage": "train", "epoch": epoch + 1,
                                   **{k: v / len(labeled) for k, v in sums.items()}})
        bar.close()
    result.seconds = time.perf_counter() - start
    return result


Trainer = Callable[..., TrainResult]

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
