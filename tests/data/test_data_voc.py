"""load_voc: 1-based conversion, difficult flag, splits, class defaults, paired layout, errors."""

from __future__ import annotations

import numpy as np
import pytest

from activedet.data.builtin import deepforest_data_dir
from activedet.data.voc import VOC_CLASSES, load_voc
from activedet.errors import DatasetError


def test_one_based_coordinates_become_zero_based(make_voc):
    ds = load_voc(make_voc(), split="train")
    r = ds.record(1)
    assert r.file_name == "img1"
    # VOC xmin=1..xmax=10 (inclusive, 1-based) covers 0-based pixels 0..9 -> [0, 10)
    np.testing.assert_allclose(r.boxes, [[0, 0, 10, 20], [4, 4, 40, 30]])
    np.testing.assert_allclose(ds.record(3).boxes, [[1, 2, 4, 5]])


def test_difficult_flag_is_kept(make_voc):
    ds = load_voc(make_voc(), split="train")
    r = ds.record(1)
    assert r.difficult.tolist() == [False, True]
    assert ds.num_boxes(1) == 2
    assert ds.class_names == list(VOC_CLASSES)
    assert [ds.class_names[k - 1] for k in r.labels] == ["dog", "person"]


def test_split_file_and_stable_ids(make_voc):
    root = make_voc()
    train = load_voc(root, split="train")
    val = load_voc(root, split="val")
    every = load_voc(root, split="no_such_split")  # missing split file -> all annotations
    assert train.ids == [1, 3] and val.ids == [2] and every.ids == [1, 2, 3]
    assert val.num_boxes(2) == 0  # empty image is valid
    assert val.load_array(2).shape == (30, 40, 3)  # grayscale PNG -> RGB


def test_non_voc_names_give_sorted_classes(make_voc, voc_xml):
    root = make_voc(xmls={"a": voc_xml([("tree", (1, 1, 5, 5), 0)]),
                          "b": voc_xml([("bush", (1, 1, 5, 5), 0)])},
                    images={"a": "a.jpg", "b": "b.jpg"}, splits={})
    ds = load_voc(root)
    assert ds.class_names == ["bush", "tree"]
    assert ds.record(1).labels.tolist() == [2]


def test_explicit_class_names(make_voc):
    ds = load_voc(make_voc(), split="train", class_names=["cat", "dog", "person"])
    assert ds.record(1).labels.tolist() == [2, 3] and ds.record(3).labels.tolist() == [1]


def test_size_missing_in_xml_is_read_from_header(make_voc, voc_xml):
    root = make_voc(xmls={"a": voc_xml([("dog", (1, 1, 40, 30), 0)], width=None)},
                    images={"a": "a.jpg"}, splits={})
    r = load_voc(root).record(1)
    assert (r.width, r.height) == (40, 30)


def test_paired_folder_layout(tmp_path, write_image, voc_xml):
    folder = tmp_path / "paired"
    write_image(folder / "b.png")
    write_image(folder / "a.jpg")
    write_image(folder / "unlabeled.png")  # no xml: not part of the dataset
    (folder / "a.xml").write_text(voc_xml([("tree", (3, 3, 12, 12), 0)], filename="a.tif"))
    (folder / "b.xml").write_text(voc_xml([]))
    ds = load_voc(folder)
    assert ds.ids == [1, 2] and ds.record(1).path == folder / "a.jpg"
    np.testing.assert_allclose(ds.record(1).boxes, [[2, 2, 12, 12]])


def test_deepforest_folder_loads_as_paired():
    ds = load_voc(deepforest_data_dir(), layout="paired")
    assert len(ds) == 4 and sum(ds.num_boxes(i) for i in ds.ids) == 574 + 279 + 61 + 37
    assert ds.record(3).file_name == "OSBS_029" and ds.record(3).path.suffix == ".png"


# case -> (function of the voc_xml builder giving {stem: xml text}, text expected in the message)
BAD_CASES = {
    "malformed": (lambda x: {"img1": "<annotation><object>"}, "malformed XML"),
    "inverted_box": (lambda x: {"img1": x([("dog", (1, 1, 5, 5), 0), ("cat", (10, 5, 8, 9), 0)])},
                     "object #1"),
    "outside": (lambda x: {"img1": x([("dog", (1, 1, 5, 5), 0), ("cat", (30, 5, 44, 9), 0)])},
                "outside"),
    "missing_coord": (lambda x: {"img1": "<annotation><object><name>dog</name><bndbox><xmin>1"
                                         "</xmin></bndbox></object></annotation>"}, "bndbox/ymin"),
    "bad_difficult": (lambda x: {"img1": x([("dog", (1, 1, 5, 5), 7)])}, "difficult"),
    "size_mismatch": (lambda x: {"img1": x([], width=50, height=30)}, "50x30"),
    "wrong_root": (lambda x: {"img1": "<notvoc/>"}, "<annotation>"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_validation_errors_name_file_and_id(make_voc, voc_xml, case):
    xmls, expected = BAD_CASES[case]
    root = make_voc(xmls=xmls(voc_xml), images={"img1": "img1.jpg"}, splits={})
    with pytest.raises(DatasetError) as info:
        load_voc(root)
    msg = str(info.value)
    assert "img1.xml" in msg and "image id 1" in msg and expected in msg, msg
    assert "\n" not in msg


def test_missing_image_names_file_and_id(make_voc):
    root = make_voc(images={"img1": "img1.jpg", "img3": "img3.jpg"})
    with pytest.raises(DatasetError) as info:
        load_voc(root, split="val")
    assert "img2.xml" in str(info.value) and "image id 2" in str(info.value)


def test_unknown_class_with_explicit_names(make_voc):
    with pytest.raises(DatasetError, match=r"img1\.xml: image id 1 object #1 \(person\)"):
        load_voc(make_voc(), split="train", class_names=["cat", "dog"])


def test_split_listing_unknown_image(make_voc):
    with pytest.raises(DatasetError, match=r"train\.txt: line 2: image 'ghost'"):
        load_voc(make_voc(splits={"train": ["img1", "ghost"]}), split="train")


def test_not_a_dataset_folder(tmp_path):
    with pytest.raises(DatasetError, match="neither a VOC folder"):
        load_voc(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        load_voc(tmp_path / "missing")
