"""Built-in datasets: shapes (seeded generator), trees (deepforest tiles), the registry."""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest

from activedet.data import builtin
from activedet.data.builtin import (BUILTINS, SHAPE_COLORS, export_builtin, load_builtin,
                                    load_shapes, load_trees)
from activedet.data.coco import load_coco
from activedet.errors import ConfigError, DatasetError

SMALL = {"n_train": 40, "n_val": 10, "n_test": 20}


# ------------------------------------------------------------------------- shapes
def _same(a, b) -> bool:
    return a.ids == b.ids and all(
        np.array_equal(a.load_array(i), b.load_array(i))
        and np.array_equal(a.record(i).boxes, b.record(i).boxes)
        and np.array_equal(a.record(i).labels, b.record(i).labels) for i in a.ids)


def test_shapes_same_seed_same_data():
    assert _same(load_shapes("train", {**SMALL, "seed": 5}), load_shapes("train", {**SMALL, "seed": 5}))


def test_shapes_different_seed_or_split_differs():
    a = load_shapes("train", {**SMALL, "seed": 5})
    b = load_shapes("train", {**SMALL, "seed": 6})
    c = load_shapes("test", {**SMALL, "seed": 5, "n_test": 40})
    assert not np.array_equal(a.load_array(1), b.load_array(1))
    assert not np.array_equal(a.load_array(1), c.load_array(1))


def test_shapes_defaults_and_invariants():
    ds = load_shapes("train")
    assert len(ds) == 400 and ds.class_names == ["circle", "square", "triangle"]
    assert ds.ids == list(range(1, 401))
    counts = [ds.num_boxes(i) for i in ds.ids]
    assert counts.count(0) >= 40 and max(counts) <= 4  # 10% empty (plus rare placement misses)
    for i in ds.ids:
        r = ds.record(i)
        assert r.array.shape == (96, 96, 3) and r.array.dtype == np.uint8
        assert r.labels.min(initial=1) >= 1 and r.labels.max(initial=1) <= 3
        if len(r.boxes):
            w, h = r.boxes[:, 2] - r.boxes[:, 0], r.boxes[:, 3] - r.boxes[:, 1]
            assert r.boxes.min() >= 0 and r.boxes.max() <= 96
            assert w.min() >= 12 and w.max() <= 40 and h.max() <= 40


def test_shapes_box_centres_have_the_class_colour():
    """Label correctness: the centre pixel of circle/square/triangle boxes is its colour."""
    ds = load_shapes("test", {**SMALL, "seed": 1})
    checked = 0
    for i in ds.ids:
        r = ds.record(i)
        for box, label in zip(r.boxes, r.labels):
            cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            pixel = r.array[cy, cx].astype(np.float32)
            nearest = int(np.argmin(((SHAPE_COLORS[:3] - pixel) ** 2).sum(1))) + 1
            assert nearest == label
            checked += 1
    assert checked > 20


def test_shapes_options():
    ds = load_shapes("val", {"n_val": 12, "num_classes": 6, "image_size": 64, "min_size": 8,
                             "max_size": 20, "max_objects": 6, "empty_fraction": 0.0})
    assert len(ds) == 12 and ds.num_classes == 6 and ds.record(1).array.shape == (64, 64, 3)
    assert all(ds.num_boxes(i) >= 1 for i in ds.ids)


