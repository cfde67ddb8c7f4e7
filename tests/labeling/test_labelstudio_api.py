"""Label Studio live over its API (``make test-integration``): ``select --label-studio``
creates and fills a bound project, ``ingest --label-studio`` pulls what annotators did,
``status`` counts it there; a wrong key, a server that is down, an import cut off
halfway, a labeling config edited there and a project deleted there are each one line,
and running the same command again completes the work without duplicate tasks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from activedet.cli import main
from activedet.labeling import studio as studio_mod
from tests.labeling.conftest import gt, make_project_config
from tests.labeling.ls_server import TOKEN, LabelStudio, free_port
from tests.labeling.test_labelstudio_e2e import gt_result

pytestmark = pytest.mark.integration


def run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    capsys.readouterr()
    code = main([*argv, "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 and out.out.strip() else None), out.err.strip()


def ls_tasks(ls: LabelStudio, pid: int) -> list[dict]:
    listed = ls.get(f"/api/tasks?project={pid}&page_size=1000")
    return sorted(listed["tasks"] if isinstance(listed, dict) else listed, key=lambda t: t["id"])


def trees_project(tmp_path: Path, trees_files: Path) -> tuple[dict, dict, Path, Path, Path]:
    """(ground truth, truth image by pool file name, pool folder, config, project dir): the
    first 8 tiles labeled, the rest of the folder the pool."""
    truth = gt(trees_files)
    ids = [im["id"] for im in truth["images"]]
    by_name = {im["file_name"].split("/", 1)[1]: im for im in truth["images"]}
    cfg = make_project_config(tmp_path, trees_files, ids[:8])
    return truth, by_name, trees_files / "all" / "images", cfg, tmp_path / "project"


def test_label_studio_live(tmp_path: Path, tmp_path_factory, trees_files: Path, capsys, monkeypatch) -> None:
    """One Label Studio server: two rounds of trees tiles through its API (with every failure
    the issue lists and a correction of a closed round), then `activedet serve` as its ML
    backend on that project, then a phone photo's pre-annotation and label in its frame."""
    t0 = time.time()
    root = tmp_path_factory.getbasetemp()  # Label Studio's document root: every pool here is below it
    # Label Studio refuses ML backends and webhooks on 127.0.0.1 unless told they are fine
    monkeypatch.setenv("ML_BLOCK_LOCAL_IP", "false")
    monkeypatch.setenv("USE_DEFAULT_BANNED_SUBNETS", "false")
    ls = LabelStudio(tmp_path / "ls-data", root, tmp_path / "label-studio.log")
    try:
        ls.wait()
        project, pid = api_rounds(ls, root, tmp_path, trees_files, capsys, monkeypatch)
        print(f"Label Studio API rounds: {time.time() - t0:.0f} s")
        ml_backend(ls, root, project, pid, tmp_path, trees_files, capsys, monkeypatch)
        print(f"... and activedet serve as its ML backend: {time.time() - t0:.0f} s")
        phone = phone_photo(ls, root, tmp_path, capsys, monkeypatch)
        # the key is nowhere in the projects or the backend's log
        for f in [*project.rglob("*"), *phone.rglob("*"), tmp_path / "serve.log"]:
            if f.is_file():
                assert TOKEN.encode() not in f.read_bytes(), f
    finally:
        ls.stop()
    print(f"Label Studio live: {time.time() - t0:.0f} s")


