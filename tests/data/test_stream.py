"""Streaming images for inference: bounded, ordered, and the same scores whatever the workers."""

from __future__ import annotations

import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from activedet.data.base import DetectionDataset
from activedet.data.pool import Pool
from activedet.data.stream import PREFETCH, image_batches
from activedet.errors import ConfigError, DatasetError
from activedet.models.classifier import ClassificationAdapter
from activedet.models.detection_adapter import DetectionAdapter, detection_adapter
from activedet.strategies.registry import build_strategy
from tests.conftest import make_detection_dataset, tiny_config


class CountingDataset(DetectionDataset):
    """Counts decoded images alive at once in this process (a weakref per tensor)."""

    def __init__(self, base: DetectionDataset) -> None:
        super().__init__([base.record(i) for i in base.ids], base.class_names, base.name)
        self.alive = 0
        self.most_alive = 0
        self.loads = 0

    def _gone(self) -> None:
        self.alive -= 1

    def load_image(self, image_id: int) -> torch.Tensor:
        img = super().load_image(image_id)
        self.loads += 1
        self.alive += 1
        self.most_alive = max(self.most_alive, self.alive)
        weakref.finalize(img, self._gone)
        return img


class MarkingDataset(DetectionDataset):
    """Leaves a file per decoded image in ``marks`` (visible across loader processes)."""

    def __init__(self, base: DetectionDataset, marks: Path, bad: int | None = None) -> None:
        super().__init__([base.record(i) for i in base.ids], base.class_names, base.name)
        self.marks, self.bad = marks, bad

    def load_image(self, image_id: int) -> torch.Tensor:
        if image_id == self.bad:
            raise DatasetError(f"cannot read image broken.png (image id {image_id}): truncated")
        (self.marks / str(image_id)).touch()
        return super().load_image(image_id)


def _adapter(arch: str = "fcos") -> DetectionAdapter:
    cfg = tiny_config(**{"model.arch": arch})
    ad = detection_adapter(cfg.model, 2, device="cpu")
    ad.reset(0)
    return ad


def test_scoring_decodes_one_batch_at_a_time() -> None:
    ds = CountingDataset(make_detection_dataset(n=40, size=32))
    pool = Pool.from_dataset(ds)
    strategy = build_strategy("entropy", {"min_score": 0.0, "batch_size": 4})
    strategy.progress = False
    picked = strategy.select(_adapter(), pool, 5, np.random.default_rng(0))
    assert len(picked.ids) == 5 and len(picked.scores or {}) == 40
    assert ds.loads == 40  # every image decoded once
    # the batch in the model and, while the next one is decoded, the previous: never the pool
    assert 4 <= ds.most_alive <= 8, ds.most_alive


def test_workers_run_ahead_by_at_most_their_prefetch(tmp_path: Path) -> None:
    ds = MarkingDataset(make_detection_dataset(n=48, size=16), tmp_path)
    bs, workers = 4, 2
    seen = 0
    for k, (chunk, images) in enumerate(image_batches(ds, ds.ids, bs, workers)):
        assert chunk == ds.ids[k * bs:(k + 1) * bs]
        seen += len(chunk)
        time.sleep(0.05)  # a slow consumer: the workers would run ahead if nothing bounded them
        decoded = len(list(tmp_path.iterdir()))
        assert decoded <= (k + 1 + workers * PREFETCH) * bs, (k, decoded)
    assert seen == 48 and len(list(tmp_path.iterdir())) == 48


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_keep_order_and_pixels(workers: int) -> None:
    ds = make_detection_dataset(n=11, size=16)
    got = list(image_batches(ds, ds.ids[::-1], 3, workers))
    assert [len(c) for c, _ in got] == [3, 3, 3, 2]
    flat_ids = [i for c, _ in got for i in c]
    assert flat_ids == ds.ids[::-1]
    for (chunk, images) in got:
        for i, img in zip(chunk, images):
            assert torch.equal(img, ds.load_image(i))
    arrays = list(image_batches(ds, ds.ids, 5, workers, pixels="array"))
    assert [i for c, _ in arrays for i in c] == ds.ids and all(len(c) == len(aa) for c, aa in arrays)
    assert all(np.array_equal(a, ds.load_array(i)) for c, aa in arrays for i, a in zip(c, aa))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_decoding_error_reaches_the_caller_as_is(tmp_path: Path, workers: int) -> None:
    ds = MarkingDataset(make_detection_dataset(n=12, size=16), tmp_path, bad=7)
    with pytest.raises(DatasetError) as err:
        list(image_batches(ds, ds.ids, 2, workers))
    assert str(err.value) == "cannot read image broken.png (image id 7): truncated"


