"""``select --predictions FILE``: a pool ranked from the team's own detector's results, in the
shapes Ultralytics, detectron2 and MMDetection write them (none of them is imported), and
the same batch as the built-in path when the file holds the built-in model's detections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from activedet.labeling.dataset import project_dataset
from activedet.labeling.predictions import PredictionsModel, read_results
from activedet.labeling.project import _open, current_model
from activedet.config import StrategyConfig, load_config
from tests.labeling.conftest import make_project_config
from tests.labeling.test_everyday_pool import CATEGORIES, _run, noise_png

# the pool: file -> (COCO id, detections as (category position 0..2, score, [x, y, w, h]))
POOL = {"a.png": (11, [(2, 0.30, [4, 5, 10, 8])]),  # least confident: first
        "b.png": (12, [(0, 0.90, [1, 1, 20, 20])]),
        "17.png": (13, [(1, 0.60, [0, 0, 6, 6]), (0, 0.95, [30, 20, 8, 8])]),  # second (mean of 0.4, 0.05)
        "d.png": (14, [])}  # nothing detected: unscored, after every scored image


def _pool(tmp_path: Path) -> Path:
    pool = tmp_path / "pool"
    pool.mkdir()
    for k, name in enumerate(POOL):
        noise_png(pool / name, k)
    (tmp_path / "pool.json").write_text(json.dumps({"images": [
        {"id": iid, "file_name": f"pool/{name}"} for name, (iid, _) in POOL.items()]}))
    labeled = {"images": [], "annotations": [], "categories": CATEGORIES}
    (tmp_path / "labeled.json").write_text(json.dumps(labeled))
    cfg = {"seed": 3, "device": "cpu", "task": "detection", "strategy": {"name": "least_confidence"},
           "model": {"arch": "fcos", "backbone": "mobilenet_v2", "pretrained": False, "image_size": 64},
           "dataset": {"train": str(tmp_path / "labeled.json"), "unlabeled": str(tmp_path / "pool.json")}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "cfg.yaml"


def ultralytics_shape(pool_dir: Path) -> list[dict]:
    """DetectionValidator.pred_to_json: image_id = stem (int when numeric), file_name, class index + 1."""
    out = []
    for name, (_, dets) in POOL.items():
        stem = Path(name).stem
        for cls, score, box in dets:
            out.append({"image_id": int(stem) if stem.isnumeric() else stem, "file_name": name,
                        "category_id": cls + 1, "bbox": [round(v, 3) for v in box], "score": round(score, 5)})
    return out


def detectron2_shape() -> list[dict]:
    """instances_to_coco_json: the registered COCO file's image ids and category ids."""
    return [{"image_id": iid, "category_id": CATEGORIES[cls]["id"], "bbox": box, "score": score}
            for iid, dets in POOL.values() for cls, score, box in dets]


def mmdetection_shape() -> list[dict]:
    """CocoMetric.results2json (format_only): image_id, bbox, score, category_id, in that order."""
    return [{"image_id": iid, "bbox": box, "score": score, "category_id": CATEGORIES[cls]["id"]}
            for iid, dets in POOL.values() for cls, score, box in dets]


@pytest.mark.parametrize("shape,file_name", [("ultralytics", "predictions.json"),
                                             ("detectron2", "coco_instances_results.json"),
                                             ("mmdetection", "results.bbox.json")])
def test_each_frameworks_results_rank_the_pool(tmp_path: Path, capsys, shape: str, file_name: str) -> None:
    cfg = _pool(tmp_path)
    data = {"ultralytics": lambda: ultralytics_shape(tmp_path / "pool"), "detectron2": detectron2_shape,
            "mmdetection": mmdetection_shape}[shape]()
    (tmp_path / file_name).write_text(json.dumps(data))
    code, out, err = _run(capsys, "select", str(cfg), "--project", str(tmp_path / "p"), "--budget", "3", "--quiet",
                          "--json", "--predictions", str(tmp_path / file_name), "--prelabel-score", "0.2")
    assert code == 0, err
    res = json.loads(out)
    assert res["round"] == 0 and not res["trained"]
    assert [Path(r["path"]).name for r in res["batch"]][:2] == ["a.png", "17.png"]
    assert [r["score"] for r in res["batch"]][:2] == pytest.approx([0.7, (0.4 + 0.05) / 2])  # mean per image
    coco = json.loads((Path(res["dir"]) / "batch.coco.json").read_text())
    first = next(im["id"] for im in coco["images"] if im["file_name"].endswith("a.png"))
    (ann,) = [a for a in coco["annotations"] if a["image_id"] == first]
    assert ann["category_id"] == 42 and ann["bbox"] == pytest.approx([4, 5, 10, 8])  # the file's box, as given
    tasks = json.loads((Path(res["dir"]) / "labelstudio" / "tasks.json").read_text())
    assert all(t["predictions"] for t in tasks)  # the detections as pre-annotations


