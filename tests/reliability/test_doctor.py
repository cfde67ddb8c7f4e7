"""``activedet doctor``: every problem of a config and its data on its own line, exit 1;
a sound config gets one ``ok`` line and exit 0. Nothing is trained or downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from activedet.cli import main
from activedet.data.base import DetectionDataset, ImageRecord
from activedet.doctor import _box_problems, diagnose
from tests.conftest import make_detection_dataset
from tests.reliability.conftest import shapes_config
from tests.reliability.test_verify import image_path, truncate


def test_sound_config_is_ok(tmp_path: Path, capsys) -> None:
    cfg = shapes_config(tmp_path)
    assert main(["doctor", str(cfg), "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("ok: config, strategy entropy, train 24 images, test 6 images")


def test_every_problem_is_listed_on_its_own_line(tmp_path: Path, capsys, monkeypatch) -> None:
    import activedet.models.detection as det
    import torch

    train = make_detection_dataset(n=10, seed=1).export_coco(tmp_path / "train")
    test = make_detection_dataset(n=4, seed=2, start_id=100).export_coco(tmp_path / "test")
    truncate(image_path(train, 3))
    truncate(image_path(test, 102))
    coco = json.loads(train.read_text())
    coco["categories"].append({"id": 9, "name": "ghost"})  # no box, and not in the test split
    train.write_text(json.dumps(coco))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "device": "cuda",
        "dataset": {"train": str(train), "test": str(test)},
        "model": {"arch": "fcos", "backbone": "resnet18", "pretrained": True, "image_size": 64},
        "loop": {"initial": 8, "per_cycle": 2, "cycles": 2},
        "strategy": {"name": "entropy"},
    }))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(det.torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    monkeypatch.setattr(det, "packaged_weights_path", lambda backbone: None)
    monkeypatch.setattr("activedet.doctor.probe_url", lambda url: "offline")
    problems, _ = diagnose(cfg, probe=lambda url: "offline (test)")
    expected = [
        f"train split: cannot decode image {image_path(train, 3)} (image id 3)",
        f"test split: cannot decode image {image_path(test, 102)} (image id 102)",
        "test split classes ['c0', 'c1'] differ from train classes ['c0', 'c1', 'ghost']",
        "train split: class 'ghost' has no boxes",
        "loop asks for 12 images",
        "no ImageNet weights for backbone 'resnet18'",
        "device 'cuda' is asked for but no CUDA device is available",
    ]
    assert len(problems) == len(expected), problems
    for want, got in zip(expected, problems):
        assert got.startswith(want) and "\n" not in got, (want, got)
    assert main(["doctor", str(cfg), "--quiet"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == len(expected)


def test_weights_that_can_be_downloaded_are_not_a_problem(tmp_path: Path, monkeypatch) -> None:
    import activedet.models.detection as det

    monkeypatch.setattr(det.torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    cfg = shapes_config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    data["model"].update(backbone="resnet18", pretrained=True)
    cfg.write_text(yaml.safe_dump(data))
    asked: list[str] = []
    problems, checked = diagnose(cfg, probe=lambda url: asked.append(url))
    assert problems == [] and "resnet18 weights (downloadable)" in checked
    assert asked == [det.imagenet_weights_url("resnet18")]
    assert not (tmp_path / "empty_hub").exists(), "nothing was downloaded"


def test_unloadable_config_is_one_problem(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {lr: .nan}\n")
    assert main(["doctor", str(cfg)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "train.lr" in out[0]


def test_box_problems_of_in_memory_data() -> None:
    arr = np.zeros((20, 30, 3), np.uint8)
    recs = [ImageRecord(1, "a.png", 30, 20, boxes=np.array([[0, 0, 5, 5], [4, 4, 2, 9], [0, 0, 40, 5]], np.float32),
                        labels=np.array([1, 1, 3]), array=arr)]
    problems = _box_problems(DetectionDataset(recs, ["x", "y"]), "train")
    assert problems == [
        "train split: image id 1 (a.png) box #1 [4.0, 4.0, 2.0, 9.0] has non-positive width/height",
        "train split: image id 1 (a.png) box #2 [0.0, 0.0, 40.0, 5.0] lies outside the 30x20 image",
    ]
