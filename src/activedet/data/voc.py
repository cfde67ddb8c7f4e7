"""Load Pascal VOC style XML annotations into a :class:`DetectionDataset`.

Two layouts:

- ``voc``: ``ROOT/Annotations/*.xml``, ``ROOT/JPEGImages/*``,
  ``ROOT/ImageSets/Main/{split}.txt`` (if the split file is missing, every annotation
  file is used);
- ``paired``: one folder holding ``NAME.xml`` next to ``NAME.png|jpg|...`` (the layout of
  the ``deepforest`` package's data folder). Only stems that have an ``.xml`` are used.

Image ids are ``1..N`` in order of the sorted stems of *all* annotation files, so an
image keeps its id whichever split it is loaded through; ``file_name`` is the stem.
VOC pixel coordinates are 1-based and inclusive; they become 0-based continuous
``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` (detectron2's convention).
``difficult`` boxes are kept and flagged in ``ImageRecord.difficult``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from activedet.data.base import DetectionDataset, ImageRecord, check_box, image_size
from activedet.errors import DatasetError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

#: Image suffixes searched for a stem, in order of preference (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

_Object = tuple[str, list[float], bool]  # class name, VOC xmin/ymin/xmax/ymax, difficult


def load_voc(root: str | Path, split: str = "trainval", class_names: Sequence[str] | None = None,
             layout: str = "auto", name: str | None = None) -> DetectionDataset:
    """Read a VOC directory (``layout="voc"``) or a folder of paired files (``"paired"``).

    ``layout="auto"`` picks ``voc`` when ``ROOT/Annotations`` exists, else ``paired`` when
    the folder holds ``.xml`` files. ``split`` is ignored for the paired layout.
    ``class_names``: label ``c`` is ``class_names[c - 1]``; default: the 20 VOC classes when
    every name found is one of them, else the sorted set of names found.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"VOC dataset folder not found: {root}")
    layout = _resolve_layout(root, layout)
    ann_dir = root / "Annotations" if layout == "voc" else root
    img_dir = root / "JPEGImages" if layout == "voc" else root
    all_stems = sorted(p.stem for p in ann_dir.glob("*.xml"))
    if not all_stems:
        raise DatasetError(f"no .xml annotation files in {ann_dir}")
    id_of = {stem: k + 1 for k, stem in enumerate(all_stems)}
    stems = _split_stems(root, split, id_of) if layout == "voc" else all_stems
    images = _images_by_stem(img_dir)

    parsed: list[tuple[str, Path, int, int, list[_Object]]] = []
    for stem in stems:
        xml_path = ann_dir / f"{stem}.xml"
        here = f"{xml_path}: image id {id_of[stem]}"
        tag_name, size, objects = _parse_xml(xml_path, here)
        img_path = _find_image(stem, tag_name, images, img_dir, here)
        width, height = image_size(img_path, here)
        if size is not None and size != (width, height):
            raise DatasetError(f"{here}: XML size {size[0]}x{size[1]} differs from image "
                               f"{img_path.name} ({width}x{height})")
        parsed.append((stem, img_path, width, height, objects))

    found = {obj[0] for *_, objects in parsed for obj in objects}
    if class_names is None:
        class_names = list(VOC_CLASSES) if found <= set(VOC_CLASSES) else sorted(found)
    label_of = {n: k + 1 for k, n in enumerate(class_names)}

    records = []
    for stem, img_path, width, height, objects in parsed:
        iid = id_of[stem]
        xml_path = ann_dir / f"{stem}.xml"
        boxes, labels, difficult = [], [], []
        for k, (cname, (xmin, ymin, xmax, ymax), diff) in enumerate(objects):
            here = f"{xml_path}: image id {iid} object #{k} ({cname})"
            if cname not in label_of:
                raise DatasetError(f"{here}: class '{cname}' is not in class_names {list(class_names)}")
            boxes.append(check_box([xmin - 1.0, ymin - 1.0, xmax, ymax], width, height, here))
            labels.append(label_of[cname])
            difficult.append(diff)
        records.append(ImageRecord(
            id=iid, file_name=stem, width=width, height=height,
            boxes=np.stack(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32),
            labels=np.array(labels, dtype=np.int64), difficult=np.array(difficult, dtype=bool),
            path=img_path,
        ))
    default_name = root.name if layout == "paired" else f"{root.name}-{split}"
    return DetectionDataset(records, class_names, name or default_name, source=str(root))


