"""A tiny real-photo labeling setup: built-in ``trees`` tiles exported as files.

``trees_files`` (once per session): ``all/annotations.json`` + ``all/images/*.png`` holds
the first 40 train tiles (the ground truth an annotator would produce), ``test.json`` six
test tiles. ``make_project_config`` writes a config whose labeled set is a subset of them
(a COCO json next to ``all/annotations.json``, sharing its image files) and whose pool is
given as a folder, a COCO json without annotations, or a text file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pytest
import yaml

from activedet.data.builtin import load_builtin

N_IMAGES = 40


@pytest.fixture(scope="session")
def trees_files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trees")
    train = load_builtin("trees", "train")
    train.export_coco(root / "all", ids=train.ids[:N_IMAGES])
    test = load_builtin("trees", "test")
    test.export_coco(root / "test", ids=test.ids[:6])
    return root


def gt(root: Path) -> dict:
    return json.loads((root / "all" / "annotations.json").read_text())


def write_subset(root: Path, name: str, ids: Sequence[int], with_annotations: bool = True) -> Path:
    """A COCO json next to ``all/annotations.json`` holding ``ids`` in that order."""
    data = gt(root)
    by_id = {im["id"]: im for im in data["images"]}
    keep = set(ids)
    out = {"images": [by_id[i] for i in ids],
           "annotations": [a for a in data["annotations"] if a["image_id"] in keep] if with_annotations else [],
           "categories": data["categories"]}
    path = root / "all" / name
    path.write_text(json.dumps(out))
    return path


def tiny_detector(**extra) -> dict:
    return {"seed": 5, "device": "cpu",
            "model": {"arch": "fcos", "backbone": "mobilenet_v2", "pretrained": False, "image_size": 96,
                      "score_thresh": 0.05},
            "train": {"epochs": 1, "batch_size": 4},
            "strategy": {"name": "entropy"}, **extra}


def make_project_config(tmp: Path, root: Path, labeled_ids: Sequence[int], pool: str = "folder",
                        name: str = "cfg.yaml", **extra) -> Path:
    """Config with the labeled set ``labeled_ids`` and the other tiles as the pool."""
    labeled = write_subset(root, f"labeled_{tmp.name}.json", labeled_ids)
    rest = [im["id"] for im in gt(root)["images"] if im["id"] not in set(labeled_ids)]
    if pool == "folder":
        spec = str(root / "all" / "images")  # the labeled tiles are in it too: excluded by path
    elif pool == "coco":
        spec = str(write_subset(root, f"pool_{tmp.name}.json", rest, with_annotations=False))
    else:
        names = {im["id"]: im["file_name"] for im in gt(root)["images"]}
        (tmp / "pool.txt").write_text("\n".join(str(root / "all" / names[i]) for i in rest) + "\n")
        spec = str(tmp / "pool.txt")
    cfg = tiny_detector(dataset={"train": str(labeled), "unlabeled": spec}, **extra)
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def annotator_export(root: Path, batch_files: Sequence[str], path: Path) -> Path:
    """What a perfect annotator returns for ``batch_files`` (file names relative to the
    pool folder): the ground truth as COCO, file names as the labeling tool shows them."""
    data = gt(root)
    names = set(batch_files)
    images = [dict(im, file_name=im["file_name"].split("/", 1)[1]) for im in data["images"]
              if im["file_name"].split("/", 1)[1] in names]
    keep = {im["id"] for im in images}
    path.write_text(json.dumps({"images": images, "categories": data["categories"],
                                "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}))
    return path
