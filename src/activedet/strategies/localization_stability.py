"""Localization stability (Kao et al., ACCV 2018, "Localization-aware active learning").

The detector runs on the clean image and on copies corrupted by Gaussian noise of
increasing standard deviation σ_1 < … < σ_N. For each reference detection B_0(j) of the
clean image, its corresponding box under noise level n is the noisy detection with the
highest IoU with it (IoU 0 when there is none). Box stability is the mean of those IoUs;
image stability weights it by the reference box's highest class probability::

    S_B(j) = (1/N) Σ_n IoU(B_0(j), C_n(B_0(j)))
    S_I    = Σ_j P_max(B_0(j)) S_B(j) / Σ_j P_max(B_0(j))

Less stable images are more informative: score = 1 − S_I. Reference detections are those
scoring at least ``min_score`` (the adapter drops boxes clipped to nothing at the border: an
empty box has no IoU); images without any are unscored. Noise levels are in pixel units of
0–255 (the paper's 8, 16, …, 48); the noise is drawn per image and level from the selection
rng, so the same seed gives the same scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from activedet.data.pool import Pool
from activedet.errors import ConfigError, StrategyError
from activedet.settings import Settings, setting
from activedet.strategies.base import Strategy
from activedet.strategies.registry import register

if TYPE_CHECKING:
    from activedet.models.base import Adapter


def box_stability(ref_boxes: torch.Tensor, noisy_boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """ref_boxes (J, 4) xyxy; noisy_boxes: N tensors (K_n, 4) -> (J,) mean over n of the
    best IoU of each reference box with the level-n boxes (0 when level n has none)."""
    if not noisy_boxes:
        raise ConfigError("localization stability needs at least one noise level")
    total = torch.zeros(ref_boxes.shape[0], dtype=torch.float64)
    for boxes in noisy_boxes:
        if boxes.shape[0] and ref_boxes.shape[0]:
            total += box_iou(ref_boxes.double(), boxes.double()).max(1).values
    return total / len(noisy_boxes)


def image_stability(stability: torch.Tensor, p_max: torch.Tensor) -> float | None:
    """(J,) box stabilities, (J,) highest class probabilities -> confidence-weighted mean
    S_I, or None when J = 0."""
    if stability.numel() == 0:
        return None
    w = p_max.double()
    if float(w.sum()) <= 0:
        return float(stability.mean())
    return float((w * stability).sum() / w.sum())


class NoisyView:
    """A dataset whose ``load_image`` adds N(0, σ²) noise (σ in [0, 1] units), clamped to
    [0, 1]; the noise of image ``i`` comes from a generator seeded with ``(seed, i)``."""

    def __init__(self, dataset: Any, sigma: float, seed: int) -> None:
        self.dataset, self.sigma, self.seed = dataset, float(sigma), int(seed)

    def load_image(self, image_id: int) -> torch.Tensor:
        img = self.dataset.load_image(image_id)
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, int(image_id)])
                                                .generate_state(1)[0]))
        noise = torch.randn(img.shape, generator=gen, dtype=torch.float32) * self.sigma
        return (img + noise.to(img.device, img.dtype)).clamp_(0.0, 1.0)

    def record(self, image_id: int) -> Any:
        """The underlying record (size, boxes): noise changes pixels only."""
        return self.dataset.record(image_id)


@dataclass(frozen=True)
class LocalizationStabilitySettings(Settings):
    noise_levels: list[float] = setting([8.0, 16.0, 24.0, 32.0, 40.0, 48.0], "standard deviations of the Gaussian "
                                        "noise, in pixel units of 0-255", gt=0, le=255, min_items=1)
    min_score: float = setting(0.1, "clean-image detections scoring at least this are reference boxes",
                               ge=0, le=1)
    batch_size: int = setting(8, "images per inference batch", ge=1)


@register
class LocalizationStabilityStrategy(Strategy):
    name = "localization_stability"
    reference = "Kao et al. 2018 (localization stability under Gaussian noise, confidence-weighted)"
    tasks = ("detection",)
    archs = None  # any model that provides what it wants
    wants = frozenset({"det_probs"})
    settings_type = LocalizationStabilitySettings
    shardable = False  # noise seeds are drawn per scored image: every process scores all

    def score(self, adapter: Adapter, pool: Pool, ids: list[int], rng: np.random.Generator) -> dict[int, float]:
        if adapter.task != "detection":
            raise StrategyError(f"strategy 'localization_stability' needs a detector, got a {adapter.task} model")
        levels = self.settings.noise_levels
        bs, thr = self.settings.batch_size, self.settings.min_score
        ref: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for inf in adapter.infer(pool.dataset, ids, bs, progress=self.progress, keep_anchors=False):
            keep = inf.scores >= thr
            if bool(keep.any()):
                p = inf.probs[keep]
                ref[inf.image_id] = (inf.boxes[keep], p.max(-1).values if p.numel() else inf.scores[keep])
        scored = [i for i in ids if i in ref]
        noisy: dict[int, list[torch.Tensor]] = {i: [] for i in scored}
        for sigma in levels:
            view = NoisyView(pool.dataset, sigma / 255.0, int(rng.integers(2**31)))
            for inf in adapter.infer(view, scored, bs, keep_anchors=False):
                noisy[inf.image_id].append(inf.boxes)
        out = {}
        for i in scored:
            boxes, p_max = ref[i]
            s = image_stability(box_stability(boxes, noisy[i]), p_max)
            if s is not None:
                out[i] = 1.0 - s
        return out


__all__ = ["box_stability", "image_stability", "NoisyView"]
