"""Build the adapter a config and strategy ask for."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from activedet.config import ExperimentConfig

if TYPE_CHECKING:
    from activedet.models.base import Adapter


def build_adapter(cfg: ExperimentConfig, num_classes: int, strategy: Any | None = None) -> Any:
    """Detection or classification adapter for ``cfg.model`` on ``cfg.device``.

    The strategy chooses the model variant (``strategy.model_variant``) and its settings
    (``strategy.model_kwargs()``); the loop never asks which strategy it holds. With
    ``model.offline_fallback`` the backbone built may differ from the one asked for:
    ``cfg.model.backbone`` is set to it, so a config stored afterwards says what ran.
    Sets this process's intra-op threads to ``cfg.threads`` (0: left as torch chose).
    """
    if cfg.threads > 0:  # before the model exists: every pass of this process runs on them
        torch.set_num_threads(cfg.threads)
    variant = getattr(strategy, "model_variant", "plain")
    kwargs = strategy.model_kwargs() if strategy is not None else {}
    if cfg.task == "detection":
        from activedet.models.detection_adapter import detection_adapter

        adapter: Adapter = detection_adapter(cfg.model, num_classes, variant, cfg.device, kwargs)
        cfg.model.backbone = adapter.cfg.backbone  # model.offline_fallback: the config records what runs
    else:
        from activedet.models.classifier import ClassificationAdapter

        adapter = ClassificationAdapter(cfg.model, num_classes, variant, cfg.device, **kwargs)
    adapter.workers = cfg.dataset.workers  # image-loading processes of training, scoring and evaluation
    return adapter