@pytest.mark.parametrize("options, pattern", [
    ({"colour": 3}, "unknown option 'colour'"),
    ({"num_classes": 9}, "num_classes=9"),
    ({"min_size": 50, "max_size": 40}, "min_size"),
    ({"n_train": "many"}, "'n_train'"),
    ({"empty_fraction": 1.5}, "empty_fraction=1.5"),
])
def test_shapes_bad_options(options, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_shapes("train", options)


def test_shapes_unknown_split():
    with pytest.raises(DatasetError, match="'dev'"):
        load_builtin("shapes", "dev")


# -------------------------------------------------------------------------- trees
@pytest.fixture(scope="module")
def trees():
    return load_trees("train"), load_trees("test")


_TILE = re.compile(r"^(?P<stem>.+)_r(?P<row>\d+)_c(?P<col>\d+)\.png$")


def test_trees_tiles_and_boxes(trees):
    train, test = trees
    assert len(train) >= 36 and len(test) >= 12
    assert train.class_names == ["tree"]
    assert sum(train.num_boxes(i) for i in train.ids) > 300
    for ds in trees:
        for i in ds.ids:
            r = ds.record(i)
            assert r.array.shape == (128, 128, 3) and (r.width, r.height) == (128, 128)
            if len(r.boxes):
                assert r.boxes.min() >= 0 and r.boxes.max() <= 128
                assert np.all(r.boxes[:, 2:] - r.boxes[:, :2] >= 2)
                assert set(r.labels.tolist()) == {1}


def test_trees_train_and_test_regions_are_disjoint(trees):
    cols: dict[str, dict[str, set[int]]] = {}
    for split, ds in zip(("train", "test"), trees):
        for i in ds.ids:
            m = _TILE.match(ds.record(i).file_name)
            cols.setdefault(m["stem"], {"train": set(), "test": set()})[split].add(int(m["col"]))
    assert len(cols) == 4
    for stem, c in cols.items():
        assert c["train"] and c["test"], stem
        assert max(c["train"]) < min(c["test"]), stem  # test = right-most columns


def test_trees_tile_size_option():
    ds = load_trees("test", {"tile_size": 200, "test_fraction": 0.5})
    assert all(ds.record(i).array.shape == (200, 200, 3) for i in ds.ids)
    with pytest.raises(ConfigError, match="'overlap'"):
        load_trees("train", {"overlap": 2})


def test_clip_to_tile_rule():
    boxes = np.array([[10, 10, 30, 30],    # inside tile 0
                      [120, 10, 140, 30],  # 8 of 20 px inside: dropped (< 50%)
                      [116, 40, 136, 60],  # 12 of 20 px inside: kept, clipped
                      [127, 0, 160, 10]], np.float32)  # 1 px wide after clipping: dropped
    out = builtin._clip_to_tile(boxes, 0, 0, 128)
    np.testing.assert_allclose(out, [[10, 10, 30, 30], [116, 40, 128, 60]])
    shifted = builtin._clip_to_tile(boxes, 128, 0, 128)
    np.testing.assert_allclose(shifted, [[0, 10, 12, 30], [0, 0, 32, 10]])


def test_trees_without_deepforest(monkeypatch):
    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError, match="pip install --no-deps deepforest"):
        load_trees("train")


# ----------------------------------------------------------------------- registry
def test_registry_entries():
    assert {"shapes", "trees", "digits", "fashion_mnist"} <= set(BUILTINS)
    assert BUILTINS["shapes"].task == "detection" and BUILTINS["digits"].task == "classification"
    for name, info in BUILTINS.items():
        assert info.name == name and info.description


def test_unknown_builtin():
    with pytest.raises(DatasetError, match="'nope'"):
        load_builtin("nope")


def test_classification_builtins_import_lazily(monkeypatch):
    calls = []
    fake = types.ModuleType("activedet.data.classification")
    fake.load_digits = lambda split, options: calls.append(("digits", split, options)) or "D"
    fake.load_fashion_mnist = lambda split, options: calls.append(("fm", split, options)) or "F"
    monkeypatch.setitem(sys.modules, "activedet.data.classification", fake)
    assert load_builtin("digits", "test", {"n": 3}) == "D"
    assert load_builtin("fashion_mnist") == "F"
    assert calls == [("digits", "test", {"n": 3}), ("fm", "train", {})]
    with pytest.raises(DatasetError, match="export of classification builtin digits is not supported"):
        export_builtin("digits", "/nonexistent")


def test_export_builtin_roundtrip(tmp_path):
    options = {"n_train": 6, "n_val": 2, "n_test": 3}
    written = export_builtin("shapes", tmp_path, options)
    assert set(written) == {"train", "val", "test"}
    assert written["test"] == tmp_path / "test" / "annotations.json"
    back = load_coco(written["train"])
    orig = load_shapes("train", options)
    assert back.ids == orig.ids and back.class_names == orig.class_names
    for i in orig.ids:
        np.testing.assert_array_equal(back.record(i).boxes, orig.record(i).boxes)
        np.testing.assert_array_equal(back.record(i).labels, orig.record(i).labels)
        np.testing.assert_array_equal(back.load_array(i), orig.load_array(i))
