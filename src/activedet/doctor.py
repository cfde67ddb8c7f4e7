"""``activedet doctor CONFIG.yaml``: check a config and its data without training.

Checks, each problem reported on one line (all of them, not only the first):

- the config loads and validates; the strategy exists and fits the model;
- every split loads (annotations parse, boxes lie inside their images, ids are unique);
- the unlabeled pool (``select``'s) lists, reaches no file twice, decodes, and holds
  ``--budget`` images beyond the labeled set;
- every image of every split decodes (the same threaded, cached check ``simulate`` runs
  before its first ledger row, :mod:`activedet.data.verify`);
- boxes are finite with positive width and height; the splits have the same classes; each
  class has at least one training box; the train split holds enough for ``loop``'s budget;
- ImageNet weights (``model.pretrained``) are in the torch hub cache or a packaged copy,
  or their URL answers (a ``HEAD`` request: nothing is downloaded);
- the device asked for is present.

:func:`diagnose` returns ``(problems, checked)``; the command prints the problems (or one
``ok`` line listing what was checked) and exits 1 when there is any problem.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np

from activedet.errors import ActivedetError

#: At most this many box problems are listed per split; the rest are counted.
MAX_BOX_PROBLEMS = 20


def probe_url(url: str, timeout: float = 5.0) -> str | None:
    """None when ``url`` answers a ``HEAD`` request, else why not. Downloads nothing."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except (urllib.error.URLError, OSError, ValueError) as e:
        return " ".join(str(getattr(e, "reason", e)).split()) or type(e).__name__


def diagnose(config_path: str | Path, progress: bool = False,
             probe: Callable[[str], str | None] | None = None,
             budget: int | None = None) -> tuple[list[str], list[str]]:
    """(problems, what was checked) for the config at ``config_path``; ``probe(url)``
    tells whether a weights URL answers (default :func:`probe_url`); ``budget``: the
    ``select --budget`` to check against the pool."""
    from activedet.config import load_config
    from activedet.strategies.registry import build_strategy

    try:
        cfg = load_config(config_path)
    except ActivedetError as e:
        return [str(e)], []
    problems: list[str] = []
    checked = ["config"]
    try:
        build_strategy(cfg.strategy.name, cfg.strategy.params).check_model(cfg.task, cfg.model.arch)
        checked.append(f"strategy {cfg.strategy.name}")
    except ActivedetError as e:
        problems.append(str(e))
    splits = _load_splits(cfg, problems)
    for which, ds in splits.items():
        before = len(problems)
        problems += _image_problems(ds, which, cfg.dataset.bad_images if which == "train" else "error", progress)
        problems += _box_problems(ds, which)
        if len(problems) == before:
            checked.append(f"{which} {len(ds)} images")
    problems += _split_problems(cfg, splits)
    problems += _pool_problems(cfg, progress, checked, splits, budget)
    problems += _weight_problems(cfg, probe or probe_url, checked)
    problems += _device_problems(cfg, checked)
    return problems, checked


def _load_splits(cfg: Any, problems: list[str]) -> dict[str, Any]:
    from activedet.loop.engine import load_split

    splits: dict[str, Any] = {}
    for which in ("train", "test", "reference"):
        try:
            ds = load_split(cfg, which)
            if ds is not None:  # no test split: a run records no metrics (it says so)
                splits[which] = ds
        except ActivedetError as e:
            problems.append(f"{which} split: {e}")
    return splits


def _image_problems(ds: Any, which: str, policy: str, progress: bool) -> list[str]:
    from activedet.data.verify import find_unreadable

    note = " (dataset.bad_images: skip would quarantine it)" if policy == "skip" else ""
    return [b.message() + note for b in find_unreadable(ds, which, progress)]


def _box_problems(ds: Any, which: str) -> list[str]:
    """Boxes the loaders let through that a run cannot use (in-memory datasets included)."""
    if getattr(ds, "task", "detection") != "detection":
        return []
    out: list[str] = []
    for i in ds.ids:
        r = ds.record(i)
        for k, (box, label) in enumerate(zip(np.asarray(r.boxes, np.float64).reshape(-1, 4), r.labels)):
            x1, y1, x2, y2 = box
            why = None
            if not np.all(np.isfinite(box)):
                why = "is not finite"
            elif x2 <= x1 or y2 <= y1:
                why = "has non-positive width/height"
            elif x1 < 0 or y1 < 0 or x2 > r.width or y2 > r.height:
                why = f"lies outside the {r.width}x{r.height} image"
            elif not 1 <= int(label) <= ds.num_classes:
                why = f"has label {int(label)} outside 1..{ds.num_classes}"
            if why:
                out.append(f"{which} split: image id {i} ({r.file_name}) box #{k} {box.tolist()} {why}")
    if len(out) > MAX_BOX_PROBLEMS:
        out = out[:MAX_BOX_PROBLEMS] + [f"{which} split: ... and {len(out) - MAX_BOX_PROBLEMS} more box problems"]
    return out


