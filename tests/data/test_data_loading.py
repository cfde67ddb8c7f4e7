"""COCO export/load round trips and load_dataset dispatch."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from pycocotools.coco import COCO

from activedet.data import load_coco, load_dataset, load_voc
from activedet.data.builtin import load_shapes
from activedet.errors import DatasetError


def _assert_same(a, b) -> None:
    assert a.ids == b.ids and a.class_names == b.class_names
    for i in a.ids:
        ra, rb = a.record(i), b.record(i)
        np.testing.assert_array_equal(ra.boxes, rb.boxes)
        np.testing.assert_array_equal(ra.labels, rb.labels)
        np.testing.assert_array_equal(ra.difficult, rb.difficult)
        np.testing.assert_array_equal(ra.crowd_boxes, rb.crowd_boxes)
        assert (ra.width, ra.height) == (rb.width, rb.height)


# ------------------------------------------------------------------ export round trip
def test_export_in_memory_roundtrip(tmp_path):
    ds = load_shapes("train", {"n_train": 8, "seed": 2})
    path = ds.export_coco(tmp_path / "out")
    data = json.loads(path.read_text())
    assert "images_root" not in data
    assert data["images"][0]["file_name"] == "images/000001.png"
    assert (tmp_path / "out" / "images" / "000001.png").is_file()
    back = load_coco(path)
    _assert_same(ds, back)
    np.testing.assert_array_equal(back.load_array(3), ds.load_array(3))
    assert len(COCO(str(path)).getAnnIds()) == sum(ds.num_boxes(i) for i in ds.ids)


def test_export_on_disk_roundtrip_keeps_crowd_and_is_idempotent(make_coco, coco_data, tmp_path):
    data = coco_data()
    data["annotations"][1]["iscrowd"] = 1
    ds = load_coco(make_coco(data))
    first = load_coco(ds.export_coco(tmp_path / "one"))
    _assert_same(ds, first)
    again = first.export_coco(tmp_path / "two")
    assert json.loads(again.read_text())["images"][0]["file_name"] == "images/a.png"
    _assert_same(ds, load_coco(again))


def test_export_voc_roundtrip_keeps_difficult_and_suffix(make_voc, tmp_path):
    ds = load_voc(make_voc(), split="train")
    path = ds.export_coco(tmp_path / "coco", ids=[1])
    back = load_coco(path)
    assert back.ids == [1] and back.record(1).file_name == "images/img1.jpg"
    assert back.record(1).difficult.tolist() == [False, True]
    np.testing.assert_array_equal(back.record(1).boxes, ds.record(1).boxes)
    np.testing.assert_array_equal(back.load_array(1), ds.load_array(1))


# --------------------------------------------------------------------------- dispatch
def test_dispatch_builtin():
    ds = load_dataset("builtin:shapes", "test", options={"n_test": 4})
    assert ds.name == "shapes-test" and len(ds) == 4
    assert load_dataset("builtin:shapes:val", "train", options={"n_val": 3}).name == "shapes-val"
    assert load_dataset("builtin:shapes", "reference", options={"n_val": 3}).name == "shapes-val"
    with pytest.raises(DatasetError, match="'nope'"):
        load_dataset("builtin:nope")


def test_dispatch_coco(make_coco, tmp_path, write_image, coco_data):
    path = make_coco()
    assert load_dataset(str(path)).ids == [1, 2, 3]
    # generator options belong to a built-in train split; a file test split ignores them
    assert load_dataset(str(path), "test", options={"n_train": 3}).ids == [1, 2, 3]
    data = coco_data()
    for im in data["images"]:
        im["file_name"] = im["file_name"].split("/")[-1]
    (tmp_path / "flat.json").write_text(json.dumps(data))
    assert len(load_dataset(str(tmp_path / "flat.json"), images_root=str(tmp_path / "images"))) == 3


def test_dispatch_voc(make_voc):
    root = make_voc()
    assert load_dataset(str(root), "train").ids == [1, 3]
    assert load_dataset(str(root), "test").ids == [1, 2, 3]  # no test.txt: everything
    assert load_dataset(f"voc:{root}:val").ids == [2]
    assert load_dataset(f"voc:{root}", "val").ids == [2]
    assert load_dataset(f"VOC:{root}:train").ids == [1, 3]


def test_dispatch_paired_folder(tmp_path, write_image, voc_xml):
    write_image(tmp_path / "p" / "x.png")
    (tmp_path / "p" / "x.xml").write_text(voc_xml([("tree", (1, 1, 4, 4), 0)]))
    ds = load_dataset(str(tmp_path / "p"))
    assert ds.class_names == ["tree"] and ds.num_boxes(1) == 1


def test_dispatch_image_folder(tmp_path, write_image, monkeypatch):
    write_image(tmp_path / "imgs" / "cat" / "1.png")
    fake = types.ModuleType("activedet.data.classification")
    fake.load_image_folder = lambda path: ("folder", path)
    monkeypatch.setitem(sys.modules, "activedet.data.classification", fake)
    assert load_dataset(str(tmp_path / "imgs")) == ("folder", tmp_path / "imgs")


def test_dispatch_errors(tmp_path):
    with pytest.raises(DatasetError, match="nothing_here"):
        load_dataset(str(tmp_path / "nothing_here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match="notes.txt"):
        load_dataset(str(tmp_path / "notes.txt"))
    with pytest.raises(DatasetError):
        load_dataset("")
