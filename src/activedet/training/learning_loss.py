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

from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F

from activedet import distributed
from activedet.config import TrainConfig
from activedet.errors import ConfigError
from activedet.models.learning_loss import (LearningLossSettings, classifier_levels, detection_losses_and_levels,
                                            loss_ranking_loss)
from activedet.training.trainer import TrainResult, train_epochs

if TYPE_CHECKING:
    from activedet.models.base import Adapter

def stop_grad_epoch(setting: int | None, task: str, epochs: int) -> int:
    """The epoch from which the module's input is detached (see the module docstring):
    ``setting`` (the ``stop_grad_epoch`` key), or by default 0 for detectors and 60% of
    ``epochs`` for classifiers."""
    if setting is None:
        return 0 if task == "detection" else int(round(0.6 * epochs))
    return setting


def per_image_losses(adapter: Adapter, inputs: Any, targets: Any, detach_levels: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Train mode: target loss per image (B,) and predicted loss (B,)."""
    model = adapter.model
    model.train()
    if adapter.task == "detection":
        losses, levels = detection_losses_and_levels(adapter, inputs, targets)
    else:
        logits, levels = classifier_levels(model, inputs)
        losses = F.cross_entropy(logits, targets, reduction="none")
    if detach_levels:
        levels = [x.detach() for x in levels]
    return losses, model.loss_module(levels)


def train_learning_loss(adapter: Adapter, dataset: Any, labeled: Sequence[int], unlabeled: Sequence[int],
                        cfg: TrainConfig, params: dict[str, Any], seed: int,
                        progress: bool = True) -> TrainResult:
    """Train ``adapter.model`` (with ``loss_module``) on the labeled ids for ``cfg.epochs``."""
    if adapter.loss_module() is None:
        raise ConfigError("trainer 'learning_loss' needs the model variant 'learning_loss' "
                          "(strategy 'learning_loss')")
    s = LearningLossSettings.pick(params)
    lam, margin = s.lam, s.margin
    stop = stop_grad_epoch(s.stop_grad_epoch, adapter.task, cfg.epochs)

    def losses(inputs: Any, targets: Any, epoch: int) -> dict[str, torch.Tensor]:
        target_loss, pred = per_image_losses(adapter, inputs, targets, epoch >= stop)
        return {"target": target_loss.mean(),
                "loss_prediction": lam * loss_ranking_loss(pred, target_loss, margin)}

    with distributed.data_parallel(adapter):  # data-parallel in a distributed run, like train_plain
        result = train_epochs(adapter, dataset, labeled, cfg, seed, progress, losses)
    for row in result.history:
        row["stop_grad"] = row["epoch"] - 1 >= stop
    return result


__all__ = ["per_image_losses", "stop_grad_epoch", "train_learning_loss"]
