"""Learning loss (Yoo & Kweon, CVPR 2019): a loss-prediction module on intermediate features.

The module takes several feature maps (a detector's FPN levels, ISAL D.2; a classifier's
blocks, ISAL D.1), global-average-pools each, maps it through FC(hidden) + ReLU, and maps
the concatenation to one scalar per image: the predicted loss. It is trained jointly with
the target model on the margin ranking loss of :func:`loss_ranking_loss`.

The module is attached to the model as the submodule ``loss_module`` (model variant
``"learning_loss"``), so checkpoints carry it; torchvision's detectors ignore it.
Classifier feature maps are read with forward hooks on the modules named in
``model.loss_taps`` (ResNet: ``layer1..layer4``; SmallCNN: each block's ReLU).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from activedet.data.stream import image_batches
from activedet.errors import ConfigError
from activedet.settings import Settings, setting

if TYPE_CHECKING:
    from activedet.models.base import Adapter, DetectorAdapter

__all__ = ["LearningLossSettings", "LossPredictionModule", "attach_loss_module", "loss_ranking_loss", "detection_losses_and_levels",
           "classifier_levels", "predict_losses"]


@dataclass(frozen=True)
class LearningLossSettings(Settings):
    """The ``learning_loss`` trainer's keys (:mod:`activedet.training.learning_loss`)."""

    lam: float = setting(1.0, "λ, weight of the loss-prediction (ranking) loss", key="lambda", ge=0)
    margin: float = setting(1.0, "margin ξ of the ranking loss", ge=0)
    stop_grad_epoch: int | None = setting(
        None, "epoch from which the module's input is detached; null: 0 for detectors, "
              "60% of the epochs for classifiers", ge=0,
        provenance="detectors: ISAL supplementary D.2; classifiers: the paper's 120 of 200 epochs")


class LossPredictionModule(nn.Module):
    """levels (B, C_l, H_l, W_l) for l = 1..L -> (B,) predicted loss.

    Per level: global average pool -> Linear(C_l, hidden) -> ReLU; concat (B, L·hidden)
    -> Linear(L·hidden, 1).
    """

    def __init__(self, in_channels: Sequence[int], hidden: int = 128) -> None:
        super().__init__()
        if not in_channels:
            raise ConfigError("the loss-prediction module needs at least one feature level")
        self.in_channels = list(in_channels)
        self.fcs = nn.ModuleList(nn.Linear(c, hidden) for c in in_channels)
        self.out = nn.Linear(hidden * len(in_channels), 1)

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        if len(levels) != len(self.fcs):
            raise ValueError(f"expected {len(self.fcs)} feature levels, got {len(levels)}")
        h = [F.relu(fc(x.mean((2, 3)))) for fc, x in zip(self.fcs, levels)]
        return self.out(torch.cat(h, 1)).squeeze(1)


