"""Load a COCO detection json into a :class:`DetectionDataset`, validating it on the way.

Conventions:

- image paths are ``file_name`` resolved against ``images_root`` (default: the json's
  directory); each image's header is opened (no pixel decoding) to check it exists and
  is readable, and to read width/height when the json omits them;
- category ids map to contiguous labels ``1..C`` in sorted category-id order;
  ``class_names`` are the category names in that order;
- ``bbox`` is ``[x, y, w, h]`` in pixels; boxes overflowing the image by at most
  2 px are clipped, further out is an error;
- ``iscrowd: 1`` annotations are **not** training targets: they go to
  ``ImageRecord.crowd_boxes`` (kept for evaluation only), unless they also carry
  ``difficult: 1`` (written by :meth:`DetectionDataset.to_coco` for VOC difficult boxes),
  in which case they are read back as regular boxes flagged difficult;
- images without annotations are valid (empty targets).

Every problem raises :class:`DatasetError` with a one-line message naming the json file
and the offending image/annotation/category id.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from activedet.data.base import (NO_CROWD_BOXES, NO_CROWD_LABELS, DetectionDataset, ImageRecord, check_box,
                                 frame_note, image_size)
from activedet.errors import DatasetError
from activedet.files import read_json


def load_coco(json_path: str | Path, images_root: str | Path | None = None,
              name: str | None = None) -> DetectionDataset:
    """Read a COCO json file; returns a dataset keyed by the COCO image ids."""
    json_path = Path(json_path)
    data = _read_json(json_path)
    root = Path(images_root) if images_root is not None else json_path.parent
    where = str(json_path)

    label_of, class_names = _categories(data, where)
    images: dict[int, dict[str, Any]] = {}
    for im in _entries(data, "images", where):
        iid = _int_field(im, "id", f"{where}: image", where)
        if iid in images:
            raise DatasetError(f"{where}: duplicate image id {iid}")
        images[iid] = im
    sizes = {iid: _image_size(im, iid, root, where) for iid, im in images.items()}
    per_image = _boxes_per_image(data, where, sizes, label_of)
    records = [_record(iid, im, sizes[iid], per_image.get(iid, []), root) for iid, im in images.items()]
    _refuse_one_file_twice(records, where)
    return DetectionDataset(records, class_names, name or json_path.stem, source=where, category_ids=sorted(label_of))


#: one annotation: (box [x1, y1, x2, y2] in pixels, label 1..C, difficult, crowd)
_Box = tuple[np.ndarray, int, bool, bool]


def _categories(data: dict[str, Any], where: str) -> tuple[dict[int, int], list[str]]:
    """(category id -> label 1..C in sorted id order, the class names in that order)."""
    cat_ids = []
    cat_names: dict[int, str] = {}
    for cat in _entries(data, "categories", where):
        cid = _int_field(cat, "id", f"{where}: category", where)
        if cid in cat_names:
            raise DatasetError(f"{where}: duplicate category id {cid}")
        cname = cat.get("name")
        if not isinstance(cname, str):
            raise DatasetError(f"{where}: category id {cid} has no 'name' string")
        cat_names[cid] = cname
        cat_ids.append(cid)
    label_of = {cid: k + 1 for k, cid in enumerate(sorted(cat_ids))}
    return label_of, [cat_names[cid] for cid in sorted(cat_ids)]


def _boxes_per_image(data: dict[str, Any], where: str, sizes: dict[int, tuple[int, int]],
                     label_of: dict[int, int]) -> dict[int, list[_Box]]:
    """Image id -> its checked annotations (images are the keys of ``sizes``: id -> (w, h))."""
    per_image: dict[int, list[_Box]] = defaultdict(list)
    seen_ann: set[int] = set()
    anns = _entries(data, "annotations", where) if "annotations" in data else []
    for ann in anns:
        aid = _int_field(ann, "id", f"{where}: annotation", where)
        if aid in seen_ann:
            raise DatasetError(f"{where}: duplicate annotation id {aid}")
        seen_ann.add(aid)
        here = f"{where}: annotation id {aid}"
        iid = _int_field(ann, "image_id", here, where)
        if iid not in sizes:
            raise DatasetError(f"{here}: unknown image_id {iid}")
        cid = _int_field(ann, "category_id", here, where)
        if cid not in label_of:
            raise DatasetError(f"{here}: unknown category_id {cid}")
        bbox = ann.get("bbox")
        if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            raise DatasetError(f"{here}: 'bbox' must be [x, y, w, h] numbers, got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        width, height = sizes[iid]
        box = check_box([x, y, x + w, y + h], width, height, f"{here} (image id {iid})")
        difficult = _flag(ann, "difficult", here)
        crowd = _flag(ann, "iscrowd", here) and not difficult
        per_image[iid].append((box, label_of[cid], difficult, crowd))
    return per_image


def _refuse_one_file_twice(records: list[ImageRecord], where: str) -> None:
    """One image file under two image ids (the same name twice, or two names of which one is
    a link to the other) would be trained on twice: name both and stop."""
    seen: dict[str, ImageRecord] = {}
    for r in records:
        if r.path is None:
            continue
        real = os.path.realpath(r.path)
        first = seen.setdefault(real, r)
        if first is not r:
            raise DatasetError(f"{where}: image ids {first.id} ({first.file_name}) and {r.id} ({r.file_name}) are "
                               f"the same file {real}; keep one of them")


def _record(iid: int, im: dict[str, Any], size: tuple[int, int], items: list[_Box], root: Path) -> ImageRecord:
    """One image's record: its training targets, and its crowd boxes apart (evaluation only)."""
    width, height = size
    train = [t for t in items if not t[3]]
    crowd = [t for t in items if t[3]]
    return ImageRecord(
        id=iid, file_name=im["file_name"], width=width, height=height,
        boxes=_stack([t[0] for t in train]),
        labels=np.array([t[1] for t in train], dtype=np.int64),
        difficult=np.array([t[2] for t in train], dtype=bool),
        path=root / im["file_name"],
        crowd_boxes=_stack([t[0] for t in crowd]) if crowd else NO_CROWD_BOXES,
        crowd_labels=np.array([t[1] for t in crowd], dtype=np.int64) if crowd else NO_CROWD_LABELS,
    )


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json(path, "COCO file ")
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: a COCO file must hold a JSON object, got {type(data).__name__}")
    return data


