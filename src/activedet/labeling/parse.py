"""Read what annotators produced: a Label Studio JSON export or a COCO json.

Both parsers return the same thing: per image of the project's batches, pixel
``x1, y1, x2, y2`` boxes and labels ``1..C`` (classification: one class index), already
validated. Every problem is a :class:`DatasetError` naming the file and the task/image.

Rules (documented in the README):

- Label Studio: a task's annotation is its *latest non-cancelled* one (by ``updated_at``,
  then ``created_at``, then id). A task whose annotations are all cancelled (skipped) is
  not counted; a task without annotations is not labeled yet. An annotation with no
  boxes is a valid empty image. Boxes are percentages of the image (``0..100``); a box
  further than 0.5% outside the image, a rotated box, or a label the config does not
  know is an error.
- COCO: categories are matched by name. Every image listed is labeled (an image without
  annotations is an empty image), so export only the images you finished. Annotations
  carrying a ``score`` are model predictions (``batch.coco.json``), not labels: an error.
- Images are matched to the project by ``activedet_image_id`` (Label Studio task data,
  written by ``select``) or ``activedet_id`` (COCO); failing that, by path, then by file
  name (which must be unique in the project's batches).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs, unquote, urlparse

from activedet.data.base import check_box, frame_note
from activedet.errors import DatasetError
from activedet.files import read_json

#: percent coordinates may overshoot 0..100 by this much (rounding in the labeling tool)
PERCENT_TOLERANCE = 0.5


@dataclass
class Labeled:
    """One labeled image: boxes (pixels, xyxy) and labels (1..C; classification: [0..C-1])."""

    image_id: int
    boxes: list[list[float]]
    labels: list[int]
    where: str


@dataclass
class Parsed:
    kind: str  # "labelstudio" | "coco"
    items: list[Labeled] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # cancelled / skipped tasks
    unannotated: list[str] = field(default_factory=list)  # tasks nobody labeled yet


@dataclass
class ProjectView:
    """What a parser needs to know about the project."""

    uid: str
    task: str
    class_names: list[str]
    paths: Mapping[int, str]  # image id -> resolved path, every batch image of every round
    names: Mapping[int, str]  # image id -> name relative to the pool root
    size_of: Callable[[int], tuple[int, int]]  # image id -> (width, height) from the file, as shown

    def frame_note(self, width: Any, height: Any, image_id: int) -> str:
        """Why ``width x height`` differs from the image, when it is the stored frame of an
        image EXIF turns ('' otherwise)."""
        path = self.paths.get(image_id)
        return "" if path is None else frame_note(Path(path), width, height)


def parse_export(path: Path, view: ProjectView) -> Parsed:
    """Label Studio JSON (a list of tasks) or COCO (an object with ``images``)."""
    data = read_json(path)
    if isinstance(data, list):
        return parse_labelstudio(data, view, str(path))
    if isinstance(data, dict) and "images" in data:
        return parse_coco(data, view, str(path), path.parent)
    raise DatasetError(f"{path}: neither a Label Studio JSON export (a list of tasks) nor a COCO file "
                       f"(an object with 'images'); Label Studio's JSON-MIN and CSV exports are not supported")


class _Matcher:
    """Finds the project image an export entry refers to."""

    def __init__(self, view: ProjectView) -> None:
        self.view = view
        self.by_path = {p: i for i, p in view.paths.items()}
        self.by_name = {n: i for i, n in view.names.items()}
        base = Counter(os.path.basename(p) for p in view.paths.values())
        self.by_base = {os.path.basename(p): i for i, p in view.paths.items() if base[os.path.basename(p)] == 1}

    def by_id(self, image_id: Any, where: str) -> int:
        if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id not in self.view.paths:
            raise DatasetError(f"{where}: image id {image_id!r} is not in any batch of this project")
        return image_id

    def by_file(self, name: str, where: str, base_dir: Path | None = None) -> int:
        candidates = [name]
        if base_dir is not None and not os.path.isabs(name):
            candidates.append(os.path.join(base_dir, name))
        for c in candidates:
            if os.path.isabs(c):  # the path as listed (links kept), else the file it reaches
                hit = self.by_path.get(os.path.normpath(c), self.by_path.get(os.path.realpath(c)))
                if hit is not None:
                    return hit
        parts = Path(name).parts
        hit = None
        for k in range(len(parts)):  # "images/a/x.png" matches the pool name "a/x.png"
            hit = self.by_name.get("/".join(parts[k:]))
            if hit is not None:
                break
        if hit is None:
            hit = self.by_base.get(os.path.basename(name))
        if hit is None:
            raise DatasetError(f"{where}: image {name!r} is not in any batch of this project")
        return hit


# ---------------------------------------------------------------------------- Label Studio
def _url_name(url: str) -> str:
    """The file an image URL points to (``/data/local-files/?d=a/b.png`` -> ``a/b.png``)."""
    parsed = urlparse(url)
    if "d" in parse_qs(parsed.query):
        return unquote(parse_qs(parsed.query)["d"][0])
    return unquote(parsed.path)


def _latest(annotations: list[dict[str, Any]]) -> dict[str, Any] | None:
    live = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled", False)]
    if not live:
        return None
    return max(live, key=lambda a: (str(a.get("updated_at") or ""), str(a.get("created_at") or ""),
                                    a.get("id") if isinstance(a.get("id"), int) else 0))


def parse_labelstudio(tasks: list[Any], view: ProjectView, file: str) -> Parsed:
    out = Parsed("labelstudio")
    match = _Matcher(view)
    seen: dict[int, Labeled] = {}
    for k, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise DatasetError(f"{file}: entry #{k} is not a Label Studio task (an object with 'data')")
        where = f"{file}: task {task.get('id', f'#{k}')}"
        data = task["data"]
        proj = data.get("activedet_project")
        if proj is not None and proj != view.uid:
            raise DatasetError(f"{where}: exported from a different activedet project ({proj}; this "
                               f"project is {view.uid})")
        if "activedet_image_id" in data:
            image_id = match.by_id(data["activedet_image_id"], where)
        else:
            url = data.get("image")
            if not isinstance(url, str):
                raise DatasetError(f"{where}: task data has neither 'activedet_image_id' nor an 'image' URL")
            image_id = match.by_file(_url_name(url), where)
        where = f"{where} (image {view.names[image_id]})"
        anns = task.get("annotations") or []
        if not isinstance(anns, list):
            raise DatasetError(f"{where}: 'annotations' must be a list")
        ann = _latest(anns)
        if ann is None:
            (out.skipped if anns else out.unannotated).append(where)
            continue
        labeled = _ls_result(ann.get("result"), image_id, view, f"{where}, annotation {ann.get('id')}")
        prev = seen.get(image_id)
        if prev is not None:
            if (prev.boxes, prev.labels) != (labeled.boxes, labeled.labels):
                raise DatasetError(f"{where}: image also labeled differently in {prev.where}")
            continue
        seen[image_id] = labeled
        out.items.append(labeled)
    return out


def _ls_result(result: Any, image_id: int, view: ProjectView, where: str) -> Labeled:
    if not isinstance(result, list):
        raise DatasetError(f"{where}: 'result' must be a list, got {type(result).__name__}")
    width, height = view.size_of(image_id)
    boxes: list[list[float]] = []
    labels: list[int] = []
    choices: list[int] = []
    for j, item in enumerate(result):
        here = f"{where}, result #{j}"
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise DatasetError(f"{here}: not a result object with a 'value'")
        kind, value = item.get("type"), item["value"]
        if kind == "rectanglelabels" and view.task == "detection":
            box, label = _ls_box(item, value, width, height, view, here, image_id)
            boxes.append(box)
            labels.append(label)
        elif kind == "choices" and view.task == "classification":
            names = value.get("choices")
            if not isinstance(names, list) or len(names) != 1:
                raise DatasetError(f"{here}: expected exactly one chosen class, got {names!r}")
            choices.append(_class_index(names[0], view, here))
        else:
            raise DatasetError(f"{here}: result type {kind!r} does not fit a {view.task} project "
                               f"(expected {'rectanglelabels' if view.task == 'detection' else 'choices'})")
    if view.task == "classification":
        if len(choices) != 1:
            raise DatasetError(f"{where}: a classification annotation needs exactly one class, got {len(choices)}")
        return Labeled(image_id, [], choices, where)
    return Labeled(image_id, boxes, labels, where)


def _ls_box(item: dict[str, Any], value: dict[str, Any], width: int, height: int, view: ProjectView,
            here: str, image_id: int) -> tuple[list[float], int]:
    for key, actual in (("original_width", width), ("original_height", height)):
        if item.get(key) is not None and item[key] != actual:
            raise DatasetError(f"{here}: {key}={item[key]!r} but the image is {width}x{height}" + view.frame_note(
                item.get("original_width"), item.get("original_height"), image_id))
    nums = {}
    for key in ("x", "y", "width", "height"):
        v = value.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise DatasetError(f"{here}: '{key}' must be a number (percent), got {v!r}")
        nums[key] = float(v)
    if abs(float(value.get("rotation") or 0.0)) > 1e-6:
        raise DatasetError(f"{here}: rotated box (rotation {value.get('rotation')}) cannot be a detection target")
    x, y, w, h = nums["x"], nums["y"], nums["width"], nums["height"]
    tol = PERCENT_TOLERANCE
    if (x < -tol or y < -tol or w <= 0 or h <= 0 or x + w > 100 + tol or y + h > 100 + tol):
        raise DatasetError(f"{here}: percent coordinates out of range (x={x:g}, y={y:g}, width={w:g}, "
                           f"height={h:g}; each in 0..100)")
    names = value.get("rectanglelabels")
    if not isinstance(names, list) or len(names) != 1:
        raise DatasetError(f"{here}: a box needs exactly one label, got {names!r}")
    label = _class_index(names[0], view, here) + 1
    x1, y1 = max(0.0, x * width / 100), max(0.0, y * height / 100)
    x2, y2 = min(float(width), (x + w) * width / 100), min(float(height), (y + h) * height / 100)
    box = check_box([x1, y1, x2, y2], width, height, here)
    return [float(v) for v in box], label


def _class_index(name: Any, view: ProjectView, here: str) -> int:
    if name not in view.class_names:
        raise DatasetError(f"{here}: unknown label {name!r} (known: {', '.join(view.class_names)})")
    return view.class_names.index(name)


# ---------------------------------------------------------------------------- COCO
def parse_coco(data: dict[str, Any], view: ProjectView, file: str, base_dir: Path) -> Parsed:
    out = Parsed("coco")
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    proj = info.get("activedet_project")
    if proj is not None and proj != view.uid:
        raise DatasetError(f"{file}: exported from a different activedet project ({proj}; this project is {view.uid})")
    cats = _coco_categories(data, view, file)
    images = _coco_images(data, view, file, base_dir)
    per_image = _coco_annotations(data, view, file, cats, images)
    _add_coco_images(out, images, per_image, view)
    return out


def _coco_categories(data: dict[str, Any], view: ProjectView, file: str) -> dict[int, int]:
    """COCO category id -> the project's class index."""
    cats: dict[int, int] = {}
    for c in _list(data, "categories", file):
        if not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise DatasetError(f"{file}: category {c!r} needs an integer 'id' and a 'name'")
        cats[c["id"]] = _class_index(c["name"], view, f"{file}: category id {c['id']}")
    return cats


