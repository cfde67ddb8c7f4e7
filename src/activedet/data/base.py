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
from PIL import Image, ImageOps

from activedet.errors import DatasetError


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


#: the crowd regions of an image without any, shared by every such record (read-only): a
#: pool of a million images would otherwise hold two million empty arrays (~340 B per image)
NO_CROWD_BOXES = _frozen(np.zeros((0, 4), np.float32))
NO_CROWD_LABELS = _frozen(np.zeros((0,), np.int64))


@dataclass
class ImageRecord:
    """One image and its ground truth.

    boxes: (N, 4) float32, absolute pixel ``x1, y1, x2, y2`` (continuous coordinates:
    pixel ``i`` covers ``[i, i + 1)``); labels: (N,) int64 in 1..C;
    difficult: (N,) bool (VOC's flag; all False elsewhere).
    crowd_boxes: (M, 4) float32 and crowd_labels: (M,) int64 hold COCO ``iscrowd``
    regions. They are *not* training targets (not in ``boxes``, not counted as labeling
    cost); they are kept only so that evaluation can ignore detections on them.
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
    crowd_boxes: np.ndarray = field(default_factory=lambda: NO_CROWD_BOXES)
    crowd_labels: np.ndarray = field(default_factory=lambda: NO_CROWD_LABELS)

    def __post_init__(self) -> None:
        if self.difficult is None:
            self.difficult = np.zeros((len(self.labels),), dtype=bool)


#: EXIF orientations (tag 0x0112) under which the stored pixels are shown turned by 90
#: degrees: width and height swap between the file and what people (and Label Studio) see
TURNED = frozenset({5, 6, 7, 8})


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation of an open image (1: as stored), read from its header."""
    try:
        value = im.getexif().get(0x0112, 1)
        return int(value) if value in range(1, 9) else 1
    except Exception:  # a damaged EXIF block: the pixels are shown as stored
        return 1


#: modes whose values do not fit 8 bits: scaled to 0..255 from their full range
WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


def to_rgb(im: Image.Image, path: Path, who: str) -> np.ndarray:
    """Any mode PIL opens as (H, W, 3) uint8 RGB with its full range kept: 16-bit and
    integer grayscale scaled from 0..65535, float from 0..1; others refused by name."""
    if im.mode in WIDE_MODES:
        a = np.asarray(im, dtype=np.float64)
        top = 1.0 if im.mode == "F" else 65535.0
        if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > top):
            raise DatasetError(f"cannot read image {path}{who}: mode {im.mode} with values "
                               f"{a.min():g}..{a.max():g} outside 0..{top:g}; convert it to 8-bit RGB")
        g = np.rint(a * (255.0 / top)).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    return np.array(im.convert("RGB"))  # writable (torch.from_numpy needs it)