def _entries(data: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    """``data[key]`` as a list of objects; a missing key or wrong type is an error."""
    if key not in data:
        raise DatasetError(f"{where}: missing required key '{key}'")
    value = data[key]
    if not isinstance(value, list):
        raise DatasetError(f"{where}: '{key}' must be a list, got {type(value).__name__}")
    for k, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise DatasetError(f"{where}: '{key}' entry #{k} must be an object, got {entry!r}")
    return value


def _int_field(entry: dict[str, Any], key: str, here: str, where: str) -> int:
    value = entry.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        shown = repr({k: entry[k] for k in list(entry)[:4]})[:120]
        raise DatasetError(f"{here}: missing or non-integer '{key}' ({value!r}) in {shown}")
    if not -2 ** 63 <= value < 2 ** 63:  # ids become int64 tensors (torchvision targets)
        raise DatasetError(f"{here}: '{key}' {value} does not fit in 64 bits")
    return value


def _flag(ann: dict[str, Any], key: str, here: str) -> bool:
    """A 0/1 flag (``iscrowd``, ``difficult``); absent is 0. Anything else is an error, not
    a truthy value: ``"0"`` read as true would silently drop a training box."""
    value = ann.get(key, 0)
    if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
        return bool(value)
    raise DatasetError(f"{here}: '{key}' must be 0 or 1, got {value!r}")


def _image_size(im: dict[str, Any], iid: int, root: Path, where: str) -> tuple[int, int]:
    """(width, height) from the file header; checked against the json when it has them."""
    file_name = im.get("file_name")
    here = f"{where}: image id {iid}"
    if not isinstance(file_name, str) or not file_name:
        raise DatasetError(f"{here}: missing 'file_name'")
    width, height = image_size(root / file_name, here)
    for key, actual in (("width", width), ("height", height)):
        if key in im and im[key] is not None and im[key] != actual:
            raise DatasetError(f"{here}: json says {key}={im[key]!r} but {file_name} has {actual}"
                               + frame_note(root / file_name, im.get("width"), im.get("height")))
    return width, height


def _stack(boxes: list[np.ndarray]) -> np.ndarray:
    """(N, 4) float32 (``(0, 4)`` when empty)."""
    return np.stack(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32)