def _coco_images(data: dict[str, Any], view: ProjectView, file: str, base_dir: Path) -> dict[int, tuple[int, str]]:
    """COCO image id -> (project image id, where), each image matched by ``activedet_id``
    or file name and its recorded size checked against the project's."""
    match = _Matcher(view)
    images: dict[int, tuple[int, str]] = {}
    for im in _list(data, "images", file):
        cid = im.get("id")
        where = f"{file}: image id {cid}"
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise DatasetError(f"{where}: missing or non-integer 'id'")
        if cid in images:
            raise DatasetError(f"{file}: duplicate image id {cid}")
        if "activedet_id" in im:
            pid = match.by_id(im["activedet_id"], where)
        else:
            name = im.get("file_name")
            if not isinstance(name, str) or not name:
                raise DatasetError(f"{where}: missing 'file_name'")
            pid = match.by_file(name, where, base_dir)
        width, height = view.size_of(pid)
        for key, actual in (("width", width), ("height", height)):
            if im.get(key) is not None and im[key] != actual:
                raise DatasetError(f"{where}: {key}={im[key]!r} but {view.names[pid]} is {width}x{height}"
                                   + view.frame_note(im.get("width"), im.get("height"), pid))
        images[cid] = (pid, f"{where} ({view.names[pid]})")
    return images


