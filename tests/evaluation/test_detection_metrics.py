"""COCO metrics: agreement with pycocotools, per-class AP50, edge cases and errors."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from activedet.errors import DatasetError
from activedet.evaluation import (
    STAT_KEYS,
    coco_metrics,
    detections_to_coco,
    evaluate_files,
    format_metrics,
)


def make_coco(seed: int, n_images: int = 12, n_classes: int = 3) -> tuple[dict, list[dict]]:
    """Random GT (some images empty, boxes of all COCO sizes) and noisy detections
    (some images without any, some false positives)."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "width": 640, "height": 480}
              for i in range(n_images)]
    categories = [{"id": c + 1, "name": f"class{c}"} for c in range(n_classes)]
    anns, dets = [], []
    for img in images:
        n_gt = 0 if img["id"] % 4 == 0 else int(rng.integers(1, 6))
        for _ in range(n_gt):
            w, h = rng.uniform(8, 200, size=2)
            x, y = rng.uniform(0, 400), rng.uniform(0, 250)
            cat = int(rng.integers(1, n_classes + 1))
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            if img["id"] % 5 != 0:  # images 5, 10: no detections
                for _ in range(int(rng.integers(0, 3))):
                    jitter = rng.normal(0, 0.15 * min(w, h), size=4)
                    bbox = [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]),
                            max(1.0, h + jitter[3])]
                    wrong = rng.random() < 0.2
                    dets.append({"image_id": img["id"],
                                 "category_id": int(rng.integers(1, n_classes + 1)) if wrong else cat,
                                 "bbox": [float(v) for v in bbox],
                                 "score": float(rng.random())})
        if img["id"] % 5 != 0:
            for _ in range(int(rng.integers(0, 3))):  # false positives
                dets.append({"image_id": img["id"], "category_id": int(rng.integers(1, n_classes + 1)),
                             "bbox": [float(v) for v in rng.uniform(0, 300, size=2)]
                             + [float(v) for v in rng.uniform(5, 100, size=2)],
                             "score": float(rng.random())})
    gt = {"info": {}, "licenses": [], "images": images, "annotations": anns,
          "categories": categories}
    return gt, dets


