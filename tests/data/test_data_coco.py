"""load_coco: label mapping, sizes, image modes, clipping, crowd, and every validation error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from activedet.data.coco import load_coco
from activedet.errors import DatasetError


def test_loads_labels_sizes_and_paths(make_coco):
    ds = load_coco(make_coco())
    assert ds.ids == [1, 2, 3]
    assert ds.class_names == ["cat", "dog"]  # sorted category ids 3, 7 -> labels 1, 2
    r1 = ds.record(1)
    np.testing.assert_array_equal(r1.labels, [2, 1])
    np.testing.assert_allclose(r1.boxes, [[2, 3, 12, 8], [20, 10, 28, 18]])
    assert (ds.record(2).width, ds.record(2).height) == (40, 30)  # from the PNG header
    assert r1.path == make_coco().parent / "images" / "a.png"
    t = ds.target(1)
    assert t["boxes"].shape == (2, 4) and t["labels"].tolist() == [2, 1]


def test_empty_image_is_valid(make_coco):
    ds = load_coco(make_coco())
    assert ds.num_boxes(3) == 0
    assert ds.target(3)["boxes"].shape == (0, 4)


def test_missing_annotations_key_means_unlabeled(make_coco, coco_data):
    data = coco_data()
    del data["annotations"]
    ds = load_coco(make_coco(data))
    assert [ds.num_boxes(i) for i in ds.ids] == [0, 0, 0]


def test_images_root_overrides_json_dir(make_coco, coco_data, tmp_path, write_image):
    data = coco_data()
    for im in data["images"]:
        im["file_name"] = im["file_name"].split("/")[-1]
    json_path = make_coco(data)
    other = tmp_path / "elsewhere"
    for name in ("a", "b", "c"):
        write_image(other / f"{name}.png")
    ds = load_coco(json_path, images_root=other)
    assert ds.record(1).path == other / "a.png"
    assert ds.load_array(1).shape == (30, 40, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_non_rgb_images_load_as_rgb(make_coco, mode):
    ds = load_coco(make_coco(modes={"a": mode}))
    arr = ds.load_array(1)
    assert arr.shape == (30, 40, 3) and arr.dtype == np.uint8
    assert ds.load_image(1).shape == (3, 30, 40)


def test_small_overflow_is_clipped(make_coco, coco_data):
    data = coco_data()
    data["annotations"][0]["bbox"] = [-1.5, -2, 43.5, 4]  # x2 = 42, 2 px over a 40 px width
    data["annotations"][1]["bbox"] = [30, 25, 11, 7]  # x2 = 41, y2 = 32
    ds = load_coco(make_coco(data))
    np.testing.assert_allclose(ds.record(1).boxes, [[0, 0, 40, 2], [30, 25, 40, 30]])


def test_crowd_annotations_are_not_training_targets(make_coco, coco_data):
    data = coco_data()
    data["annotations"][1]["iscrowd"] = 1
    ds = load_coco(make_coco(data))
    assert ds.num_boxes(1) == 1 and ds.target(1)["labels"].tolist() == [2]
    np.testing.assert_allclose(ds.record(1).crowd_boxes, [[20, 10, 28, 18]])
    crowd = [a for a in ds.to_coco()["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["category_id"] == 1


# (mutation, text expected in the message besides the file name)
BAD_CASES = {
    "nonpositive_width": (lambda d: d["annotations"][0].update(bbox=[2, 3, 0, 5]), "annotation id 10"),
    "negative_height": (lambda d: d["annotations"][1].update(bbox=[2, 3, 4, -1]), "annotation id 11"),
    "outside_right": (lambda d: d["annotations"][1].update(bbox=[30, 5, 13, 5]), "annotation id 11"),
    "outside_left": (lambda d: d["annotations"][0].update(bbox=[-3, 5, 10, 5]), "annotation id 10"),
    "fully_outside": (lambda d: d["annotations"][0].update(bbox=[50, 5, 4, 4]), "annotation id 10"),
    "unknown_category": (lambda d: d["annotations"][2].update(category_id=99), "category_id 99"),
    "unknown_image": (lambda d: d["annotations"][2].update(image_id=42), "image_id 42"),
    "duplicate_image": (lambda d: d["images"][2].update(id=2), "image id 2"),
    "duplicate_annotation": (lambda d: d["annotations"][2].update(id=10), "annotation id 10"),
    "duplicate_category": (lambda d: d["categories"][1].update(id=7), "category id 7"),
    "missing_image_file": (lambda d: d["images"][1].update(file_name="images/nope.png"), "image id 2"),
    "wrong_size": (lambda d: d["images"][0].update(width=41), "image id 1"),
    "missing_images_key": (lambda d: d.pop("images"), "'images'"),
    "missing_categories_key": (lambda d: d.pop("categories"), "'categories'"),
    "missing_bbox": (lambda d: d["annotations"][0].pop("bbox"), "annotation id 10"),
    "missing_ann_image_id": (lambda d: d["annotations"][1].pop("image_id"), "annotation id 11"),
    "string_image_id": (lambda d: d["images"][0].update(id="one"), "'id'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_validation_errors_name_file_and_id(make_coco, coco_data, case):
    mutation, expected = BAD_CASES[case]
    data = coco_data()
    mutation(data)
    path = make_coco(data)
    with pytest.raises(DatasetError) as info:
        load_coco(path)
    msg = str(info.value)
    assert "train.json" in msg and expected in msg, msg
    assert "\n" not in msg


def test_malformed_json(make_coco):
    path = make_coco(raw='{"images": [}')
    with pytest.raises(DatasetError, match=r"train\.json: malformed JSON"):
        load_coco(path)


def test_json_not_an_object(make_coco):
    with pytest.raises(DatasetError, match="train.json"):
        load_coco(make_coco(raw="[1, 2]"))


def test_unreadable_image_names_file_and_id(make_coco):
    path = make_coco()
    (path.parent / "images" / "b.png").write_bytes(b"this is not a png")
    with pytest.raises(DatasetError) as info:
        load_coco(path)
    assert "train.json" in str(info.value) and "image id 2" in str(info.value)
    assert "b.png" in str(info.value)


def test_missing_json_file(tmp_path):
    with pytest.raises(DatasetError, match="nothere.json"):
        load_coco(tmp_path / "nothere.json")


def test_header_only_is_read_at_load(make_coco):
    """A truncated image passes the header check at load and fails on decode, naming it."""
    path = make_coco()
    png = path.parent / "images" / "a.png"
    png.write_bytes(png.read_bytes()[:200])
    ds = load_coco(path)
    with pytest.raises(DatasetError, match="image id 1"):
        ds.load_array(1)


def test_json_roundtrip_of_written_file(make_coco):
    ds = load_coco(make_coco())
    coco = json.loads(json.dumps(ds.to_coco()))
    assert {c["id"] for c in coco["categories"]} == {1, 2}


def test_one_file_under_two_image_ids_is_named(make_coco, coco_data, tmp_path):
    """The same file twice (by the same name, or by a link to it) would be trained on twice."""
    data = coco_data()
    data["images"].append({"id": 9, "file_name": "images/a.png", "width": 40, "height": 30})
    with pytest.raises(DatasetError, match=r"image ids 1 \(images/a.png\) and 9 \(images/a.png\) are the same file"):
        load_coco(make_coco(data))
    data = coco_data()
    data["images"].append({"id": 9, "file_name": "images/link.png", "width": 40, "height": 30})
    path = make_coco(data)
    (tmp_path / "images" / "link.png").symlink_to(tmp_path / "images" / "c.png")
    with pytest.raises(DatasetError, match=r"image ids 3 \(images/c.png\) and 9 \(images/link.png\) are the same file"):
        load_coco(path)
    assert len(load_coco(make_coco()).ids) == 3  # distinct files load as before