def api_rounds(ls: LabelStudio, root: Path, tmp_path: Path, trees_files: Path, capsys,
               monkeypatch) -> tuple[Path, int]:
    """Two rounds through the API; returns the project and its (relinked) Label Studio id."""
    truth, by_name, pool_root, cfg, project = trees_project(tmp_path, trees_files)
    sel = ["select", str(cfg), "--project", str(project), "--quiet", "--local-files-root", str(root),
           "--label-studio"]
    url = ls.url
    # no key, a wrong key, a server that is down: one line each, before anything trains
    monkeypatch.delenv(studio_mod.KEY_ENV, raising=False)
    code, _, err = run(capsys, *sel, url, "--budget", "6")
    assert code == 2 and studio_mod.KEY_ENV in err and len(err.splitlines()) == 1
    monkeypatch.setenv(studio_mod.KEY_ENV, "0" * 40)
    code, _, err = run(capsys, *sel, url, "--budget", "6")
    assert code == 2 and "refused the API key" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, *sel, f"http://127.0.0.1:{free_port()}", "--budget", "6")
    assert code == 2 and "does not answer" in err and len(err.splitlines()) == 1
    assert not (project / "checkpoints").exists()

    # the import is cut off halfway (the connection drops after 3 tasks): one line; the
    # same command again imports the rest, no duplicates
    (tmp_path / "key").write_text(TOKEN + "\n")
    real_import = studio_mod.Studio.import_tasks

    def cut_off(self, pid, tasks):
        real_import(self, pid, tasks[:3])
        raise studio_mod.LabelingError("Label Studio at ... does not answer (ReadTimeout) while importing")

    monkeypatch.setattr(studio_mod.Studio, "import_tasks", cut_off)
    key = ["--label-studio-key-file", str(tmp_path / "key")]
    code, _, err = run(capsys, *sel, url, "--budget", "6", *key)
    assert code == 2 and "does not answer" in err
    monkeypatch.setattr(studio_mod.Studio, "import_tasks", real_import)
    code, first, err = run(capsys, *sel, url, "--budget", "6", *key)
    assert code == 0, err
    pid = first["label_studio"]["project"]
    assert first["label_studio"]["imported"] == 3 and first["label_studio"]["present"] == 3
    tasks = ls_tasks(ls, pid)
    assert len(tasks) == 6 and len({t["data"]["activedet_image_id"] for t in tasks}) == 6
    # nothing imported twice, and again: nothing to do
    code, again, err = run(capsys, *sel, url, "--budget", "6", *key)
    assert code == 2 and "is pending" in err and "--label-studio" in err
    assert len(ls_tasks(ls, pid)) == 6

    # the bound project: labeling config, predictions ordered for both Label Studio orders
    proj = ls.get(f"/api/projects/{pid}")
    assert "activedet" in proj["title"] and '<Label value="tree"/>' in proj["label_config"]
    full = [ls.get(f"/api/tasks/{t['id']}") for t in tasks]
    by_rank = sorted(full, key=lambda t: t["data"]["activedet_rank"])
    pred_scores = [t["predictions"][0]["score"] for t in by_rank]
    assert pred_scores == sorted(pred_scores) and len(set(pred_scores)) == 6  # lowest first = rank 1
    assert ls.get(tasks[0]["data"]["image"], raw=True)[:4] == b"\x89PNG"  # served by the storage

    # annotators label 4 (one skipped); status counts them there
    for k, t in enumerate(by_rank[:5]):
        im = by_name[t["data"]["activedet_file"]]
        if k == 4:
            ls.post(f"/api/tasks/{t['id']}/annotations/", {"result": [], "was_cancelled": True})
            continue
        boxes = [a["bbox"] for a in truth["annotations"] if a["image_id"] == im["id"]]
        ls.post(f"/api/tasks/{t['id']}/annotations/", {"result": gt_result(boxes, im["width"], im["height"])})
    code, status, err = run(capsys, "status", str(project), *key)
    assert status["label_studio"]["labeled"] == 4 and status["label_studio"]["skipped"] == 1
    assert status["label_studio"]["tasks"] == 6
    monkeypatch.setenv(studio_mod.KEY_ENV, TOKEN)  # the key from the environment
    capsys.readouterr()
    assert main(["status", str(project)]) == 0
    assert "4 of 6 tasks of round 1 labeled there, 1 skipped" in capsys.readouterr().out
    monkeypatch.setenv(studio_mod.KEY_ENV, "0" * 40)  # from here on: the key file, which wins

    code, ing, err = run(capsys, "ingest", "--project", str(project), "--label-studio", url, *key)
    assert code == 0, err
    assert ing["added"] == 4 and ing["remaining"] == 2
    code, twice, err = run(capsys, "ingest", "--project", str(project), "--label-studio", url, *key)
    assert twice["added"] == 0 and twice["unchanged"] == 4

    # the next round replaces the 2 left over: their unannotated tasks leave Label Studio
    code, second, err = run(capsys, *sel, url, "--budget", "3", "--replace", *key)
    assert code == 0, err
    assert second["round"] == 2 and second["label_studio"]["imported"] == 3
    assert second["label_studio"]["deleted"] == 1  # the skipped one stays (it has a cancelled annotation)
    assert len(ls_tasks(ls, pid)) == 6 - 1 + 3

    # an annotator corrects a box of closed round 1 there: the next pull applies it as a
    # revision and the export carries the corrected box
    fixed = ls.get(f"/api/tasks/{by_rank[0]['id']}")["annotations"][0]
    result = fixed["result"]
    result[0]["value"]["width"] = result[0]["value"]["width"] / 2
    ls.request("PATCH", f"/api/annotations/{fixed['id']}", {"result": result})
    code, ing, err = run(capsys, "ingest", "--project", str(project), "--label-studio", url, *key)
    assert code == 0 and ing["corrected"] == 1, err
    code, _, err = run(capsys, "export", "--project", str(project), str(tmp_path / "all.json"))
    exported = json.loads((tmp_path / "all.json").read_text())
    image_id = by_rank[0]["data"]["activedet_image_id"]
    w = by_name[by_rank[0]["data"]["activedet_file"]]["width"]
    widths = sorted(a["bbox"][2] for a in exported["annotations"] if a["image_id"] == image_id)
    assert any(abs(x - result[0]["value"]["width"] * w / 100) < 1e-3 for x in widths)

    # a labeling config edited there: one line, then the same command works once restored
    good = proj["label_config"]
    ls.request("PATCH", f"/api/projects/{pid}", {"label_config": good.replace('"tree"', '"shrub"')})
    code, _, err = run(capsys, "ingest", "--project", str(project), "--label-studio", url, *key)
    assert code == 2 and "was edited there" in err and len(err.splitlines()) == 1
    ls.request("PATCH", f"/api/projects/{pid}", {"label_config": good})
    code, _, err = run(capsys, "ingest", "--project", str(project), "--label-studio", url, *key)
    assert code == 0, err

    # the project deleted there: one line naming the way out, which works
    ls.request("DELETE", f"/api/projects/{pid}")
    code, _, err = run(capsys, "ingest", "--project", str(project), "--label-studio", url, *key)
    assert code == 2 and "no longer exists" in err and "--label-studio-relink" in err
    code, relinked, err = run(capsys, *sel, url, "--budget", "3", "--label-studio-relink", *key)
    assert code == 0, err
    assert relinked["label_studio"]["project"] != pid and relinked["label_studio"]["imported"] == 3
    return project, relinked["label_studio"]["project"]


