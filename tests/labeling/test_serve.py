"""``activedet serve``: the ML-backend protocol on Flask's test client, over a real project
(trees tiles): predictions for activedet's tasks and for images imported some other way,
annotation webhooks through the ingest path, and Start training in the background while
``/predict`` keeps answering."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from activedet.cli import main
from activedet.labeling.backend import Backend, create_app
from activedet.labeling.batch import default_local_root
from activedet.loop import engine
from tests.labeling.conftest import gt, make_project_config
from tests.labeling.test_labelstudio_e2e import gt_result

pytestmark = pytest.mark.slow


def annotation(task: dict, truth: dict, ann_id: int) -> dict:
    im = next(i for i in truth["images"] if i["file_name"].endswith("/" + task["data"]["activedet_file"]))
    boxes = [a["bbox"] for a in truth["annotations"] if a["image_id"] == im["id"]]
    return {"id": ann_id, "result": gt_result(boxes, im["width"], im["height"]), "was_cancelled": False}


def test_serve_predicts_ingests_and_trains_in_the_background(tmp_path: Path, trees_files: Path, capsys,
                                                             monkeypatch) -> None:
    truth = gt(trees_files)
    ids = [im["id"] for im in truth["images"]]
    cfg = make_project_config(tmp_path, trees_files, ids[:8])
    project = tmp_path / "project"
    capsys.readouterr()
    assert main(["select", str(cfg), "--project", str(project), "--budget", "4", "--quiet", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    tasks = json.loads((Path(res["dir"]) / "labelstudio" / "tasks.json").read_text())

    # start-up reuses round 0's checkpoint (same labels): nothing trains
    real_train = engine.train_model
    monkeypatch.setattr(engine, "train_model", lambda *a, **k: pytest.fail("serve retrained at start-up"))
    backend = Backend(project)
    backend.load()
    monkeypatch.setattr(engine, "train_model", real_train)
    client = create_app(backend).test_client()
    health = client.get("/health").get_json()
    assert health["status"] == "UP" and "model000" in health["model_version"] and not health["training"]
    assert client.post("/setup", json={"project": "1.123", "schema": "<View/>", "hostname": "http://127.0.0.1:1",
                                       "access_token": "t"}).get_json() == {"model_version": health["model_version"]}

    # predictions: activedet's own tasks (the same boxes as tasks.json, the same order score),
    # an image imported some other way (local files), and one that cannot be read
    test_image = trees_files / "test" / json.loads((trees_files / "test" / "annotations.json").read_text())[
        "images"][0]["file_name"]
    assert backend.local_root == default_local_root(str(trees_files / "all" / "images"))
    backend.local_root = str(trees_files)  # the document root Label Studio serves local files from
    other = {"id": 99, "data": {"image": "/data/local-files/?d=" + quote(str(test_image.relative_to(trees_files)))}}
    missing = {"id": 100, "data": {"image": "/data/local-files/?d=nope.png"}}
    out = client.post("/predict", json={"tasks": [tasks[1], other, missing]}).get_json()["results"]
    assert len(out) == 3 and all(r["model_version"] == health["model_version"] for r in out)
    assert out[0]["score"] == pytest.approx(tasks[1]["predictions"][0]["score"])  # (rank - 0.5) / n
    got = [(r["value"]["rectanglelabels"], round(r["score"], 4)) for r in out[0]["result"]]
    want = [(r["value"]["rectanglelabels"], round(r["score"], 4)) for r in tasks[1]["predictions"][0]["result"]]
    assert got == want
    confs = [r["score"] for r in out[1]["result"]]
    assert out[1]["score"] == pytest.approx(sum(confs) / len(confs) if confs else 0.0)
    assert out[2]["result"] == [] and out[2]["score"] == 0.0
    assert client.post("/predict", json={"tasks": "x"}).status_code == 400

    # an annotation webhook: ingested like an export
    hook = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "task": {"id": 1, "data": tasks[0]["data"]},
                                         "annotation": annotation(tasks[0], truth, 1)})
    assert hook.status_code == 201 and hook.get_json()["ingested"] == 1
    capsys.readouterr()
    assert main(["status", str(project), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labeling"]["labeled"] == 1

    # Start training: in the background; /predict answers meanwhile; a webhook that arrives
    # while training holds the project waits on disk and is ingested after it
    go = threading.Event()  # training waits for the test's go, so "meanwhile" is not a race

    def held_train(*a, **k):
        assert go.wait(600)
        return real_train(*a, **k)

    monkeypatch.setattr(engine, "train_model", held_train)
    started = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert started.status_code == 201 and started.get_json()["status"] == "training started"
    assert client.post("/webhook", json={"action": "START_TRAINING"}).get_json()["status"] == "already training"
    during = client.post("/predict", json={"tasks": [tasks[2]]})
    assert during.status_code == 200 and backend.state()["training"]  # answered while training
    assert during.get_json()["results"][0]["model_version"] == health["model_version"]
    late = client.post("/webhook", json={"action": "ANNOTATION_UPDATED", "task": {"id": 2, "data": tasks[1]["data"]},
                                         "annotation": annotation(tasks[1], truth, 2)}).get_json()
    assert late["waiting"] == 1 and late["ingested"] == 0
    go.set()
    deadline = time.time() + 600
    while backend.state()["training"] and time.time() < deadline:
        time.sleep(0.5)
    state = backend.state()
    assert not state["training"] and state["error"] is None
    assert "model001" in state["model_version"] and state["model_version"] != health["model_version"]
    assert client.post("/predict", json={"tasks": [tasks[2]]}).get_json()["results"][0]["model_version"] == \
        state["model_version"]
    capsys.readouterr()
    assert main(["status", str(project), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labeling"]["labeled"] == 2  # the late webhook, ingested
    assert sorted(p.name for p in (project / "webhooks" / "done").iterdir())  # kept, for the record
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED"}).status_code == 200