def reference_eval(gt: dict, dets: list[dict]) -> COCOeval:
    """pycocotools' own pipeline on copies of the data."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_pycocotools_summarize(seed: int) -> None:
    gt, dets = make_coco(seed)
    ev = reference_eval(gt, dets)
    metrics = coco_metrics(gt, dets)
    assert list(metrics)[:9] == list(STAT_KEYS)
    for key, ref in zip(STAT_KEYS, ev.stats):
        assert isinstance(metrics[key], float)
        assert metrics[key] == pytest.approx(float(ref), abs=1e-6), key
    assert 0.0 < metrics["AP50"] < 1.0  # the fixture is neither trivial nor hopeless

    precision = ev.eval["precision"]  # (T, R, K, A, M)
    expected = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[0, :, k, 0, 2]
        if (p > -1).any():
            expected[f"class{cat_id - 1}"] = float(np.mean(p[p > -1]))
    assert metrics["per_class_AP50"].keys() == expected.keys()
    for name, value in expected.items():
        assert metrics["per_class_AP50"][name] == pytest.approx(value, abs=1e-9)


def test_does_not_mutate_inputs_or_print(capsys: pytest.CaptureFixture[str]) -> None:
    gt, dets = make_coco(5)
    gt_copy, dets_copy = copy.deepcopy(gt), copy.deepcopy(dets)
    coco_metrics(gt, dets)
    assert gt == gt_copy and dets == dets_copy
    assert capsys.readouterr().out == ""


def test_class_without_gt_has_no_entry_and_class_names() -> None:
    gt, dets = make_coco(7, n_classes=2)
    gt["categories"].append({"id": 3, "name": "never_seen"})
    dets.append({"image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.9})
    metrics = coco_metrics(gt, dets)
    assert "never_seen" not in metrics["per_class_AP50"]
    named = coco_metrics(gt, dets, class_names=["car", "dog", "cat"])
    assert set(named["per_class_AP50"]) == {"car", "dog"}
    assert named["per_class_AP50"]["car"] == metrics["per_class_AP50"]["class0"]
    with pytest.raises(DatasetError, match="3 categories"):
        coco_metrics(gt, dets, class_names=["only_one"])


def test_empty_detections_give_zero() -> None:
    gt, _ = make_coco(1)
    metrics = coco_metrics(gt, [])
    for key in STAT_KEYS:
        assert metrics[key] == 0.0, key
    assert set(metrics["per_class_AP50"].values()) == {0.0}
    assert len(metrics["per_class_AP50"]) == 3


def test_gt_without_info_licenses_or_optional_fields() -> None:
    gt, dets = make_coco(2)
    ref = coco_metrics(gt, dets)
    bare = {"images": [{"id": img["id"]} for img in gt["images"]],
            "annotations": [{"image_id": a["image_id"], "category_id": a["category_id"],
                             "bbox": a["bbox"]} for a in gt["annotations"]],
            "categories": [{"id": c["id"]} for c in gt["categories"]]}
    metrics = coco_metrics(bare, dets)
    for key in STAT_KEYS:
        assert metrics[key] == pytest.approx(ref[key], abs=1e-12)
    assert set(metrics["per_class_AP50"]) == {"1", "2", "3"}


def test_perfect_detections_score_one() -> None:
    gt, _ = make_coco(3)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0} for a in gt["annotations"]]
    metrics = coco_metrics(gt, dets)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({"image_id": 9999}, "9999"),
        ({"category_id": 777}, "777"),
        ({"bbox": [1, 2, 3]}, "bbox"),
        ({"bbox": [10, 10, 5, -2]}, "negative"),
        ({"score": float("nan")}, "score"),
    ],
)
def test_bad_detections_raise_dataset_error(bad: dict, needle: str) -> None:
    gt, dets = make_coco(0)
    dets[0] = {**dets[0], **bad}
    with pytest.raises(DatasetError, match=needle):
        coco_metrics(gt, dets)


def test_missing_detection_key_raises() -> None:
    gt, dets = make_coco(0)
    del dets[0]["score"]
    with pytest.raises(DatasetError, match="score"):
        coco_metrics(gt, dets)


def test_evaluate_files(tmp_path: Path) -> None:
    gt, dets = make_coco(4)
    gt_path, det_path = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps(gt))
    det_path.write_text(json.dumps(dets))
    metrics = evaluate_files(gt_path, det_path)
    assert metrics["AP"] == pytest.approx(coco_metrics(gt, dets)["AP"], abs=1e-12)
    det_path.write_text("[]")
    assert evaluate_files(gt_path, det_path)["AP50"] == 0.0


def test_evaluate_files_errors_name_the_file(tmp_path: Path) -> None:
    gt, dets = make_coco(4)
    good_gt, good_det = tmp_path / "gt.json", tmp_path / "dets.json"
    good_gt.write_text(json.dumps(gt))
    good_det.write_text(json.dumps(dets))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    missing = tmp_path / "missing.json"
    not_list = tmp_path / "dict_dets.json"
    not_list.write_text(json.dumps({"annotations": dets}))
    for gt_path, det_path, name in [(broken, good_det, "broken.json"),
                                    (missing, good_det, "missing.json"),
                                    (good_gt, broken, "broken.json"),
                                    (good_gt, not_list, "dict_dets.json"),
                                    (good_det, good_det, "dets.json")]:
        with pytest.raises(DatasetError, match=name):
            evaluate_files(gt_path, det_path)
    bad_ids = tmp_path / "bad_ids.json"
    bad_ids.write_text(json.dumps([{**dets[0], "image_id": 4242}]))
    with pytest.raises(DatasetError, match="4242"):
        evaluate_files(good_gt, bad_ids)


def test_detections_to_coco_round_trip() -> None:
    boxes = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 5.0, 5.0]])
    out = detections_to_coco(7, boxes, torch.tensor([0.9, 0.1]), torch.tensor([2, 1]))
    assert out == [
        {"image_id": 7, "category_id": 2, "bbox": [10.0, 20.0, 40.0, 60.0], "score": pytest.approx(0.9)},
        {"image_id": 7, "category_id": 1, "bbox": [0.0, 0.0, 5.0, 5.0], "score": pytest.approx(0.1)},
    ]
    mapped = detections_to_coco(7, boxes.numpy(), [0.9, 0.1], [2, 1], {1: 18, 2: 44})
    assert [d["category_id"] for d in mapped] == [44, 18]
    assert detections_to_coco(1, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0)) == []
    with pytest.raises(DatasetError, match="label 1"):
        detections_to_coco(7, boxes, [0.9, 0.1], [2, 1], {2: 3})
    with pytest.raises(DatasetError, match="equal lengths"):
        detections_to_coco(7, boxes, [0.9], [2, 1])


def test_format_metrics() -> None:
    gt, dets = make_coco(0)
    metrics = coco_metrics(gt, dets)
    text = format_metrics(metrics)
    for token in ("AP50", "AP75", "class0", "class2", f"{100 * metrics['AP50']:.1f}"):
        assert token in text
    assert "n/a" in format_metrics({"AP": 0.5, "APs": -1.0})


def test_difficult_boxes_neither_reward_nor_penalise() -> None:
    from activedet.data.base import DetectionDataset, ImageRecord

    rec = ImageRecord(id=1, file_name="a.png", width=100, height=100,
                      boxes=np.array([[10, 10, 40, 40], [60, 60, 90, 90]], np.float32),
                      labels=np.array([1, 1]), difficult=np.array([False, True]),
                      array=np.zeros((100, 100, 3), np.uint8))
    gt = DetectionDataset([rec], ["c"]).to_coco()
    hit = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.5}
    on_difficult = {"image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "score": 0.9}
    # a higher-scored detection on the difficult box is not a false positive ...
    assert coco_metrics(gt, [hit, on_difficult])["AP50"] == pytest.approx(1.0)
    # ... and missing it is not a false negative
    assert coco_metrics(gt, [hit])["AP50"] == pytest.approx(1.0)
    # the same box without the flag counts: a miss halves recall
    rec.difficult = np.array([False, False])
    assert coco_metrics(DetectionDataset([rec], ["c"]).to_coco(), [hit])["AP50"] < 0.6
