"""The Python API: active learning driven from Python, with your own torchvision detector.

Two uses (both exported from :mod:`activedet`):

- replay a protocol from a config: :func:`load_config` / :func:`config_from_dict`,
  :func:`simulate`, then read the run with :class:`Ledger`;
- rank a pool with your own model: :func:`wrap_detector` around a torchvision RetinaNet,
  FCOS or Faster R-CNN you trained, :func:`image_pool` over image files,
  :func:`build_strategy` by name with settings, :func:`select`.

:func:`select` is the selection step the command line's ``simulate`` and ``select`` run each
round (:func:`activedet.loop.runner.select_batch`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from activedet.config import ExperimentConfig, ModelConfig, config_from_dict, load_config
from activedet.data.base import DetectionDataset, ImageRecord, image_size
from activedet.data.pool import Pool
from activedet.errors import ActivedetError, StrategyError
from activedet.strategies.base import Selection, Strategy

if TYPE_CHECKING:
    from activedet.models.base import Adapter

__all__ = ["simulate", "build_strategy", "wrap_detector", "image_pool", "select", "Selection"]


def simulate(cfg: ExperimentConfig | Mapping[str, Any] | str | Path, out: str | Path, resume: bool = False,
             progress: bool = False) -> dict[str, Any]:
    """Run ``activedet simulate``: ``cfg`` is an :class:`ExperimentConfig`, a mapping laid out
    like the YAML file, or the path of one. Returns the final status (``activedet status
    --json``); everything is recorded in ``out/ledger.sqlite`` (read it with :class:`Ledger`)."""
    from activedet.loop.runner import run

    if isinstance(cfg, (str, Path)):
        cfg = load_config(cfg)
    elif isinstance(cfg, Mapping):
        cfg = config_from_dict(dict(cfg))
    return run(cfg, out, resume=resume, progress=progress)


def build_strategy(name: str, settings: Mapping[str, Any] | None = None, **kwargs: Any) -> Strategy:
    """A registered strategy (``activedet strategies``) with its settings, validated like the
    YAML keys beside ``strategy.name`` (``build_strategy("entropy", aggregate="max")``;
    keys that are Python keywords go in ``settings``: ``{"lambda": 0.5}``)."""
    from activedet.strategies.registry import build_strategy as build

    strategy = build(name, {**dict(settings or {}), **kwargs})
    strategy.progress = False
    return strategy


class _OwnModel:
    """Mix-in of an adapter that wraps the caller's model: it scores, it never rebuilds."""

    def reset(self, seed: int) -> None:
        raise ActivedetError("this adapter wraps your own model: activedet does not rebuild or train it")


def wrap_detector(model: Any, num_classes: int, device: str = "cpu") -> Any:
    """An adapter around your own torchvision detector (``RetinaNet``, ``FCOS`` or
    ``FasterRCNN``, subclasses included) with ``num_classes`` object classes, labels
    1..``num_classes`` (torchvision's convention, 0 is background). Strategies read its
    detections, class probabilities, features and gradients as they read activedet's own
    models; ``model`` is moved to ``device`` and used as is (eval mode while scoring)."""
    from activedet.models import families
    from activedet.models.detection_adapter import DetectionAdapter

    arch = DetectionAdapter.arch_of(model)
    if arch is None:
        raise StrategyError(f"wrap_detector needs a torchvision RetinaNet, FCOS or FasterRCNN, "
                            f"got {type(model).__name__}")
    cfg = ModelConfig(arch=arch, backbone="mobilenet_v2", pretrained=False,
                      image_size=DetectionAdapter.input_side(model))
    adapter = type("OwnDetectionAdapter", (_OwnModel, families.adapter_class(arch)), {})(cfg, num_classes, "plain",
                                                                                        device)
    adapter.model = model.to(adapter.device)
    return adapter


def image_pool(paths: Sequence[str | Path], class_names: Sequence[str]) -> DetectionDataset:
    """An unlabeled pool of image files (ids 1..N in the order given), for :func:`select`.
    ``class_names``: your detector's classes, in label order 1..C. Sizes are read from the
    file headers; a file that cannot be opened is a :class:`DatasetError` naming it."""
    records = []
    for k, raw in enumerate(paths, start=1):
        path = Path(raw)
        width, height = image_size(path, "image_pool")
        records.append(ImageRecord(id=k, file_name=path.name, width=width, height=height, path=path))
    return DetectionDataset(records, class_names, name="pool")


def select(strategy: Strategy, adapter: Adapter, dataset: Any, budget: int, labeled: Sequence[int] = (),
           seed: int = 0) -> Selection:
    """The ``budget`` images of ``dataset`` (not in ``labeled``) that ``strategy`` ranks
    first with the model in ``adapter``: the selection step ``simulate`` and ``select`` run
    each round (:func:`activedet.loop.runner.select_batch`, as round 1 with run seed
    ``seed``). Same seed, same selection."""
    variant = adapter.variant
    if strategy.model_variant != variant:
        raise StrategyError(f"strategy '{strategy.name}' needs activedet's own '{strategy.model_variant}' "
                            f"model (use it through a config); a plain torchvision model can be ranked "
                            f"by e.g. entropy, margin, coreset, localization_stability")
    strategy.check_model(adapter.task, adapter.arch)
    pool = Pool.from_dataset(dataset)
    if labeled:
        pool.add(labeled, 0)
    from activedet.loop.runner import select_batch

    ids, scores, _, info = select_batch(strategy, adapter, pool, 1, budget, "images", seed)
    return Selection([int(i) for i in ids], scores or {}, info)