def test_what_a_strategy_needs_and_the_file_lacks_is_refused_by_name(tmp_path: Path, capsys) -> None:
    cfg = _pool(tmp_path)
    (tmp_path / "r.json").write_text(json.dumps(detectron2_shape()))
    argv = ["select", str(cfg), "--project", str(tmp_path / "p"), "--budget", "2", "--quiet",
            "--predictions", str(tmp_path / "r.json")]
    code, out, err = _run(capsys, *argv, "--strategy", "entropy")
    assert code == 2 and "least_confidence" in err and "probs" in err and "--score-as-probs" in err
    code, out, err = _run(capsys, *argv, "--strategy", "coreset")
    assert code == 2 and "coreset" in err and "least_confidence" in err
    assert not (tmp_path / "p" / "rounds").exists()
    code, out, err = _run(capsys, *argv, "--strategy", "entropy", "--score-as-probs", "--json")
    assert code == 0, err
    # binary entropy of the score alone, mean per image: a.png (0.30) is the most uncertain
    assert [Path(r["path"]).name for r in json.loads(out)["batch"]][0] == "a.png"

    bad = detectron2_shape() + [{"image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    code, out, err = _run(capsys, *argv[:-1], str(tmp_path / "bad.json"), "--replace")
    assert code == 2 and "not in the pool" in err and "99" in err
    bad = detectron2_shape()
    bad[1]["bbox"] = [0, 0, float("nan"), 3]  # json writes NaN; a results file must not
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    code, out, err = _run(capsys, *argv[:-1], str(tmp_path / "bad.json"), "--replace")
    assert code == 2 and "detection #1" in err and "finite" in err
    bad = detectron2_shape()
    bad[0]["category_id"] = 5
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    code, out, err = _run(capsys, *argv[:-1], str(tmp_path / "bad.json"), "--replace")
    assert code == 2 and "category_id 5" in err and "[3, 7, 42]" in err


def test_the_built_in_detections_read_back_give_the_same_batch(tmp_path: Path, trees_files: Path, capsys) -> None:
    """The built-in model's detections written out as a results file (detectron2's shape, with
    per-class probabilities) and read back rank the pool exactly as the built-in path."""
    truth = json.loads((trees_files / "all" / "annotations.json").read_text())
    ids = [im["id"] for im in truth["images"]]
    cfg_path = make_project_config(tmp_path, trees_files, ids[:8], pool="coco")
    project = tmp_path / "project"
    argv = ["select", str(cfg_path), "--project", str(project), "--budget", "5", "--quiet", "--json",
            "--strategy", "least_confidence"]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    built_in = json.loads(out)
    assert built_in["round"] == 1 and built_in["trained"]
    assert len({r["score"] for r in built_in["batch"]}) >= 3 and min(r["score"] for r in built_in["batch"]) > 0  # ranked

    cfg = load_config(cfg_path)
    cfg.strategy = StrategyConfig(name="least_confidence", params={})  # as --strategy made it
    model = current_model(cfg, project)  # round 0's checkpoint: what ranked round 1
    assert not model.trained
    proj = _open(cfg, project)
    try:
        dataset = project_dataset("detection", proj.base.class_names, proj.base, {}, proj.pool_ids,
                                  proj.listing.root)
        coco_id = dict(zip(proj.listing.paths, proj.listing.ids))
        cats = [c["id"] for c in truth["categories"]]
        results = []
        for inf in model.adapter.infer(dataset, sorted(proj.pool_ids), 8, keep_anchors=False):
            for box, s, lab, p in zip(inf.boxes.tolist(), inf.scores.tolist(), inf.labels.tolist(),
                                      inf.probs.tolist()):
                results.append({"image_id": coco_id[proj.pool_ids[inf.image_id]], "category_id": cats[lab - 1],
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": s,
                                "probs": p})
    finally:
        proj.ledger.close()
    assert results  # the tiny model detects something
    (tmp_path / "coco_instances_results.json").write_text(json.dumps(results))
    code, out, err = _run(capsys, *argv, "--replace", "--predictions", str(tmp_path / "coco_instances_results.json"))
    assert code == 0, err
    from_file = json.loads(out)
    assert from_file["round"] == 1 and not from_file["trained"]
    assert [r["image_id"] for r in from_file["batch"]] == [r["image_id"] for r in built_in["batch"]]
    assert [r["score"] for r in from_file["batch"]] == pytest.approx([r["score"] for r in built_in["batch"]],
                                                                      abs=1e-6)


def test_ultralytics_ids_are_file_stems(tmp_path: Path) -> None:
    _pool(tmp_path)
    paths = {k: str(tmp_path / "pool" / name) for k, name in enumerate(POOL)}
    old = [{k: v for k, v in e.items() if k != "file_name"} for e in ultralytics_shape(tmp_path / "pool")]
    # an older release writes no file_name: the stem (17 for 17.png) names the image
    res = read_results_file(tmp_path, old, paths, "ultralytics")
    assert sorted(res.by_image) == [0, 1, 2] and len(res.by_image[2]) == 2
    model = PredictionsModel(res, [3, 7, 42])
    (inf,) = model.infer(None, [0])
    assert inf.labels.tolist() == [3] and inf.boxes.tolist() == [[4, 5, 14, 13]]
    (empty,) = model.infer(None, [3])
    assert empty.boxes.shape == (0, 4) and empty.probs.shape == (0, 3)


def read_results_file(tmp_path: Path, data: list, paths: dict, fmt: str):
    (tmp_path / "r.json").write_text(json.dumps(data))
    return read_results(tmp_path / "r.json", fmt, paths, str(tmp_path / "pool"), None)


def test_box_budgets_count_the_files_detections(tmp_path: Path, capsys) -> None:
    """--unit boxes: an image costs its detections at --prelabel-score or more (at least 1)."""
    cfg = _pool(tmp_path)
    (tmp_path / "r.json").write_text(json.dumps(detectron2_shape()))
    code, out, err = _run(capsys, "select", str(cfg), "--project", str(tmp_path / "p"), "--budget", "3", "--quiet",
                          "--json", "--predictions", str(tmp_path / "r.json"), "--unit", "boxes",
                          "--prelabel-score", "0.2")
    assert code == 0, err
    # a.png costs 1 box, 17.png 2: the budget of 3 is spent on the two least confident images
    assert [Path(r["path"]).name for r in json.loads(out)["batch"]] == ["a.png", "17.png"]


def test_embeddings_let_core_set_pick_a_diverse_batch(tmp_path: Path, capsys) -> None:
    import numpy as np

    cfg = _pool(tmp_path)
    (tmp_path / "r.json").write_text(json.dumps(detectron2_shape()))
    argv = ["select", str(cfg), "--project", str(tmp_path / "p"), "--budget", "2", "--quiet", "--json",
            "--predictions", str(tmp_path / "r.json"), "--strategy", "coreset"]
    code, out, err = _run(capsys, *argv)
    assert code == 2 and "--embeddings" in err and "coreset" in err
    # two tight pairs far apart: a.png, b.png near 0; 17.png, d.png near 10 (rows named by id and by file)
    np.save(tmp_path / "e.npy", np.array([[0, 0], [0.1, 0], [10, 10], [10, 10.1]], np.float32))
    (tmp_path / "e.txt").write_text("11\npool/b.png\n13\nd.png\n")
    code, out, err = _run(capsys, *argv, "--embeddings", str(tmp_path / "e.npy"), "--embedding-ids",
                          str(tmp_path / "e.txt"))
    assert code == 0, err
    names = {Path(r["path"]).name for r in json.loads(out)["batch"]}
    assert len(names & {"a.png", "b.png"}) == 1 and len(names & {"17.png", "d.png"}) == 1
    (tmp_path / "e.txt").write_text("11\npool/b.png\n13\nnowhere.png\n")
    code, out, err = _run(capsys, *argv, "--replace", "--embeddings", str(tmp_path / "e.npy"), "--embedding-ids",
                          str(tmp_path / "e.txt"))
    assert code == 2 and "line 4" in err and "nowhere.png" in err