def read_image_rgb(path: Path, image_id: int | str | None = None) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB in the frame people see it: EXIF
    orientation applied (phones store a portrait photo as landscape pixels plus a tag, and
    browsers, hence Label Studio, show it turned); any mode converted with its full range.

    Raises :class:`DatasetError` naming the file (and image id) when it cannot be read.
    """
    who = f" (image id {image_id})" if image_id is not None else ""
    try:
        with Image.open(path) as im:
            shown = ImageOps.exif_transpose(im) if exif_orientation(im) != 1 else im
            return to_rgb(shown, Path(path), who)
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read image {path}{who}: {e}") from None


def frame_note(path: Path, width: Any, height: Any) -> str:
    """'' unless ``(width, height)`` is the *stored* frame of an image that EXIF turns: then
    a sentence saying so and what to do (for messages about a size that does not match)."""
    try:
        with Image.open(path) as im:
            o, (w, h) = exif_orientation(im), im.size
    except (OSError, ValueError):
        return ""
    if o in TURNED and (width, height) == (w, h):
        return (f" ({width}x{height} is how the file stores its pixels; its EXIF orientation {o} shows it as "
                f"{h}x{w}, as labeling tools and browsers do, and activedet uses that frame: write width, height "
                f"and boxes in the frame the image is shown in)")
    return ""


def category_ids(dataset: Any) -> list[int]:
    """The category id of each label 1..C in the user's own files (a COCO file's ids, e.g.
    3, 7, 42), else 1..C: what files written back to the user carry."""
    own = getattr(dataset, "category_ids", None)
    return list(own) if own is not None else list(range(1, len(dataset.class_names) + 1))


class DetectionDataset:
    """Images with boxes, indexed by image id."""

    task = "detection"

    def __init__(self, records: Sequence[ImageRecord], class_names: Sequence[str],
                 name: str = "dataset", source: str = "", category_ids: Sequence[int] | None = None) -> None:
        self.name = name
        self.source = source
        self.class_names = list(class_names)
        self.category_ids = None if category_ids is None else list(category_ids)  # the file's own, per label
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
        return DetectionDataset([self.record(i) for i in ids], self.class_names, name or self.name, self.source,
                                self.category_ids)

    # ---------------------------------------------------------------- COCO out
    def to_coco(self, ids: Iterable[int] | None = None) -> dict[str, Any]:
        """Ground truth as a standard COCO dict (category ids 1..C).

        VOC ``difficult`` boxes are written with ``iscrowd: 1, ignore: 1, difficult: 1`` so
        that pycocotools neither rewards nor penalises detections on them (VOC's rule) and
        :func:`activedet.data.coco.load_coco` reads them back as difficult boxes. Crowd
        regions (``crowd_boxes``) are written with ``iscrowd: 1``.
        """
        ids = self.ids if ids is None else list(ids)
        images, anns = [], []
        ann_id = 1

        def ann(i: int, box: np.ndarray, label: int, extra: dict[str, int]) -> dict[str, Any]:
            x1, y1, x2, y2 = (float(v) for v in box)
            return {"id": ann_id, "image_id": int(i), "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0, **extra}

        for i in ids:
            r = self.record(i)
            images.append({"id": int(i), "file_name": r.file_name, "width": int(r.width),
                           "height": int(r.height)})
            for box, label, diff in zip(r.boxes, r.labels, r.difficult):
                extra = {"iscrowd": 1, "ignore": 1, "difficult": 1} if diff else {}
                anns.append(ann(i, box, label, extra))
                ann_id += 1
            for box, label in zip(r.crowd_boxes, r.crowd_labels):
                anns.append(ann(i, box, label, {"iscrowd": 1}))
                ann_id += 1
        cats = [{"id": c + 1, "name": n} for c, n in enumerate(self.class_names)]
        return {"images": images, "annotations": anns, "categories": cats}

    def export_coco(self, out_dir: str | Path, json_name: str = "annotations.json",
                    ids: Iterable[int] | None = None) -> Path:
        """Write images under ``out_dir/images/`` and a standard COCO json in ``out_dir``.

        In-memory images are saved as PNG, on-disk images are copied byte for byte.
        ``file_name`` entries are relative to the json's directory (``images/000001.png``),
        so ``load_coco(returned_path)`` reads the same ids, boxes and labels back.
        Returns the json path.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        coco = self.to_coco(ids)
        used: set[str] = set()
        for im in coco["images"]:
            r = self.record(im["id"])
            rel = _export_name(r)
            if rel.lower() in used:  # two sources with one name: disambiguate by id
                head, _, tail = rel.rpartition("/")
                rel = f"{head}/{r.id}_{tail}"
            used.add(rel.lower())
            dst = out_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if r.array is not None:
                Image.fromarray(np.ascontiguousarray(r.array)).save(dst)
            elif r.path is not None:
                if not dst.exists() or r.path.resolve() != dst.resolve():
                    shutil.copyfile(r.path, dst)
            else:
                raise DatasetError(f"{self.name}: image id {r.id} has neither a path nor pixels")
            im["file_name"] = rel
        json_path = out_dir / json_name
        json_path.write_text(json.dumps(coco))
        return json_path


def _export_name(r: ImageRecord) -> str:
    """Relative path (posix) an image is exported to: ``images/<file_name>``.

    Absolute or ``..`` parts are dropped; a suffix matching the source file (``.png`` for
    in-memory pixels, saved losslessly) is appended when ``file_name`` lacks it (VOC stems).
    """
    parts = [p for p in Path(r.file_name).parts if p not in ("..", ".", "/") and not Path(p).anchor]
    rel = Path(*parts) if parts else Path(f"{r.id:06d}")
    if rel.parts[0] != "images":
        rel = Path("images") / rel
    want = r.path.suffix if (r.array is None and r.path is not None) else ".png"
    if want and rel.suffix.lower() != want.lower():
        rel = rel.with_name(rel.name + want)
    return rel.as_posix()


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


#: Boxes may overflow the image border by at most this many pixels; they are clipped.
BORDER_TOLERANCE = 2.0


def check_box(box: Sequence[float], width: int, height: int, where: str) -> np.ndarray:
    """Validate one ``x1, y1, x2, y2`` pixel box against a ``width`` x ``height`` image.

    Returns the box as (4,) float32, clipped to the image when it overflows the border by
    at most :data:`BORDER_TOLERANCE` pixels. Raises :class:`DatasetError` prefixed by
    ``where`` (which names the file and the id) for non-finite values, non-positive
    width/height, or a box lying further outside the image.
    """
    b = np.asarray(box, dtype=np.float64)
    if b.shape != (4,) or not np.all(np.isfinite(b)):
        raise DatasetError(f"{where}: box {list(box)} is not 4 finite numbers")
    x1, y1, x2, y2 = b
    if x2 <= x1 or y2 <= y1:
        raise DatasetError(f"{where}: box has non-positive width/height "
                           f"(w={x2 - x1:g}, h={y2 - y1:g}, xyxy={b.tolist()})")
    tol = BORDER_TOLERANCE + 1e-6
    clipped = np.array([max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)])
    if (x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol
            or clipped[2] <= clipped[0] or clipped[3] <= clipped[1]):
        raise DatasetError(f"{where}: box xyxy={b.tolist()} lies outside the "
                           f"{width}x{height} image (more than {BORDER_TOLERANCE:g} px)")
    return clipped.astype(np.float32)


def image_size(path: Path, where: str) -> tuple[int, int]:
    """(width, height) of an image file from its header (no pixel decoding), in the frame
    it is shown in (EXIF orientation applied, as :func:`read_image_rgb` does).

    Raises :class:`DatasetError` prefixed by ``where`` if it is missing or unreadable.
    """
    if not path.is_file():
        raise DatasetError(f"{where}: image file not found: {path}")
    try:
        with Image.open(path) as im:
            if exif_orientation(im) in TURNED:  # the frame the image is shown (and used) in
                return int(im.height), int(im.width)
            return int(im.width), int(im.height)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{where}: cannot read image {path}: {e}") from None
