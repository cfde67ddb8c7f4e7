"""Tiny seeded factories shared by the test suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activedet.config import ExperimentConfig, config_from_dict
from activedet.data.base import DetectionDataset, ImageRecord

# One intra-op thread: these tensors are small, and a second thread that spins at every
# barrier makes tests ~10x slower whenever anything else shares the 2 cores.
torch.set_num_threads(1)


def make_detection_dataset(n: int = 12, size: int = 64, num_classes: int = 2, seed: int = 0,
                           empty_every: int = 4, start_id: int = 1) -> DetectionDataset:
    """Coloured squares on noise; every ``empty_every``-th image has no object."""
    rng = np.random.default_rng(seed)
    records = []
    colours = [(230, 40, 40), (40, 40, 230), (40, 200, 40), (220, 220, 40)]
    for k in range(n):
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        boxes, labels = [], []
        if empty_every == 0 or k % empty_every != empty_every - 1:
            for _ in range(int(rng.integers(1, 3))):
                s = int(rng.integers(size // 6, size // 3))
                x, y = (int(v) for v in rng.integers(0, size - s, 2))
                c = int(rng.integers(0, num_classes))
                img[y:y + s, x:x + s] = colours[c % len(colours)]
                boxes.append([x, y, x + s, y + s])
                labels.append(c + 1)
        records.append(ImageRecord(
            id=start_id + k, file_name=f"{start_id + k:05d}.png", width=size, height=size,
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4), labels=np.asarray(labels, np.int64),
            array=img))
    return DetectionDataset(records, [f"c{i}" for i in range(num_classes)], name="tiny")


def make_mixed_size_dataset() -> DetectionDataset:
    """Six noise images of four sizes (ids 1..6; 1 and 4, 2 and 6 share a size), a box each."""
    rng = np.random.default_rng(0)
    recs = []
    for k, (h, w) in enumerate([(64, 64), (64, 160), (96, 64), (64, 64), (64, 128), (64, 160)]):
        recs.append(ImageRecord(id=k + 1, file_name=f"{k}.png", width=w, height=h,
                                boxes=np.array([[5, 5, 30, 30]], np.float32), labels=np.array([1]),
                                array=rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))
    return DetectionDataset(recs, ["a", "b"], name="mixed")


def tiny_config(**overrides) -> ExperimentConfig:
    """A detector small enough to train a step in well under a second on CPU."""
    data = {
        "seed": 0,
        "device": "cpu",
        "model": {"arch": "retinanet", "backbone": "mobilenet_v2", "pretrained": False,
                  "image_size": 64, "score_thresh": 0.001},
        "train": {"epochs": 1, "batch_size": 4, "lr": 0.001},
        "loop": {"initial": 4, "per_cycle": 3, "cycles": 2},
    }
    for key, value in overrides.items():
        section, _, leaf = key.partition(".")
        if leaf:
            data.setdefault(section, {})[leaf] = value
        else:
            data[section] = value
    return config_from_dict(data)


@pytest.fixture
def tiny_dataset() -> DetectionDataset:
    return make_detection_dataset()


@pytest.fixture(autouse=True, scope="session")
def _private_image_cache(tmp_path_factory):
    """The image-verification cache (activedet.data.verify) of the test session in a tmp
    dir, not the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ACTIVEDET_CACHE_DIR", str(tmp_path_factory.mktemp("activedet-cache")))
    yield
    mp.undo()
