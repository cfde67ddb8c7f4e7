"""Ingest parsers on hand-written exports: the rules and every bad input named in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from activedet.errors import DatasetError
from activedet.labeling.batch import BatchImage, BatchSpec, labelstudio_config, labelstudio_tasks, to_percent
from activedet.labeling.parse import ProjectView, parse_export

UID = "abc123"


def view(task: str = "detection") -> ProjectView:
    paths = {7: "/pool/a/x.png", 8: "/pool/b/y.png", 9: "/pool/z.png"}
    names = {7: "a/x.png", 8: "b/y.png", 9: "z.png"}
    classes = ["tree", "car"] if task == "detection" else ["cat", "dog"]
    return ProjectView(UID, task, classes, paths, names, lambda i: (200, 100))


def rect(x: float, y: float, w: float, h: float, label: str = "tree", **extra) -> dict:
    return {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 200,
            "original_height": 100, **extra,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}}


def ann(result: list, cancelled: bool = False, updated: str = "2026-01-01T00:00:00Z", aid: int = 1) -> dict:
    return {"id": aid, "result": result, "was_cancelled": cancelled, "created_at": updated, "updated_at": updated}


def task(image_id: int, annotations: list, tid: int = 1, project: str = UID) -> dict:
    return {"id": tid, "data": {"image": "/data/local-files/?d=whatever.png", "activedet_image_id": image_id,
                                "activedet_project": project}, "annotations": annotations}


def write(tmp_path: Path, data) -> Path:
    p = tmp_path / "export.json"
    p.write_text(json.dumps(data))
    return p


def test_labelstudio_percent_to_pixels_and_rules(tmp_path: Path) -> None:
    tasks = [
        task(7, [ann([rect(10, 20, 30, 40)])], tid=1),
        # several annotations: the latest non-cancelled counts (a later cancelled one does not)
        task(8, [ann([rect(0, 0, 50, 50, "car")], updated="2026-01-01T00:00:00Z", aid=2),
                 ann([rect(50, 50, 50, 50)], updated="2026-01-02T00:00:00Z", aid=3),
                 ann([], cancelled=True, updated="2026-01-03T00:00:00Z", aid=4)], tid=2),
        task(9, [ann([], cancelled=True)], tid=3),  # skipped: not counted
    ]
    parsed = parse_export(write(tmp_path, tasks), view())
    by_id = {it.image_id: it for it in parsed.items}
    assert sorted(by_id) == [7, 8]
    assert by_id[7].boxes == [[20.0, 20.0, 80.0, 60.0]] and by_id[7].labels == [1]  # 200x100 image
    assert by_id[8].boxes == [[100.0, 50.0, 200.0, 100.0]] and by_id[8].labels == [1]
    assert len(parsed.skipped) == 1 and "task 3" in parsed.skipped[0]


def test_labelstudio_empty_annotation_is_a_valid_empty_image(tmp_path: Path) -> None:
    parsed = parse_export(write(tmp_path, [task(7, [ann([])]), task(8, [])]), view())
    assert [(it.image_id, it.boxes) for it in parsed.items] == [(7, [])]
    assert len(parsed.unannotated) == 1


@pytest.mark.parametrize("result, message", [
    ([rect(10, 10, 20, 20, "bicycle")], "unknown label 'bicycle'"),
    ([rect(90, 10, 20, 20)], "percent coordinates out of range"),
    ([rect(-3, 10, 20, 20)], "percent coordinates out of range"),
    ([rect(10, 10, 0, 20)], "percent coordinates out of range"),
    ([{**rect(10, 10, 20, 20), "value": {**rect(10, 10, 20, 20)["value"], "rotation": 30}}], "rotated box"),
    ([rect(10, 10, 20, 20, original_width=640)], "original_width=640"),
    ([{**rect(10, 10, 20, 20), "type": "polygonlabels"}], "result type 'polygonlabels'"),
])
def test_labelstudio_bad_results_name_file_and_task(tmp_path: Path, result: list, message: str) -> None:
    path = write(tmp_path, [task(7, [ann(result)], tid=42)])
    with pytest.raises(DatasetError, match=message) as e:
        parse_export(path, view())
    assert str(path) in str(e.value) and "task 42" in str(e.value) and "a/x.png" in str(e.value)


def test_labelstudio_foreign_project_and_unknown_image(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="different activedet project"):
        parse_export(write(tmp_path, [task(7, [ann([])], project="other")]), view())
    with pytest.raises(DatasetError, match="image id 99 is not in any batch"):
        parse_export(write(tmp_path, [task(99, [ann([])])]), view())
    # without activedet data, tasks are matched by the image URL's file
    t = {"id": 5, "data": {"image": "/data/local-files/?d=pool/b/y.png"}, "annotations": [ann([rect(0, 0, 10, 10)])]}
    assert parse_export(write(tmp_path, [t]), view()).items[0].image_id == 8
    t["data"]["image"] = "http://host/images/nope.png"
    with pytest.raises(DatasetError, match="'/images/nope.png' is not in any batch"):
        parse_export(write(tmp_path, [t]), view())


def test_labelstudio_same_image_labeled_twice_differently(tmp_path: Path) -> None:
    tasks = [task(7, [ann([rect(0, 0, 10, 10)])], tid=1), task(7, [ann([rect(0, 0, 20, 10)])], tid=2)]
    with pytest.raises(DatasetError, match="labeled differently"):
        parse_export(write(tmp_path, tasks), view())


def test_labelstudio_classification_choices(tmp_path: Path) -> None:
    choice = {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["dog"]}}
    parsed = parse_export(write(tmp_path, [task(7, [ann([choice])])]), view("classification"))
    assert parsed.items[0].labels == [1]
    with pytest.raises(DatasetError, match="exactly one class"):
        parse_export(write(tmp_path, [task(7, [ann([])])]), view("classification"))


def coco(images: list, anns: list, cats=None) -> dict:
    return {"images": images, "annotations": anns,
            "categories": cats or [{"id": 0, "name": "car"}, {"id": 5, "name": "tree"}]}


def test_coco_matches_by_name_and_maps_categories_by_name(tmp_path: Path) -> None:
    data = coco([{"id": 1, "file_name": "x.png", "width": 200, "height": 100},
                 {"id": 2, "file_name": "some/dir/z.png"}],
                [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [10, 10, 20, 30]}])
    parsed = parse_export(write(tmp_path, data), view())
    by_id = {it.image_id: it for it in parsed.items}
    assert by_id[7].boxes == [[10.0, 10.0, 30.0, 40.0]] and by_id[7].labels == [2]  # "car" is class 2
    assert by_id[9].boxes == []  # listed without annotations: an empty image


@pytest.mark.parametrize("data, message", [
    (coco([{"id": 1, "file_name": "x.png"}], [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [190, 10, 40, 10]}]),
     "lies outside the 200x100 image"),
    (coco([{"id": 1, "file_name": "x.png"}], [], [{"id": 1, "name": "boat"}]), "unknown label 'boat'"),
    (coco([{"id": 1, "file_name": "elsewhere.png"}], []), "'elsewhere.png' is not in any batch"),
    (coco([{"id": 1, "file_name": "x.png", "width": 640}], []), "width=640"),
    (coco([{"id": 1, "file_name": "x.png"}], [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [1, 1, 5, 5],
                                              "score": 0.9}]), "model predictions"),
    ({**coco([], []), "info": {"activedet_project": "zzz"}}, "different activedet project"),
])
def test_coco_bad_inputs(tmp_path: Path, data: dict, message: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(DatasetError, match=message) as e:
        parse_export(path, view())
    assert str(path) in str(e.value)


def test_not_an_export(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="neither a Label Studio JSON export"):
        parse_export(write(tmp_path, {"foo": 1}), view())
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(DatasetError, match="malformed JSON"):
        parse_export(tmp_path / "bad.json", view())


def test_labelstudio_tasks_round_trip_through_the_parser(tmp_path: Path) -> None:
    """What select writes as predictions reads back (as an annotation) to the same pixels."""
    spec = BatchSpec(UID, 3, "entropy", "detection", ["tree", "car"], 0.5, None, None, "/pool")
    im = BatchImage(1, 7, "/pool/a/x.png", "a/x.png", 200, 100, 0.7,
                    boxes=np.array([[10, 20, 50, 60], [0, 0, 5, 5]], np.float32),
                    box_scores=np.array([0.9, 0.2], np.float32), box_labels=np.array([2, 1]))
    tasks = labelstudio_tasks([im], spec)
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=pool/a/x.png"  # relative to the pool's parent
    pred = tasks[0]["predictions"][0]
    assert pred["model_version"] == "entropy-round003" and pred["score"] == pytest.approx(0.5)  # rank 1 of 1
    assert tasks[0]["data"]["activedet_score"] == pytest.approx(0.7) and tasks[0]["data"]["activedet_rank"] == 1
    assert len(pred["result"]) == 1  # the 0.2 detection is below the pre-annotation threshold
    tasks[0]["annotations"] = [ann(pred["result"])]
    parsed = parse_export(write(tmp_path, tasks), view())
    assert parsed.items[0].boxes[0] == pytest.approx([10, 20, 50, 60]) and parsed.items[0].labels == [2]
    assert to_percent([10, 20, 50, 60], 200, 100)["width"] == pytest.approx(20.0)
    assert '<Label value="car"/>' in labelstudio_config(spec)


def test_label_studio_orders_put_the_first_choice_first() -> None:
    """Uncertainty sampling serves the lowest prediction score first, the Data Manager sorts
    it ascending: both must start with rank 1, whatever the strategy's scores are."""
    spec = BatchSpec(UID, 2, "entropy", "detection", ["tree", "car"], 0.5, None, None, "/pool")
    scores = [9.0, 3.5, 3.4, -1.0]  # the strategy's, best first
    images = [BatchImage(k + 1, 10 + k, f"/pool/{k}.png", f"{k}.png", 64, 64, s) for k, s in enumerate(scores)]
    tasks = labelstudio_tasks(images, spec)
    served = sorted(tasks, key=lambda t: t["predictions"][0]["score"])
    assert [t["data"]["activedet_rank"] for t in served] == [1, 2, 3, 4]
    assert all(0 < t["predictions"][0]["score"] < 1 for t in tasks)
    assert [t["data"]["activedet_score"] for t in served] == scores
