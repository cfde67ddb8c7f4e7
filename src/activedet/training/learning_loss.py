"""Joint training of a model and its loss-prediction module (Yoo & Kweon 2019).

Each iteration: per-image target losses l (B,) and the module's predictions l̂ (B,) from
the model's intermediate features; the step minimises ``mean(l) + λ · L_rank(l̂, l)``
(:func:`~activedet.models.learning_loss.loss_ranking_loss`, margin ξ, λ = 1 in the paper).
From epoch ``stop_grad_epoch`` on (0-based count of finished epochs) the features are
detached before the module, so the ranking loss no longer reaches the backbone. Default
(``null``): 0 for detectors (ISAL's supplementary D.2: otherwise detection deteriorates),
60% of the epochs for classifiers (the paper's 120 of 200).

Otherwise the schedule is :func:`~activedet.training.trainer.train_plain`'s: SGD with
momentum, warm-up, step decay, gradient clipping, seeded batch order and flips.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from activedet.config import TrainConfig
from activedet.errors import ActivedetError, ConfigError
from activedet.models.learning_loss import classifier_levels, detection_losses_and_levels, loss_ranking_loss
from activedet.training.trainer import TrainResult, batches, check_finite, lr_factor, make_optimizer, sgd_step

#: the strategy keys this trainer reads, with their defaults
TRAIN_DEFAULTS: dict[str, Any] = {"lambda": 1.0, "margin": 1.0, "stop_grad_epoch": None}


def _number(params: Mapping[str, Any], key: str, low: float) -> float:
    v = params.get(key, TRAIN_DEFAULTS[key])
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low:
        raise ConfigError(f"strategy key '{key}' = {v!r}: expected a number >= {low:g}")
    return float(v)


def stop_grad_epoch(params: Mapping[str, Any], task: str, epochs: int) -> int:
    """The epoch from which the module's input is detached (see the module docstring)."""
    v = params.get("stop_grad_epoch", None)
    if v is None:
        return 0 if task == "detection" else int(round(0.6 * epochs))
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(f"strategy key 'stop_grad_epoch' = {v!r}: expected an integer >= 0 or null")
    return v


def per_image_losses(adapter: Any, inputs: Any, targets: Any, detach_levels: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Train mode: target loss per image (B,) and predicted loss (B,)."""
    model = adapter.model
    model.train()
    if adapter.task == "detection":
        losses, levels = detection_losses_and_levels(model, inputs, targets)
    else:
        logits, levels = classifier_levels(model, inputs)
        losses = F.cross_entropy(logits, targets, reduction="none")
    if detach_levels:
        levels = [x.detach() for x in levels]
    return losses, model.loss_module(levels)


def train_learning_loss(adapter: Any, dataset: Any, labeled: Sequence[int], unlabeled: Sequence[int],
                        cfg: TrainConfig, params: dict[str, Any], seed: int,
                        progress: bool = True) -> TrainResult:
    """Train ``adapter.model`` (with ``loss_module``) on the labeled ids for ``cfg.epochs``."""
    labeled = list(labeled)
    if not labeled:
        raise ActivedetError("cannot train on an empty labeled set")
    if not hasattr(adapter.model, "loss_module"):
        raise ConfigError("trainer 'learning_loss' needs the model variant 'learning_loss' "
                          "(strategy 'learning_loss')")
    lam, margin = _number(params, "lambda", 0.0), _number(params, "margin", 0.0)
    stop = stop_grad_epoch(params, adapter.task, cfg.epochs)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(len(labeled) / cfg.batch_size)
    total_iters = per_epoch * cfg.epochs
    result = TrainResult()
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = make_optimizer(adapter.model.parameters(), cfg)
        bar = tqdm(total=total_iters, desc="train", unit="it", disable=not progress, leave=False)
        it = 0
        for epoch in range(cfg.epochs):
            sums: dict[str, float] = {}
            for batch in batches(labeled, cfg.batch_size, gen):
                lr = cfg.lr * lr_factor(it, total_iters, cfg)
                for g in opt.param_groups:
                    g["lr"] = lr
                inputs, targets = adapter.load_batch(dataset, batch, cfg.hflip, gen)
                target_loss, pred = per_image_losses(adapter, inputs, targets, epoch >= stop)
                terms = {"target": target_loss.mean(), "loss_prediction": lam * loss_ranking_loss(pred, target_loss, margin)}
                total = check_finite(terms, it, lr)
                sgd_step(opt, total, cfg.grad_clip)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(batch)
                result.images += len(batch)
                it += 1
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(total.detach()):.3f}")
                bar.update(1)
            result.history.append({"stage": "train", "epoch": epoch + 1, "stop_grad": epoch >= stop,
                                   **{k: v / len(labeled) for k, v in sums.items()}})
        bar.close()
    result.seconds = time.perf_counter() - start
    return result


__all__ = ["TRAIN_DEFAULTS", "per_image_losses", "stop_grad_epoch", "train_learning_loss"]
