"""A real Label Studio round trip (``make test-integration``; not part of ``make test``).

Starts Label Studio (PyPI ``label-studio`` 1.23, its own venv: ``.venv-labelstudio`` or
``$ACTIVEDET_LABEL_STUDIO``) on 127.0.0.1 with a fresh data dir, creates a project from
``config.xml``, imports ``tasks.json``, annotates every task through the REST API as an
annotator would (the ground truth of the built-in trees tiles; one task cancelled, one
with an extra box, one annotated twice), exports the project as Label Studio JSON,
``ingest``s it and runs the next ``select``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from activedet.cli import main
from activedet.data.coco import load_coco
from tests.labeling.conftest import gt, make_project_config
from tests.labeling.ls_server import LabelStudio

pytestmark = pytest.mark.integration


def gt_result(boxes: list[list[float]], width: int, height: int) -> list[dict[str, Any]]:
    """An annotator's rectangles (COCO [x, y, w, h] pixels) in Label Studio's percent form."""
    return [{"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": width,
             "original_height": height, "image_rotation": 0,
             "value": {"x": 100 * x / width, "y": 100 * y / height, "width": 100 * w / width,
                       "height": 100 * h / height, "rotation": 0, "rectanglelabels": ["tree"]}}
            for x, y, w, h in boxes]


def run_cli(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_label_studio_round_trip(tmp_path: Path, trees_files: Path, capsys) -> None:
    t_start = time.time()
    truth = gt(trees_files)
    ids = [im["id"] for im in truth["images"]]
    pool_root = trees_files / "all" / "images"
    boxes_of: dict[str, list[list[float]]] = {}
    size_of: dict[str, tuple[int, int]] = {}
    for im in truth["images"]:
        name = im["file_name"].split("/", 1)[1]
        boxes_of[name] = [a["bbox"] for a in truth["annotations"] if a["image_id"] == im["id"]]
        size_of[name] = (im["width"], im["height"])
    cfg = make_project_config(tmp_path, trees_files, ids[:8])
    project = tmp_path / "project"
    first = run_cli(capsys, "select", str(cfg), "--project", str(project), "--budget", "6", "--quiet")
    out = Path(first["dir"])

    # document root: the folder holding the pool folder (select's default local-files root)
    ls = LabelStudio(tmp_path / "ls-data", pool_root.parent, tmp_path / "label-studio.log")
    try:
        startup = ls.wait()
        print(f"Label Studio answered after {startup:.0f} s")
        proj = ls.post("/api/projects", {"title": "activedet e2e",
                                         "label_config": (out / "labelstudio" / "config.xml").read_text()})
        # a Local files source storage on the pool folder lets Label Studio serve its images
        ls.post("/api/storages/localfiles/", {"project": proj["id"], "path": str(pool_root), "title": "pool",
                                              "use_blob_urls": False})
        imported = ls.post(f"/api/projects/{proj['id']}/import",
                           json.loads((out / "labelstudio" / "tasks.json").read_text()))
        assert imported["task_count"] == 6 and imported["prediction_count"] == 6
        listed = ls.get(f"/api/tasks?project={proj['id']}&page_size=100")
        tasks = sorted(listed["tasks"] if isinstance(listed, dict) else listed, key=lambda t: t["id"])
        assert len(tasks) == 6
        # the image URLs in tasks.json are served by Label Studio's local-files storage
        assert ls.get(tasks[0]["data"]["image"], raw=True)[:4] == b"\x89PNG"

        expected: dict[str, int] = {}
        for k, task in enumerate(tasks):
            name = task["data"]["activedet_file"]
            width, height = size_of[name]
            result = gt_result(boxes_of[name], width, height)
            if k == 0:  # the annotator skips this one
                ls.post(f"/api/tasks/{task['id']}/annotations/", {"result": [], "was_cancelled": True})
                continue
            if k == 1:  # an extra box the ground truth does not have
                result += gt_result([[2.0, 3.0, 20.0, 15.0]], width, height)
            if k == 2:  # a first, wrong attempt, then a corrected (later) annotation
                ls.post(f"/api/tasks/{task['id']}/annotations/",
                        {"result": gt_result([[50.0, 50.0, 10.0, 10.0]], width, height), "was_cancelled": False})
                time.sleep(1.1)
            ls.post(f"/api/tasks/{task['id']}/annotations/", {"result": result, "was_cancelled": False,
                                                              "lead_time": 3.5})
            expected[name] = len(result)
        export = ls.get(f"/api/projects/{proj['id']}/export?exportType=JSON&download_all_tasks=true")
        export_path = tmp_path / "label-studio-export.json"
        export_path.write_text(json.dumps(export))
        assert sum(len(t["annotations"]) for t in export) == 7

        ingested = run_cli(capsys, "ingest", "--project", str(project), str(export_path))
        assert ingested["added"] == 5 and ingested["remaining"] == 1 and len(ingested["skipped"]) == 1
        assert ingested["boxes"] == sum(expected.values())
        base_boxes = sum(1 for a in truth["annotations"] if a["image_id"] in set(ids[:8]))
        assert ingested["labeled_images"] == 13 and ingested["labeled_boxes"] == base_boxes + sum(expected.values())

        run_cli(capsys, "export", "--project", str(project), str(tmp_path / "labeled.json"))
        labeled = load_coco(tmp_path / "labeled.json")
        checked = 0
        for i in labeled.ids:  # every ground-truth box came back, in pixels
            rec = labeled.record(i)
            name = Path(rec.file_name).name
            if name not in expected:
                continue
            checked += 1
            assert len(rec.boxes) == expected[name]
            for x, y, w, h in boxes_of[name]:
                assert np.abs(rec.boxes - np.array([x, y, x + w, y + h])).max(axis=1).min() < 1e-3
        assert checked == 5

        # round 1 is pending (the skipped task): the next select says so, --replace moves on
        capsys.readouterr()
        assert main(["select", str(cfg), "--project", str(project), "--budget", "5", "--quiet"]) == 2
        assert "--replace" in capsys.readouterr().err
        second = run_cli(capsys, "select", str(cfg), "--project", str(project), "--budget", "5", "--quiet",
                         "--replace", "--local-files-root", str(pool_root.parent))
        assert second["round"] == 2 and second["trained"] and second["dropped"] == 1
        done = {t["data"]["activedet_image_id"] for t in tasks[1:]}
        assert not {r["image_id"] for r in second["batch"]} & (done | set(ids[:8]))
        again = ls.post(f"/api/projects/{proj['id']}/import",
                        json.loads((Path(second["dir"]) / "labelstudio" / "tasks.json").read_text()))
        assert again["task_count"] == 5
    finally:
        ls.stop()
    print(f"Label Studio round trip: {time.time() - t_start:.0f} s")
