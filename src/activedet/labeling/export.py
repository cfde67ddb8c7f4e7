"""``activedet export``: a project's whole labeled set as one COCO file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from activedet.data.base import category_ids
from activedet.data.loading import load_dataset
from activedet.errors import ConfigError
from activedet.labeling import store
from activedet.labeling.dataset import file_order
from activedet.labeling.ingest import open_project


def export_project(project_dir: str | Path, out: str | Path, fmt: str = "coco") -> dict[str, int]:
    """The whole labeled set (round 0 + every ingested image) as one COCO file.

    ``file_name`` is relative to ``out``'s folder (absolute when on another drive), every
    image carries ``activedet_round``; in-memory images (built-in datasets) are written as
    PNG under ``OUT_images/``. Classification: one annotation per image without ``bbox``.
    Returns counts.
    """
    if fmt != "coco":
        raise ConfigError(f"--format {fmt!r} is not supported (known: coco)")
    project_dir, out = Path(project_dir), Path(out)
    ledger, meta = open_project(project_dir)
    try:
        labels = store.labels(ledger.conn)
    finally:
        ledger.close()
    proj = meta["project"]
    base = load_dataset(proj["train"], "train", proj.get("images"), proj.get("options") or {})
    out.parent.mkdir(parents=True, exist_ok=True)
    coco = _CocoFile(out, proj["task"], category_ids(base))  # the labeled file's own category ids (e.g. 3, 7, 42)
    for i in file_order(base):
        r = base.record(i)
        labs = [r.label] if proj["task"] == "classification" else r.labels
        coco.add(i, r.path, r.array, r.width, r.height, 0, r.boxes, labs, r.difficult)
    for row in labels:
        coco.add(row.image_id, Path(row.path), None, row.width, row.height, row.round, row.boxes, row.labels)
    coco.write(proj["uid"], list(proj["class_names"]))
    return {"images": len(coco.images), "annotations": len(coco.anns), "ingested": len(labels)}


class _CocoFile:
    """A COCO file being built: images and annotations added one image at a time, written
    at the end in one replace. ``cat_ids``: category id of each class index."""

    def __init__(self, out: Path, task: str, cat_ids: list[int]) -> None:
        self.out, self.task, self.cat_ids = out, task, cat_ids
        self.mem_dir = out.parent / f"{out.stem}_images"
        self.images: list[dict[str, Any]] = []
        self.anns: list[dict[str, Any]] = []

    def file_name(self, path: Path | None, image_id: int, array: Any) -> str:
        """``path`` relative to the file's folder; an in-memory image is saved as PNG first."""
        if path is None:
            self.mem_dir.mkdir(exist_ok=True)
            path = self.mem_dir / f"{image_id:06d}.png"
            Image.fromarray(np.ascontiguousarray(array)).save(path)
        try:
            return Path(os.path.relpath(os.path.realpath(path), os.path.realpath(self.out.parent))).as_posix()
        except ValueError:  # another drive (Windows)
            return Path(os.path.realpath(path)).as_posix()

    def add(self, image_id: int, path: Path | None, array: Any, width: int, height: int, round_: int,
            boxes: Any, labels: Any, difficult: Any = None) -> None:
        """One image and its annotations (boxes (K, 4) x1 y1 x2 y2 in pixels, labels 1..C;
        classification: ``labels[0]``, a class index, and no boxes)."""
        self.images.append({"id": int(image_id), "file_name": self.file_name(path, image_id, array),
                            "width": int(width), "height": int(height), "activedet_round": int(round_)})
        cat_ids, anns = self.cat_ids, self.anns
        if self.task == "classification":
            anns.append({"id": len(anns) + 1, "image_id": int(image_id), "category_id": cat_ids[int(labels[0])]})
            return
        for k, (box, lab) in enumerate(zip(boxes, labels)):
            x1, y1, x2, y2 = (float(v) for v in box)
            ann = {"id": len(anns) + 1, "image_id": int(image_id), "category_id": cat_ids[int(lab) - 1],
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            if difficult is not None and bool(difficult[k]):
                ann.update(iscrowd=1, ignore=1, difficult=1)
            anns.append(ann)

    def write(self, project_uid: str, names: list[str]) -> None:
        coco = {"info": {"description": "activedet labeled set", "activedet_project": project_uid},
                "images": self.images, "annotations": self.anns,
                "categories": [{"id": self.cat_ids[k], "name": n} for k, n in enumerate(names)]}
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(coco))
        os.replace(tmp, self.out)