def test_bad_arguments_name_the_value() -> None:
    ds = make_detection_dataset(n=2, size=16)
    with pytest.raises(ConfigError, match="-1"):
        list(image_batches(ds, ds.ids, 2, workers=-1))
    with pytest.raises(ConfigError, match="0"):
        list(image_batches(ds, ds.ids, 0))


@pytest.mark.parametrize("arch", ["fcos", "retinanet"])
def test_streamed_scores_equal_the_one_batch_at_a_time_reference(arch: str) -> None:
    """The pass before streaming (``load_image`` per id, batch by batch, in this process) and
    the streamed pass with and without loader processes give bit-identical scores."""
    ds = make_detection_dataset(n=10, size=32)
    ad = _adapter(arch)
    with torch.no_grad():  # the old loop, spelled out
        ad.model.eval()
        ref = {}
        for s in range(0, 10, 4):
            chunk = ds.ids[s:s + 4]
            for i, inf in zip(chunk, ad.infer_images([ds.load_image(i) for i in chunk], False)):
                ref[i] = inf
    pool = Pool.from_dataset(ds)
    per_workers = {}
    for workers in (0, 2):
        ad.workers = workers
        streamed = {inf.image_id: inf for inf in ad.infer(ds, ds.ids, 4, keep_anchors=False)}
        for i in ds.ids:
            assert torch.equal(streamed[i].scores, ref[i].scores)
            assert torch.equal(streamed[i].probs, ref[i].probs)
        strategy = build_strategy("entropy", {"min_score": 0.0, "batch_size": 4})
        strategy.progress = False
        picked = strategy.select(ad, pool, 3, np.random.default_rng(1))
        per_workers[workers] = (picked.ids, picked.scores, ad.features(ds, ds.ids, 4))
    assert per_workers[0][0] == per_workers[2][0] and per_workers[0][1] == per_workers[2][1]
    assert np.array_equal(per_workers[0][2], per_workers[2][2])


def test_classifier_streams_with_workers() -> None:
    from activedet.data.base import ClassificationDataset, ImageRecord

    rng = np.random.default_rng(0)
    recs = [ImageRecord(i, f"{i}.png", 16, 16, array=rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
                        label=i % 2) for i in range(1, 10)]
    ds = ClassificationDataset(recs, ["a", "b"])
    cfg = tiny_config(**{"task": "classification", "model.arch": "small_cnn", "model.image_size": 16})
    ad = ClassificationAdapter(cfg.model, 2)
    out = {}
    for workers in (0, 2):
        ad.workers = workers
        out[workers] = (ad.features(ds, ds.ids, 4), [inf.probs for inf in ad.infer(ds, ds.ids, 4)])
    assert np.array_equal(out[0][0], out[2][0])
    assert len(out[0][1]) == len(out[2][1]) == len(ds.ids)
    assert all(torch.equal(a, b) for a, b in zip(out[0][1], out[2][1]))


def test_dataset_workers_reaches_the_adapter_and_is_checked() -> None:
    from activedet.config import config_from_dict
    from activedet.models.factory import build_adapter

    cfg = tiny_config(**{"dataset.workers": 3})
    assert build_adapter(cfg, 2).workers == 3
    assert build_adapter(tiny_config(), 2).workers == 0
    with pytest.raises(ConfigError, match=r"dataset.workers.*-2"):
        config_from_dict({"dataset": {"workers": -2}})