def ml_backend(ls: LabelStudio, root: Path, project: Path, pid: int, tmp_path: Path, trees_files: Path, capsys,
               monkeypatch) -> None:
    """Label Studio connects to `activedet serve`, gets predictions for a task imported some
    other way, sends annotation webhooks that activedet ingests, and *Start training*
    retrains in the background and bumps the model version."""
    import os
    import re
    import subprocess
    import sys
    import urllib.request

    truth = gt(trees_files)
    by_name = {im["file_name"].split("/", 1)[1]: im for im in truth["images"]}
    monkeypatch.setenv(studio_mod.KEY_ENV, TOKEN)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{Path(__file__).resolve().parents[2] / 'src'}", "OMP_NUM_THREADS": "1"}
    serve = subprocess.Popen([sys.executable, "-m", "activedet.cli", "serve", "--project", str(project),
                              "--port", str(port), "--local-files-root", str(root)], env=env,
                             stdout=(tmp_path / "serve.log").open("w"), stderr=subprocess.STDOUT)
    backend = f"http://127.0.0.1:{port}"

    def health() -> dict:
        with urllib.request.urlopen(backend + "/health", timeout=10) as r:
            return json.loads(r.read())

    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                version0 = health()["model_version"]
                break
            except OSError:
                time.sleep(1)
        with urllib.request.urlopen(backend + "/health", timeout=10) as r:  # a production WSGI server
            assert "waitress" in r.headers["Server"], r.headers["Server"]
        ml = ls.post("/api/ml", {"url": backend, "project": pid, "title": "activedet"})
        assert ml["state"] in ("CO", "CONNECTED") or "id" in ml

        # a task imported some other way gets the model's predictions from the backend
        ours = [t for t in ls_tasks(ls, pid) if "activedet_project" in t["data"]]
        name = sorted(n for n in by_name if n not in {t["data"]["activedet_file"] for t in ours})[0]
        rel = (trees_files / "all" / "images" / name).relative_to(root).as_posix()
        ls.post(f"/api/projects/{pid}/import", [{"image": f"/data/local-files/?d={rel}"}])
        other = next(t for t in ls_tasks(ls, pid) if "activedet_project" not in t["data"])
        ls.post(f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
                {"selectedItems": {"all": False, "included": [other["id"]]}})
        preds = ls.get(f"/api/predictions?task={other['id']}")
        preds = preds if isinstance(preds, list) else preds.get("results", [])
        assert preds and preds[0]["model_version"] == version0

        # annotations reach activedet by webhook, through the ingest path
        ls.post("/api/webhooks/", {"url": backend + "/webhook", "project": pid, "send_payload": True,
                                   "send_for_all_actions": False, "actions": ["ANNOTATION_CREATED"]})
        for t in ours[:2]:
            im = by_name[t["data"]["activedet_file"]]
            boxes = [a["bbox"] for a in truth["annotations"] if a["image_id"] == im["id"]]
            ls.post(f"/api/tasks/{t['id']}/annotations/", {"result": gt_result(boxes, im["width"], im["height"])})
        deadline = time.time() + 120
        while time.time() < deadline:
            code, status, _ = run(capsys, "status", str(project))
            if status["labeling"]["labeled"] == 2:
                break
            time.sleep(1)
        assert status["labeling"]["labeled"] == 2

        # Start training: the backend retrains in the background and bumps model_version
        ls.post(f"/api/ml/{ml['id']}/train", {})
        deadline = time.time() + 600
        while time.time() < deadline and health()["model_version"] == version0:
            assert health()["status"] == "UP"  # answering while it trains
            time.sleep(1)
        before = int(re.search(r"model(\d{3})", version0).group(1))
        assert f"model{before + 1:03d}" in health()["model_version"], (version0, health())
    finally:
        serve.terminate()
        serve.wait(30)