def loss_ranking_loss(pred: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """Yoo & Kweon's pairwise loss: pred, target (B,) -> scalar.

    The batch is split in halves paired as (i, B−1−i) (an odd last image is left out);
    for each pair ``max(0, −sign(l_i − l_j)·(l̂_i − l̂_j) + margin)`` with sign −1 when
    l_i <= l_j; mean over pairs; 0 when B < 2. ``target`` is detached.
    """
    n = (pred.shape[0] // 2) * 2
    if n == 0:
        return pred.sum() * 0.0
    pred, target = pred[:n], target[:n].detach()
    dp = (pred - pred.flip(0))[: n // 2]
    dt = (target - target.flip(0))[: n // 2]
    sign = 2.0 * (dt > 0).to(dp.dtype) - 1.0
    return torch.clamp(margin - sign * dp, min=0.0).mean()


# ---------------------------------------------------------------- building
def _classifier_taps(net: nn.Module) -> list[str]:
    names = dict(net.named_modules())
    if all(f"layer{k}" in names for k in range(1, 5)):
        return [f"layer{k}" for k in range(1, 5)]
    body = getattr(net, "body", None)
    if isinstance(body, nn.Sequential):
        return [f"body.{n}" for n, m in body.named_children() if isinstance(m, nn.ReLU)]
    raise ConfigError(f"learning loss cannot find feature blocks in {type(net).__name__}")


def attach_loss_module(model: nn.Module, task: str, hidden: int = 128, probe_size: int = 64) -> nn.Module:
    """Add ``model.loss_module`` sized from a dry run on a (1, 3, probe, probe) zero image.

    Detection: the backbone's (FPN) outputs. Classification: the outputs of the tapped
    blocks (``model.loss_taps``). The dry run is in eval mode without gradients, so it
    changes no batch-norm statistics and draws no random numbers.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            dev = next(model.parameters()).device
            x = torch.zeros((1, 3, probe_size, probe_size), device=dev)
            if task == "detection":  # a dense family (its adapter builds variant learning_loss)
                levels = list(model.backbone(x).values())
            else:
                model.loss_taps = _classifier_taps(model)  # type: ignore[assignment]
                with _tapped(model) as levels:
                    model(x)
    finally:
        model.train(was_training)
    model.loss_module = LossPredictionModule([t.shape[1] for t in levels], hidden).to(x.device)
    return model


@contextlib.contextmanager
def _tapped(model: nn.Module) -> Iterator[list[Tensor]]:
    """Collect the outputs of ``model.loss_taps`` during forwards inside the block."""
    out: list[Tensor] = []
    mods = dict(model.named_modules())
    handles = [mods[n].register_forward_hook(lambda _m, _i, o: out.append(o)) for n in model.loss_taps]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------- forwards
def classifier_levels(model: nn.Module, inputs: Tensor) -> tuple[Tensor, list[Tensor]]:
    """(B, 3, S, S) -> logits (B, C) and the tapped feature maps, in the model's current mode."""
    with _tapped(model) as levels:
        logits = model(inputs)
    return logits, list(levels)


def detection_losses_and_levels(adapter: DetectorAdapter, images: list[Tensor],
                                targets: list[dict]) -> tuple[Tensor, list[Tensor]]:
    """Per-image detection losses (B,) and the FPN levels [(B, C, H, W)] of one dense
    forward (:meth:`~activedet.models.detection_adapter.DenseDetectionAdapter.dense_pass`),
    in the model's current mode.

    Image b's loss is the detector's loss on that image alone (sum of its terms):
    RetinaNet averages these over the batch, so their mean equals its batch loss;
    FCOS normalises by the foreground count of each image instead of the batch's.
    """
    p = adapter.dense_pass(images, targets)
    return adapter.pass_losses(p), p.features


@torch.no_grad()
def predict_losses(adapter: Adapter, dataset: Any, ids: Sequence[int], batch_size: int = 8) -> np.ndarray:
    """(N,) predicted loss of each id (eval mode), in the order of ``ids``. A detector's
    images stream through :func:`~activedet.data.stream.image_batches` in batches of one
    input size (``adapter.input_size``): the module pools whole feature maps, which a
    mixed-size batch would pad."""
    model = adapter.model
    if not hasattr(model, "loss_module"):
        raise ConfigError("the model has no loss-prediction module (model variant 'learning_loss')")
    model.eval()
    ids = list(ids)

    def levels() -> Iterator[tuple[list[int], list[Tensor]]]:
        if adapter.task == "detection":
            for chunk, loaded in image_batches(dataset, ids, batch_size, adapter.workers, group=adapter.input_size):
                yield chunk, adapter.levels([img.to(adapter.device) for img in loaded])[2]
        else:
            for s in range(0, len(ids), batch_size):
                chunk = ids[s:s + batch_size]
                yield chunk, classifier_levels(model, adapter._load_inputs(dataset, chunk, False, None))[1]

    out: dict[int, float] = {}
    for chunk, lv in levels():
        out.update(zip(chunk, model.loss_module(lv).float().cpu().tolist()))
    return np.asarray([out[i] for i in ids], dtype=np.float32)
