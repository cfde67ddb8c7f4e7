"""Dataset containers shared by every loader.

A :class:`DetectionDataset` holds one :class:`ImageRecord` per image, keyed by an integer
image id (the COCO id when loaded from COCO). Labels are contiguous ``1..C``
(torchvision's convention: 0 is background); ``class_names[c - 1]`` names label ``c``.
Images are read lazily from disk, or held in memory for generated datasets.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from activedet.errors import DatasetError


@dataclass
class ImageRecord:
    """One image and its ground truth.

    boxes: (N, 4) float32, absolute pixel ``x1, y1, x2, y2``; labels: (N,) int64 in 1..C;
    difficult: (N,) bool (VOC's flag; all False elsewhere).
    """

    id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    difficult: np.ndarray | None = None
    path: Path | None = None  # where to read the image from
    array: np.ndarray | None = None  # (H, W, 3) uint8, for in-memory datasets
    label: int | None = None  # classification: class index 0..C-1

    def __post_init__(self) -> None:
        if self.difficult is None:
            self.difficult = np.zeros((len(self.labels),), dtype=bool)


def read_image_rgb(path: Path, image_id: int | str | None = None) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (grayscale/RGBA/palette converted).

    Raises :class:`DatasetError` naming the file (and image id) when it cannot be read.
    """
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        who = f" (image id {image_id})" if image_id is not None else ""
        raise DatasetError(f"cannot read image {path}{who}: {e}") from None


class DetectionDataset:
    """Images with boxes, indexed by image id."""

    task = "detection"

    def __init__(self, records: Sequence[ImageRecord], class_names: Sequence[str],
                 name: str = "dataset", source: str = "") -> None:
        self.name = name
        self.source = source
        self.class_names = list(class_names)
        self._records: dict[int, ImageRecord] = {}
        for r in records:
            if r.id in self._records:
                raise DatasetError(f"{source or name}: duplicate image id {r.id}")
            self._records[r.id] = r

    # ---------------------------------------------------------------- access
    @property
    def ids(self) -> list[int]:
        """Image ids in sorted order."""
        return sorted(self._records)

    @property
    def num_classes(self) -> int:
        """Number of object classes C (background excluded)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, image_id: int) -> bool:
        return image_id in self._records

    def record(self, image_id: int) -> ImageRecord:
        try:
            return self._records[image_id]
        except KeyError:
            raise DatasetError(f"{self.name}: unknown image id {image_id}") from None

    def num_boxes(self, image_id: int) -> int:
        """Annotation cost of an image: its number of ground-truth boxes."""
        return int(len(self.record(image_id).labels))

    def load_array(self, image_id: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        r = self.record(image_id)
        if r.array is not None:
            return r.array
        assert r.path is not None
        return read_image_rgb(r.path, image_id)

    def load_image(self, image_id: int) -> torch.Tensor:
        """(3, H, W) float32 in [0, 1]."""
        arr = self.load_array(image_id)
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255.0)

    def target(self, image_id: int) -> dict[str, torch.Tensor]:
        """torchvision detection target: boxes (N, 4) float32, labels (N,) int64, image_id."""
        r = self.record(image_id)
        return {
            "boxes": torch.as_tensor(r.boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(r.labels, dtype=torch.int64),
            "image_id": torch.tensor(image_id),
        }

    def image_labels(self, image_id: int) -> torch.Tensor:
        """(C,) float32 multi-hot vector of the classes present in the image."""
        out = torch.zeros(self.num_classes)
        labels = self.record(image_id).labels
        if len(labels):
            out[torch.as_tensor(labels) - 1] = 1.0
        return out

    def subset(self, ids: Iterable[int], name: str | None = None) -> "DetectionDataset":
        ids = list(ids)
        return DetectionDataset([self.record(i) for i in ids], self.class_names,
                                name or self.name, self.source)

    # ---------------------------------------------------------------- COCO out
    def to_coco(self, ids: Iterable[int] | None = None) -> dict[str, Any]:
        """Ground truth as a COCO dict (category ids 1..C, ``iscrowd`` 0).

        VOC ``difficult`` boxes are written with ``ignore: 1`` and ``iscrowd: 1`` so that
        pycocotools neither rewards nor penalises detections on them (VOC's rule).
        """
        ids = self.ids if ids is None else list(ids)
        images, anns = [], []
        ann_id = 1
        for i in ids:
            r = self.record(i)
            images.append({"id": int(i), "file_name": r.file_name, "width": int(r.width),
                           "height": int(r.height)})
            for box, label, diff in zip(r.boxes, r.labels, r.difficult):
                x1, y1, x2, y2 = (float(v) for v in box)
                anns.append({
                    "id": ann_id, "image_id": int(i), "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(bool(diff)), **({"ignore": 1} if diff else {}),
                })
                ann_id += 1
        cats = [{"id": c + 1, "name": n} for c, n in enumerate(self.class_names)]
        return {"images": images, "annotations": anns, "categories": cats}

    def export_coco(self, out_dir: str | Path, json_name: str = "annotations.json",
                    ids: Iterable[int] | None = None) -> Path:
        """Write images (PNG for in-memory images, copies otherwise) and a COCO json.

        Returns the json path. ``file_name`` entries are relative to ``out_dir/images``.
        """
        out_dir = Path(out_dir)
        img_dir = out_dir / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        coco = self.to_coco(ids)
        for im in coco["images"]:
            r = self.record(im["id"])
            dst = img_dir / r.file_name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if r.array is not None:
                Image.fromarray(r.array).save(dst)
            elif r.path is not None and r.path.resolve() != dst.resolve():
                shutil.copyfile(r.path, dst)
        json_path = out_dir / json_name
        coco["images_root"] = "images"
        json_path.write_text(json.dumps(coco))
        return json_path


class ClassificationDataset:
    """Images with one class label each (``ImageRecord.label`` in 0..C-1)."""

    task = "classification"

    def __init__(self, records: Sequence[ImageRecord], class_names: Sequence[str],
                 name: str = "dataset", source: str = "") -> None:
        self.name = name
        self.source = source
        self.class_names = list(class_names)
        self._records: dict[int, ImageRecord] = {}
        for r in records:
            if r.id in self._records:
                raise DatasetError(f"{source or name}: duplicate image id {r.id}")
            if r.label is None or not 0 <= r.label < len(self.class_names):
                raise DatasetError(f"{source or name}: image id {r.id} has invalid label {r.label!r}")
            self._records[r.id] = r

    ids = DetectionDataset.ids
    num_classes = DetectionDataset.num_classes
    __len__ = DetectionDataset.__len__
    __contains__ = DetectionDataset.__contains__
    record = DetectionDataset.record
    load_array = DetectionDataset.load_array
    load_image = DetectionDataset.load_image

    def num_boxes(self, image_id: int) -> int:
        """Annotation cost of a classification image: one label."""
        self.record(image_id)
        return 1

    def label(self, image_id: int) -> int:
        return int(self.record(image_id).label)  # type: ignore[arg-type]

    def subset(self, ids: Iterable[int], name: str | None = None) -> "ClassificationDataset":
        return ClassificationDataset([self.record(i) for i in ids], self.class_names,
                                     name or self.name, self.source)