def phone_photo(ls: LabelStudio, root: Path, tmp_path: Path, capsys, monkeypatch) -> Path:
    """An EXIF-rotated JPEG (stored 160 x 96, shown 96 x 160) in a second project on the same
    server: its task says the shown frame and Label Studio serves it; the model's
    pre-annotation (trained on red squares) covers the red block where it is shown; a box
    drawn there lands where the object is in the pixels activedet trains on."""
    import numpy as np
    from PIL import Image

    from activedet.data.base import read_image_rgb
    from tests.labeling.test_everyday_pool import noise_png
    from tests.labeling.test_everyday_pool import phone_photo as write_phone_photo

    rng = np.random.default_rng(0)
    shapes = tmp_path / "labeled"
    shapes.mkdir()
    images, anns = [], []
    for k in range(24):  # the labeled set: one red square each, on grey
        a = np.full((96, 96, 3), 128, np.uint8)
        w, h = (int(v) for v in rng.integers(24, 48, 2))
        x, y = int(rng.integers(0, 96 - w)), int(rng.integers(0, 96 - h))
        a[y:y + h, x:x + w] = (255, 0, 0)
        Image.fromarray(a).save(shapes / f"s{k}.png")
        images.append({"id": k + 1, "file_name": f"s{k}.png", "width": 96, "height": 96})
        anns.append({"id": k + 1, "image_id": k + 1, "category_id": 5, "bbox": [x, y, w, h], "area": w * h,
                     "iscrowd": 0})
    (shapes / "labeled.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                     "categories": [{"id": 5, "name": "thing"}]}))
    pool = tmp_path / "photos"
    pool.mkdir()
    write_phone_photo(pool / "phone.jpg", 6)  # red in the stored top-left = the shown top-right 32 x 48
    noise_png(pool / "other.png", 1)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({
        "seed": 0, "device": "cpu", "dataset": {"train": str(shapes / "labeled.json"), "unlabeled": str(pool)},
        "model": {"arch": "fcos", "backbone": "mobilenet_v2", "pretrained": True, "image_size": 96},
        "train": {"epochs": 15, "batch_size": 4, "lr": 0.01, "warmup_iters": 10, "grad_clip": 10.0},
        "strategy": {"name": "entropy"}}))
    project = tmp_path / "phone-project"
    monkeypatch.setenv(studio_mod.KEY_ENV, TOKEN)
    code, first, err = run(capsys, "select", str(cfg), "--project", str(project), "--quiet", "--budget", "2",
                           "--prelabel-score", "0.3", "--local-files-root", str(root), "--label-studio", ls.url)
    assert code == 0, err
    pid = first["label_studio"]["project"]
    task = next(t for t in ls_tasks(ls, pid) if t["data"]["activedet_file"] == "phone.jpg")
    assert ls.get(task["data"]["image"], raw=True)[:2] == b"\xff\xd8"  # served: the JPEG itself
    coco = json.loads((Path(first["dir"]) / "batch.coco.json").read_text())
    assert {(im["width"], im["height"]) for im in coco["images"] if im["file_name"] == "phone.jpg"} == {(96, 160)}
    # the model's best box on the phone photo, in Label Studio's percent of the shown frame
    pred = max(ls.get(f"/api/tasks/{task['id']}")["predictions"][0]["result"], key=lambda r: r["score"])
    assert (pred["original_width"], pred["original_height"]) == (96, 160)
    v = pred["value"]
    px = [v["x"] * 0.96, v["y"] * 1.6, (v["x"] + v["width"]) * 0.96, (v["y"] + v["height"]) * 1.6]
    inter = max(0.0, min(px[2], 96) - max(px[0], 64)) * max(0.0, min(px[3], 48) - max(px[1], 0))
    union = (px[2] - px[0]) * (px[3] - px[1]) + 32 * 48 - inter
    assert inter / union > 0.3, (px, inter / union)  # over the red block as shown (not the stored corner)

    box = {"x": 200 / 3, "y": 0.0, "width": 100 / 3, "height": 30.0, "rotation": 0, "rectanglelabels": ["thing"]}
    ls.post(f"/api/tasks/{task['id']}/annotations/", {"result": [
        {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 96,
         "original_height": 160, "image_rotation": 0, "value": box}]})
    code, ing, err = run(capsys, "ingest", "--project", str(project), "--label-studio", ls.url)
    assert code == 0 and ing["added"] == 1, err
    run(capsys, "export", "--project", str(project), str(tmp_path / "phone-all.json"))
    exported = json.loads((tmp_path / "phone-all.json").read_text())
    phone_id = next(im["id"] for im in exported["images"] if im["file_name"].endswith("phone.jpg"))
    (ann,) = [a for a in exported["annotations"] if a["image_id"] == phone_id]
    x, y, w, h = (round(v) for v in ann["bbox"])
    assert (x, y, w, h) == (64, 0, 32, 48) and ann["category_id"] == 5
    pixels = read_image_rgb(pool / "phone.jpg")
    assert pixels[y:y + h, x:x + w, 0].mean() > 240 and np.delete(pixels[:, :, 0], np.s_[x:x + w], 1).mean() < 160
    return project