def _resolve_layout(root: Path, layout: str) -> str:
    if layout not in ("auto", "voc", "paired"):
        raise DatasetError(f"unknown VOC layout {layout!r} (use auto, voc or paired)")
    if layout != "auto":
        if layout == "voc" and not (root / "Annotations").is_dir():
            raise DatasetError(f"{root} has no Annotations/ folder")
        return layout
    if (root / "Annotations").is_dir():
        return "voc"
    if any(root.glob("*.xml")):
        return "paired"
    raise DatasetError(f"{root} is neither a VOC folder (Annotations/) nor a folder of .xml files")


def _split_stems(root: Path, split: str, id_of: dict[str, int]) -> list[str]:
    """Stems listed in ``ImageSets/Main/{split}.txt`` (all stems if that file is missing)."""
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        return sorted(id_of)
    stems = []
    for line_no, line in enumerate(split_file.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if tokens[0] not in id_of:
            raise DatasetError(f"{split_file}: line {line_no}: image '{tokens[0]}' has no "
                               f"annotation file in {root / 'Annotations'}")
        stems.append(tokens[0])
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise DatasetError(f"{split_file}: image '{dup}' (id {id_of[dup]}) is listed twice")
    return sorted(stems)


def _images_by_stem(img_dir: Path) -> dict[str, list[Path]]:
    """Image files of a folder grouped by stem, best suffix first (see IMAGE_SUFFIXES)."""
    out: dict[str, list[Path]] = {}
    if not img_dir.is_dir():
        return out
    with os.scandir(img_dir) as it:
        for entry in it:
            p = Path(entry.path)
            if p.suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                out.setdefault(p.stem, []).append(p)
    for files in out.values():
        files.sort(key=lambda p: (IMAGE_SUFFIXES.index(p.suffix.lower()), p.name))
    return out


def _find_image(stem: str, tag_name: str | None, images: dict[str, list[Path]],
                img_dir: Path, here: str) -> Path:
    if stem in images:
        return images[stem][0]
    if tag_name and (img_dir / tag_name).is_file():
        return img_dir / tag_name
    raise DatasetError(f"{here}: image file not found: no {stem}.jpg/.png (or "
                       f"{tag_name or 'a <filename>'}) in {img_dir}")


def _parse_xml(xml_path: Path, here: str) -> tuple[str | None, tuple[int, int] | None, list[_Object]]:
    """(<filename>, (width, height) or None when absent/zero, objects) of one XML file."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{here}: malformed XML: {e}") from None
    except OSError as e:
        raise DatasetError(f"{here}: cannot read annotation: {e.strerror or e}") from None
    if root.tag != "annotation":
        raise DatasetError(f"{here}: root element is <{root.tag}>, expected <annotation>")
    size = None
    w_txt, h_txt = root.findtext("size/width"), root.findtext("size/height")
    if w_txt is not None and h_txt is not None:
        try:
            w, h = int(float(w_txt)), int(float(h_txt))
        except (ValueError, OverflowError):  # 'abc', 'nan', 'inf'

            raise DatasetError(f"{here}: bad <size> width={w_txt!r} height={h_txt!r}") from None
        size = (w, h) if w > 0 and h > 0 else None
    objects: list[_Object] = []
    for k, obj in enumerate(root.findall("object")):
        cname = (obj.findtext("name") or "").strip()
        if not cname:
            raise DatasetError(f"{here} object #{k}: missing <name>")
        coords = []
        for key in ("xmin", "ymin", "xmax", "ymax"):
            txt = obj.findtext(f"bndbox/{key}")
            try:
                coords.append(float(txt))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise DatasetError(f"{here} object #{k} ({cname}): bad or missing "
                                   f"bndbox/{key} ({txt!r})") from None
        diff_txt = (obj.findtext("difficult") or "0").strip()
        if diff_txt not in ("0", "1"):
            raise DatasetError(f"{here} object #{k} ({cname}): <difficult> must be 0 or 1, got {diff_txt!r}")
        objects.append((cname, coords, diff_txt == "1"))
    return root.findtext("filename"), size, objects
