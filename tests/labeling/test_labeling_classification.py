"""A classification project: Choices in Label Studio, one class per image back in."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from activedet.cli import main
from activedet.data.builtin import load_builtin
from activedet.data.classification import export_classification

pytestmark = pytest.mark.slow


def run(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_classification_select_ingest_select(tmp_path: Path, capsys, monkeypatch) -> None:
    digits = load_builtin("digits", "train", {"size": 16})
    by_class: dict[int, list[int]] = {}
    for i in digits.ids:
        by_class.setdefault(digits.label(i), []).append(i)
    labeled = [i for c in sorted(by_class) for i in by_class[c][:3]]
    pool = [i for c in sorted(by_class) for i in by_class[c][3:9]]
    export_classification(digits, tmp_path / "labeled", labeled)
    truth = {}
    for i in pool:
        (tmp_path / "pool").mkdir(exist_ok=True)
        Image.fromarray(digits.load_array(i)).save(tmp_path / "pool" / f"d{i}.png")
        truth[f"d{i}.png"] = digits.class_names[digits.label(i)]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "task": "classification", "device": "cpu", "seed": 2,
        "dataset": {"train": "labeled", "unlabeled": "pool"},  # relative to where select runs
        "model": {"arch": "small_cnn", "image_size": 16},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.05, "hflip": False},
        "strategy": {"name": "margin"}}))
    project = tmp_path / "project"
    monkeypatch.chdir(tmp_path)
    first = run(capsys, "select", str(cfg), "--project", str(project), "--budget", "8", "--quiet")
    out = Path(first["dir"])
    rows = list(csv.DictReader((out / "batch.csv").open()))
    assert len(rows) == 8 and all(r["predicted_class"] in digits.class_names for r in rows)
    config = (out / "labelstudio" / "config.xml").read_text()
    assert '<Choices name="choice" toName="image" choice="single"' in config and '<Choice value="9"/>' in config
    tasks = json.loads((out / "labelstudio" / "tasks.json").read_text())
    assert all(t["predictions"][0]["result"][0]["type"] == "choices" for t in tasks)

    for k, task in enumerate(tasks):  # the annotator picks the true class; skips the first image
        choice = {"from_name": "choice", "to_name": "image", "type": "choices",
                  "value": {"choices": [truth[task["data"]["activedet_file"]]]}}
        task["id"] = k + 1
        task["annotations"] = [{"id": k + 1, "result": [choice], "was_cancelled": k == 0}]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    res = run(capsys, "ingest", "--project", str(project), str(tmp_path / "export.json"))
    assert res["added"] == 7 and res["remaining"] == 1 and res["labeled_images"] == len(labeled) + 7

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the project remembers absolute paths
    run(capsys, "export", "--project", str(project), str(tmp_path / "all.json"))
    coco = json.loads((tmp_path / "all.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: Path(im["file_name"]).name for im in coco["images"]}
    got = {files[a["image_id"]]: names[a["category_id"]] for a in coco["annotations"] if files[a["image_id"]] in truth}
    assert len(coco["images"]) == len(labeled) + 7 and got == {f: truth[f] for f in got} and len(got) == 7

    monkeypatch.chdir(tmp_path)
    second = run(capsys, "select", str(cfg), "--project", str(project), "--budget", "8", "--quiet", "--replace")
    done = {t["data"]["activedet_image_id"] for t in tasks[1:]}
    assert second["round"] == 2 and not {r["image_id"] for r in second["batch"]} & done
