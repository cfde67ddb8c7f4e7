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
    names = list(proj["class_names"])
    cat_ids = category_ids(base)  # the labeled file's own category ids (e.g. 3, 7, 42)
    images, anns = [], []
    mem_dir = out.parent / f"{out.stem}_images"

    def file_name(path: Path | None, image_id: int, array: Any) -> str:
        if path is None:
            mem_dir.mkdir(exist_ok=True)
            path = mem_dir / f"{image_id:06d}.png"
            Image.fromarray(np.ascontiguousarray(array)).save(path)
        try:
            return Path(os.path.relpath(os.path.realpath(path), os.path.realpath(out.parent))).as_posix()
        except ValueError:  # another drive (Windows)
            return Path(os.path.realpath(path)).as_posix()

    def add(image_id: int, path: Path | None, array: Any, width: int, height: int, round_: int,
            boxes: Any, labels: Any, difficult: Any = None) -> None:
        images.append({"id": int(image_id), "file_name": file_name(path, image_id, array), "width": int(width),
                       "height": int(height), "activedet_round": int(round_)})
        if proj["task"] == "classification":
            anns.append({"id": len(anns) + 1, "image_id": int(image_id), "category_id": cat_ids[int(labels[0])]})
            return
        for k, (box, lab) in enumerate(zip(boxes, labels)):
            x1, y1, x2, y2 = (float(v) for v in box)
            ann = {"id": len(anns) + 1, "image_id": int(image_id), "category_id": cat_ids[int(lab) - 1],
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            if difficult is not None and bool(difficult[k]):
                ann.update(iscrowd=1, ignore=1, difficult=1)
            anns.append(ann)

    for i in file_order(base):
        r = base.record(i)
        labs = [r.label] if proj["task"] == "classification" else r.labels
        add(i, r.path, r.array, r.width, r.height, 0, r.boxes, labs, r.difficult)
    for row in labels:
        add(row.image_id, Path(row.path), None, row.width, row.height, row.round, row.boxes, row.labels)
    coco = {"info": {"description": "activedet labeled set", "activedet_project": proj["uid"]},
            "images": images, "annotations": anns,
            "categories": [{"id": cat_ids[k], "name": n} for k, n in enumerate(names)]}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(coco))
    os.replace(tmp, out)
    return {"images": len(images), "annotations": len(anns), "ingested": len(labels)}