def _split_problems(cfg: Any, splits: dict[str, Any]) -> list[str]:
    from activedet.data.pool import Pool
    from activedet.loop.runner import check_budgets

    out: list[str] = []
    train = splits.get("train")
    labeling = cfg.dataset.unlabeled is not None  # a `select` config: its labeled set may start empty
    for which, ds in splits.items():
        if len(ds) == 0 and not (labeling and which == "train"):
            out.append(f"{which} split: no images")
        if ds.task != cfg.task:
            out.append(f"{which} split is a {ds.task} dataset but task is '{cfg.task}'")
        if train is not None and which != "train" and ds.class_names != train.class_names:
            out.append(f"{which} split classes {ds.class_names} differ from train classes {train.class_names}")
    if cfg.dataset.reference is not None and cfg.dataset.reference == cfg.dataset.test:
        out.append("'dataset.reference' must not be the test split")
    if train is None or len(train) == 0:
        return out
    if train.task == "detection":
        counts = np.zeros(train.num_classes + 1, dtype=int)
        for i in train.ids:
            np.add.at(counts, np.asarray(train.record(i).labels, dtype=int), 1)
        for c, name in enumerate(train.class_names, start=1):
            if counts[c] == 0:
                out.append(f"train split: class '{name}' has no boxes: a detector cannot learn it")
    if labeling:  # select takes its budget from --budget; loop's budgets are simulate's
        return out
    try:
        check_budgets(cfg.loop, Pool.from_dataset(train), cfg.annotator)
    except ActivedetError as e:
        out.append(str(e))
    return out


def _pool_problems(cfg: Any, progress: bool, checked: list[str], splits: dict[str, Any],
                   budget: int | None) -> list[str]:
    """``dataset.unlabeled`` (select's pool), as ``select`` checks it before training: it lists,
    no file is reached twice, every image decodes, and ``--budget`` fits the images left
    once the labeled set's files are taken out."""
    import os

    from activedet.data.verify import find_unreadable_files
    from activedet.labeling.sources import duplicate_message, list_unlabeled

    if cfg.dataset.unlabeled is None:
        return []
    try:
        listing = list_unlabeled(cfg.dataset.unlabeled)
    except ActivedetError as e:
        return [f"unlabeled pool: {e}"]
    out = [duplicate_message(listing)] if listing.duplicates else []
    note = " (dataset.bad_images: skip would leave it out of the pool)" if cfg.dataset.bad_images == "skip" else ""
    bad = find_unreadable_files(dict(enumerate(Path(p) for p in listing.paths)), "unlabeled", progress)
    out += [f"unlabeled pool: cannot decode image {b.path}: {b.reason}{note}" for b in bad]
    if not listing.paths:
        out.append(f"unlabeled pool {cfg.dataset.unlabeled}: no images")
    train = splits.get("train")
    labeled = set() if train is None else {os.path.realpath(r.path) for r in map(train.record, train.ids) if r.path}
    left = sum(listing.real_path(p) not in labeled for p in listing.paths)
    if budget is not None and budget > left:
        out.append(f"--budget {budget} but only {left} pool images are unlabeled (a first `select --budget {left}` "
                   f"or less fits)")
    if not out:
        checked.append(f"unlabeled {len(listing.paths)} images" + (f", budget {budget}" if budget else ""))
    return out


def _weight_problems(cfg: Any, probe: Callable[[str], str | None], checked: list[str]) -> list[str]:
    """Detectors with ``model.pretrained``: where the ImageNet backbone would come from."""
    if cfg.task != "detection" or not cfg.model.pretrained:
        return []
    from activedet.models.detection import (FALLBACK_BACKBONE, hub_cache_path, imagenet_weights_url,
                                            packaged_weights_path)

    backbone = cfg.model.backbone
    if hub_cache_path(backbone).is_file():
        checked.append(f"{backbone} weights (hub cache)")
        return []
    if packaged_weights_path(backbone) is not None:
        checked.append(f"{backbone} weights (packaged)")
        return []
    url = imagenet_weights_url(backbone)
    why = probe(url)
    if why is None:
        checked.append(f"{backbone} weights (downloadable)")
        return []
    fallback = (f"a run would build backbone '{FALLBACK_BACKBONE}' (model.offline_fallback)"
                if cfg.model.offline_fallback and packaged_weights_path(FALLBACK_BACKBONE) is not None
                else f"a run would stop: put the file there, or set model.backbone: {FALLBACK_BACKBONE} "
                     f"or model.offline_fallback: true")
    return [f"no ImageNet weights for backbone '{backbone}': not in {hub_cache_path(backbone)}, no packaged "
            f"copy, and {url} is unreachable ({why}); {fallback}"]


def _device_problems(cfg: Any, checked: list[str]) -> list[str]:
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        return ["device 'cuda' is asked for but no CUDA device is available (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'})"]
    checked.append("device " + ("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu"))
    return []


__all__ = ["diagnose", "probe_url"]
