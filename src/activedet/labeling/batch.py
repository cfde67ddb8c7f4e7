"""Writers for one round's batch: ``batch.csv``, ``batch.coco.json`` and the Label Studio
import (``labelstudio/tasks.json`` + ``labelstudio/config.xml``).

Coordinates: the model's boxes are pixel ``x1, y1, x2, y2``; COCO gets ``[x, y, w, h]``
pixels; Label Studio gets percentages of the original image (``x, y, width, height`` in
0..100) with ``original_width`` / ``original_height``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from activedet.errors import ConfigError

#: Label Studio control names used in config.xml and in every result (ingest checks them)
LS_IMAGE = "image"
LS_BOXES = "label"
LS_CHOICES = "choice"


@dataclass
class BatchImage:
    """One selected image and what the model says about it.

    boxes: (K, 4) float32 pixel xyxy; box_scores: (K,); box_labels: (K,) in 1..C
    (detection, every detection above the model's ``score_thresh``).
    predicted_class: 0..C-1 and class_score (classification).
    """

    rank: int
    image_id: int
    path: str
    name: str  # file name relative to the pool root (or absolute)
    width: int
    height: int
    score: float | None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    box_scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    box_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    predicted_class: int | None = None
    class_score: float | None = None


@dataclass
class BatchSpec:
    """What the files say about the round as a whole."""

    project_uid: str
    round: int
    strategy: str
    task: str
    class_names: list[str]
    prelabel_score: float = 0.5  # detections at least this confident become pre-annotations
    image_url_prefix: str | None = None
    local_files_root: str | None = None
    pool_root: str = ""
    category_ids: list[int] | None = None  # of labels 1..C in the user's files (None: 1..C)

    def category_id(self, label: int) -> int:
        """The user's category id of label ``label`` (1..C)."""
        return int(label) if self.category_ids is None else int(self.category_ids[int(label) - 1])

    @property
    def model_version(self) -> str:
        return f"{self.strategy}-round{self.round:03d}"


def predicted_boxes(img: BatchImage, spec: BatchSpec) -> int:
    return int((img.box_scores >= spec.prelabel_score).sum())


def image_url(path: str, spec: BatchSpec) -> str:
    """The URL Label Studio loads ``path`` from.

    ``image_url_prefix``: prefix + the path relative to the pool root. Otherwise Label
    Studio's local-files form ``/data/local-files/?d=REL`` with REL relative to
    ``local_files_root`` (default: the folder holding the pool folder), to be served with
    ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true``,
    ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` = that root and, in the Label Studio project,
    a *Local files* source storage whose path is the pool folder (Label Studio serves a
    file only from a storage folder strictly below the document root).
    """
    if spec.image_url_prefix is not None:
        rel = _rel(path, spec.pool_root) or Path(path).name
        prefix = spec.image_url_prefix if spec.image_url_prefix.endswith("/") else spec.image_url_prefix + "/"
        return prefix + quote(rel)
    root = spec.local_files_root if spec.local_files_root is not None else default_local_root(spec.pool_root)
    rel = _rel(path, os.path.realpath(root))
    if rel is None:
        raise ConfigError(f"image {path} is not under the local-files root {root}; pass --local-files-root "
                          f"with a folder that holds every pool image, or --image-url-prefix")
    return "/data/local-files/?d=" + quote(rel)


def default_local_root(pool_root: str) -> str:
    """Label Studio's document root for a pool folder: the folder that holds it."""
    return os.path.dirname(os.path.realpath(pool_root).rstrip(os.sep)) or os.sep


def _rel(path: str, root: str) -> str | None:
    rel = os.path.relpath(path, root)
    return None if rel.startswith("..") else Path(rel).as_posix()


# ---------------------------------------------------------------------------- csv
def write_csv(images: Sequence[BatchImage], spec: BatchSpec, out: Path) -> None:
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        if spec.task == "detection":
            w.writerow(["rank", "image_id", "path", "score", "predicted_boxes"])
            for im in images:
                w.writerow([im.rank, im.image_id, im.path, _fmt(im.score),
                            "" if im.score is None else predicted_boxes(im, spec)])
        else:
            w.writerow(["rank", "image_id", "path", "score", "predicted_class", "class_score"])
            for im in images:
                name = "" if im.predicted_class is None else spec.class_names[im.predicted_class]
                w.writerow([im.rank, im.image_id, im.path, _fmt(im.score), name, _fmt(im.class_score)])


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


# ---------------------------------------------------------------------------- COCO
def batch_coco(images: Sequence[BatchImage], spec: BatchSpec) -> dict[str, Any]:
    """The batch as COCO: images (``file_name`` relative to the pool root, plus
    ``activedet_id``/``activedet_round``/``score``) and the model's detections as
    annotations with ``score`` (category ids as in the labeled file)."""
    coco_images, anns = [], []
    for im in images:
        entry: dict[str, Any] = {"id": im.image_id, "file_name": im.name, "width": im.width,
                                 "height": im.height, "activedet_id": im.image_id,
                                 "activedet_round": spec.round, "rank": im.rank, "score": im.score,
                                 "path": im.path}
        if spec.task == "classification" and im.predicted_class is not None:
            entry["predicted_category_id"] = spec.category_id(im.predicted_class + 1)
            entry["predicted_score"] = im.class_score
        coco_images.append(entry)
        for box, s, lab in zip(im.boxes, im.box_scores, im.box_labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            anns.append({"id": len(anns) + 1, "image_id": im.image_id, "category_id": spec.category_id(lab),
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": 0, "score": float(s)})
    cats = [{"id": spec.category_id(k + 1), "name": n} for k, n in enumerate(spec.class_names)]
    return {"info": {"description": f"activedet batch, round {spec.round}, strategy {spec.strategy}",
                     "activedet_project": spec.project_uid},
            "images": coco_images, "annotations": anns, "categories": cats}


# ---------------------------------------------------------------------------- Label Studio
def labelstudio_config(spec: BatchSpec) -> str:
    """The labeling interface: RectangleLabels (detection) or single Choices (classification)."""
    if spec.task == "detection":
        labels = "\n".join(f"    <Label value={quoteattr(n)}/>" for n in spec.class_names)
        control = (f'  <RectangleLabels name="{LS_BOXES}" toName="{LS_IMAGE}">\n{labels}\n'
                   f"  </RectangleLabels>")
    else:
        choices = "\n".join(f"    <Choice value={quoteattr(n)}/>" for n in spec.class_names)
        control = (f'  <Choices name="{LS_CHOICES}" toName="{LS_IMAGE}" choice="single" showInline="true">\n'
                   f"{choices}\n  </Choices>")
    return f'<View>\n  <Image name="{LS_IMAGE}" value="${LS_IMAGE}" zoom="true"/>\n{control}\n</View>\n'


def to_percent(box: Sequence[float], width: int, height: int) -> dict[str, float]:
    """Pixel xyxy -> Label Studio's ``x, y, width, height`` in percent of the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return {"x": 100.0 * x1 / width, "y": 100.0 * y1 / height,
            "width": 100.0 * (x2 - x1) / width, "height": 100.0 * (y2 - y1) / height, "rotation": 0}


def labelstudio_tasks(images: Sequence[BatchImage], spec: BatchSpec) -> list[dict[str, Any]]:
    """One task per image. ``predictions`` carry ``model_version`` and a ``score`` that
    grows with the rank, ``(rank - 0.5) / n`` in (0, 1): Label Studio's uncertainty sampling
    serves the lowest prediction score first, and its Data Manager sorts by it ascending, so
    both start with the strategy's first choice. The strategy's own score and rank are in
    ``data`` (``activedet_score``, ``activedet_rank``: columns Community edition sorts on).
    No prediction when the round was drawn at random (no model yet)."""
    tasks = []
    n = max(1, len(images))
    for im in images:
        task: dict[str, Any] = {"data": {
            LS_IMAGE: image_url(im.path, spec), "activedet_image_id": im.image_id,
            "activedet_round": spec.round, "activedet_project": spec.project_uid,
            "activedet_rank": im.rank, "activedet_file": im.name,
            "activedet_score": im.score}}
        if im.score is not None:
            task["predictions"] = [{"model_version": spec.model_version, "score": (im.rank - 0.5) / n,
                                    "result": prediction_result(im, spec)}]
        tasks.append(task)
    return tasks


def prediction_result(im: BatchImage, spec: BatchSpec) -> list[dict[str, Any]]:
    if spec.task == "classification":
        if im.predicted_class is None:
            return []
        return [{"id": "p0", "from_name": LS_CHOICES, "to_name": LS_IMAGE, "type": "choices",
                 "value": {"choices": [spec.class_names[im.predicted_class]]},
                 "score": float(im.class_score or 0.0)}]
    out = []
    for k, (box, s, lab) in enumerate(zip(im.boxes, im.box_scores, im.box_labels)):
        if s < spec.prelabel_score:
            continue
        out.append({"id": f"p{k}", "from_name": LS_BOXES, "to_name": LS_IMAGE, "type": "rectanglelabels",
                    "original_width": im.width, "original_height": im.height, "image_rotation": 0,
                    "value": {**to_percent(box, im.width, im.height),
                              "rectanglelabels": [spec.class_names[int(lab) - 1]]},
                    "score": float(s)})
    return out


def write_round(images: Sequence[BatchImage], spec: BatchSpec, out_dir: Path) -> list[Path]:
    """Write every batch file into ``out_dir`` atomically (a temporary folder renamed into
    place, replacing an unrecorded earlier attempt). Returns the written paths."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "labelstudio").mkdir(parents=True)
    write_csv(images, spec, tmp / "batch.csv")
    (tmp / "batch.coco.json").write_text(json.dumps(batch_coco(images, spec), indent=1))
    (tmp / "labelstudio" / "tasks.json").write_text(json.dumps(labelstudio_tasks(images, spec), indent=1))
    (tmp / "labelstudio" / "config.xml").write_text(labelstudio_config(spec))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return [out_dir / "batch.csv", out_dir / "batch.coco.json", out_dir / "labelstudio" / "tasks.json",
            out_dir / "labelstudio" / "config.xml"]