def _coco_annotations(data: dict[str, Any], view: ProjectView, file: str, cats: dict[int, int],
                      images: dict[int, tuple[int, str]]) -> dict[int, list[tuple[list[float], int]]]:
    """COCO image id -> its (box [x1, y1, x2, y2] in pixels, label) pairs; boxes are ``[]``
    and labels class indices for classification, labels ``1..C`` for detection."""
    per_image: dict[int, list[tuple[list[float], int]]] = {cid: [] for cid in images}
    for ann in _list(data, "annotations", file, required=False):
        here = f"{file}: annotation id {ann.get('id')}"
        if "score" in ann:
            raise DatasetError(f"{here} carries a 'score': these are model predictions (batch.coco.json), "
                               f"not labels")
        cid = ann.get("image_id")
        if cid not in images:
            raise DatasetError(f"{here}: unknown image_id {cid!r}")
        if ann.get("category_id") not in cats:
            raise DatasetError(f"{here}: unknown category_id {ann.get('category_id')!r}")
        label = cats[ann["category_id"]]
        pid = images[cid][0]
        if view.task == "classification":
            per_image[cid].append(([], label))
            continue
        bbox = ann.get("bbox")
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            raise DatasetError(f"{here}: 'bbox' must be [x, y, w, h] numbers, got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        width, height = view.size_of(pid)
        box = check_box([x, y, x + w, y + h], width, height, f"{here} ({view.names[pid]})")
        per_image[cid].append(([float(v) for v in box], label + 1))
    return per_image


def _add_coco_images(out: Parsed, images: dict[int, tuple[int, str]],
                     per_image: dict[int, list[tuple[list[float], int]]], view: ProjectView) -> None:
    """Each image's labels into ``out.items`` (an unlabeled classification image into
    ``out.unannotated``); one project image listed twice is a DatasetError."""
    seen: dict[int, Labeled] = {}
    for cid, (pid, where) in images.items():
        entries = per_image[cid]
        if view.task == "classification":
            classes = sorted({lab for _, lab in entries})
            if not classes:
                out.unannotated.append(where)
                continue
            if len(classes) != 1:
                raise DatasetError(f"{where}: a classification image needs one category, got "
                                   f"{[view.class_names[c] for c in classes]}")
            labeled = Labeled(pid, [], classes, where)
        else:
            labeled = Labeled(pid, [b for b, _ in entries], [lab for _, lab in entries], where)
        if pid in seen:
            raise DatasetError(f"{where}: the same image is listed again as {seen[pid].where}")
        seen[pid] = labeled
        out.items.append(labeled)


def _list(data: dict[str, Any], key: str, file: str, required: bool = True) -> list[dict[str, Any]]:
    if key not in data:
        if required:
            raise DatasetError(f"{file}: missing required key '{key}'")
        return []
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise DatasetError(f"{file}: '{key}' must be a list of objects")
    return value
