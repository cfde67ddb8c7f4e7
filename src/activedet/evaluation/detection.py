"""COCO-style detection metrics (bbox AP/AR) computed with pycocotools.

Ground truth is a COCO annotation dict (``images``, ``annotations``, ``categories``);
detections are COCO results entries ``{"image_id", "category_id", "bbox": [x, y, w, h],
"score"}`` with boxes in pixels. Metrics are fractions in [0, 1]; ``-1.0`` is
pycocotools' marker for a metric that is undefined because no ground truth falls in
its range (e.g. ``APs`` when the dataset holds no small object).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from activedet.errors import DatasetError

__all__ = [
    "STAT_KEYS",
    "coco_metrics",
    "evaluate_files",
    "detections_to_coco",
    "format_metrics",
]

#: Names of ``COCOeval.stats`` entries, in pycocotools' order.
STAT_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


def _is_number(value: Any) -> bool:
    """True for a finite int/float (bools excluded)."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _check_bbox(bbox: Any, what: str) -> list[float]:
    """Validate a COCO ``[x, y, w, h]`` box; ``what`` names its owner in errors."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise DatasetError(f"{what}: bbox must be [x, y, w, h] with 4 finite numbers, got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise DatasetError(
            f"{what}: bbox {list(bbox)!r} has negative width/height; "
            "expected COCO [x, y, w, h], not [x1, y1, x2, y2]"
        )
    return [x, y, w, h]


def _prepare_gt(gt: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a COCO GT dict and return a normalised copy pycocotools can evaluate.

    Missing ``info``/``licenses``/``categories`` are tolerated (categories are then taken
    from the annotations); annotations get ``area`` (w*h) and ``iscrowd`` (0) when absent
    and are renumbered 1..N, because pycocotools treats annotation id 0 as "unmatched".
    """
    if not isinstance(gt, Mapping):
        raise DatasetError(f"ground truth must be a COCO dict, got {type(gt).__name__}")
    images = gt.get("images")
    annotations = gt.get("annotations", [])
    if not isinstance(images, list):
        raise DatasetError("ground truth has no 'images' list")
    if not isinstance(annotations, list):
        raise DatasetError("ground truth 'annotations' must be a list")
    image_ids = _entry_ids(images, "image", unique=True)
    categories = _gt_categories(gt, annotations)
    category_ids = _entry_ids(categories, "category", unique=False)
    return {
        "info": dict(gt.get("info", {}) or {}),
        "licenses": list(gt.get("licenses", []) or []),
        "images": [dict(img) for img in images],
        "annotations": _numbered_annotations(annotations, image_ids, category_ids),
        "categories": [dict(cat) for cat in categories],
    }


def _entry_ids(entries: list[Any], what: str, unique: bool) -> set[Any]:
    """The ``id`` of each GT ``what`` entry (image, category); an entry without one, or a
    repeated id when ``unique``, is a :class:`DatasetError`."""
    ids: set[Any] = set()
    for entry in entries:
        if not isinstance(entry, Mapping) or "id" not in entry:
            raise DatasetError(f"ground truth {what} entry without 'id': {entry!r}")
        if unique and entry["id"] in ids:
            raise DatasetError(f"ground truth has duplicate {what} id {entry['id']!r}")
        ids.add(entry["id"])
    return ids


def _gt_categories(gt: Mapping[str, Any], annotations: list[Any]) -> list[Any]:
    """The GT's ``categories``, or, when absent, one per category id the annotations use."""
    categories = gt.get("categories")
    if categories is None:
        ids = sorted(
            {a["category_id"] for a in annotations if isinstance(a, Mapping) and "category_id" in a},
            key=str,
        )
        categories = [{"id": cid, "name": str(cid)} for cid in ids]
    if not isinstance(categories, list):
        raise DatasetError("ground truth 'categories' must be a list")
    return categories


def _numbered_annotations(annotations: list[Any], image_ids: set[Any], category_ids: set[Any]) -> list[dict[str, Any]]:
    """Checked copies of the GT annotations, numbered 1..N, with ``area`` and ``iscrowd``
    filled in when absent."""
    anns: list[dict[str, Any]] = []
    for index, ann in enumerate(annotations):
        if not isinstance(ann, Mapping):
            raise DatasetError(f"ground truth annotation #{index} is not an object: {ann!r}")
        what = f"ground truth annotation #{index}"
        if ann.get("image_id") not in image_ids:
            raise DatasetError(f"{what}: unknown image_id {ann.get('image_id')!r}")
        if ann.get("category_id") not in category_ids:
            raise DatasetError(f"{what}: unknown category_id {ann.get('category_id')!r}")
        x, y, w, h = _check_bbox(ann.get("bbox"), what)
        new = dict(ann)
        new["bbox"] = [x, y, w, h]
        new["id"] = index + 1
        new.setdefault("area", w * h)
        new.setdefault("iscrowd", 0)
        anns.append(new)
    return anns


def _prepare_detections(
    detections: Sequence[Mapping[str, Any]], image_ids: set[Any], category_ids: set[Any]
) -> list[dict[str, Any]]:
    """Validate COCO results entries against the GT ids; return fresh dict copies."""
    if not isinstance(detections, Sequence) or isinstance(detections, (str, bytes)):
        raise DatasetError(f"detections must be a list of dicts, got {type(detections).__name__}")
    out: list[dict[str, Any]] = []
    for index, det in enumerate(detections):
        if not isinstance(det, Mapping):
            raise DatasetError(f"detection #{index} is not an object: {det!r}")
        what = f"detection #{index}"
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in det:
                raise DatasetError(f"{what} has no '{key}' key: {dict(det)!r}")
        if det["image_id"] not in image_ids:
            raise DatasetError(f"{what}: image_id {det['image_id']!r} is not in the ground truth")
        if det["category_id"] not in category_ids:
            raise DatasetError(f"{what}: unknown category_id {det['category_id']!r}")
        if not _is_number(det["score"]):
            raise DatasetError(f"{what}: score must be a finite number, got {det['score']!r}")
        out.append(
            {
                "image_id": det["image_id"],
                "category_id": det["category_id"],
                "bbox": _check_bbox(det["bbox"], what),
                "score": float(det["score"]),
            }
        )
    return out


def _category_names(
    categories: list[dict[str, Any]], class_names: Sequence[str] | None
) -> dict[Any, str]:
    """Map category id -> display name (``class_names`` in ascending-id order wins)."""
    ids = sorted(cat["id"] for cat in categories)
    if class_names is not None:
        if len(class_names) != len(ids):
            raise DatasetError(
                f"class_names has {len(class_names)} names but the ground truth has "
                f"{len(ids)} categories (ids {ids})"
            )
        names = {cid: str(name) for cid, name in zip(ids, class_names)}
    else:
        names = {cat["id"]: str(cat.get("name", cat["id"])) for cat in categories}
    seen: dict[str, int] = {}
    for name in names.values():
        seen[name] = seen.get(name, 0) + 1
    return {cid: (f"{n} ({cid})" if seen[n] > 1 else n) for cid, n in names.items()}


def coco_metrics(
    gt: dict, detections: list[dict], class_names: list[str] | None = None
) -> dict[str, Any]:
    """COCO bbox metrics of ``detections`` against ``gt``, computed with pycocotools.

    Args:
        gt: COCO annotation dict; ``info``/``licenses`` may be absent. Image files are
            not needed.
        detections: COCO results entries ``{"image_id", "category_id", "bbox": [x, y, w, h]
            (pixels), "score"}``. May be empty (every defined metric is then 0.0).
        class_names: optional display names for the categories in ascending id order;
            by default the GT categories' ``name`` (or ``str(id)``) is used.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"}`` — floats
        equal to ``COCOeval.stats`` — and ``"per_class_AP50"``: ``{name: AP50}`` at area
        "all", 100 detections, for every category that has ground truth.

    Raises:
        DatasetError: malformed GT/detections, or a detection whose image_id or
            category_id is not in the GT (the message names the id).
    """
    gt_data = _prepare_gt(gt)
    image_ids = {img["id"] for img in gt_data["images"]}
    category_ids = {cat["id"] for cat in gt_data["categories"]}
    dets = _prepare_detections(detections, image_ids, category_ids)
    names = _category_names(gt_data["categories"], class_names)

    evaluator = _evaluated(gt_data, dets)
    metrics: dict[str, Any] = {key: float(v) for key, v in zip(STAT_KEYS, evaluator.stats)}
    metrics["per_class_AP50"] = _per_class_ap50(evaluator, names)
    return metrics


def _evaluated(gt_data: dict[str, Any], dets: list[dict[str, Any]]) -> COCOeval:
    """pycocotools' evaluator of ``dets`` against ``gt_data``, evaluated, accumulated and
    summarised (its printing swallowed)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_data
        coco_gt.createIndex()
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(gt_data["images"]),
                "categories": list(gt_data["categories"]),
                "annotations": [],
            }
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _per_class_ap50(evaluator: COCOeval, names: Mapping[Any, str]) -> dict[str, float]:
    """``{name: AP50}`` at area "all", 100 detections, for every category with ground truth."""
    precision = evaluator.eval["precision"]  # (T iou, R recall, K classes, A areas, M maxDets)
    params = evaluator.params
    t50 = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    area_all = list(params.areaRngLbl).index("all")
    m100 = list(params.maxDets).index(100)
    per_class: dict[str, float] = {}
    for k, cat_id in enumerate(params.catIds):
        values = precision[t50, :, k, area_all, m100]
        values = values[values > -1]
        if values.size:
            per_class[names[cat_id]] = float(np.mean(values))
    return per_class


def _read_json(path: Path, what: str) -> Any:
    """Load a JSON file, turning I/O and syntax problems into DatasetError."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{what} file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {what} file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{what} file {path} is not valid JSON: {exc}") from None


def evaluate_files(gt_path: str | Path, detections_path: str | Path) -> dict[str, Any]:
    """Evaluate a COCO results JSON against a COCO GT JSON (see :func:`coco_metrics`).

    Image files referenced by the GT need not exist.

    Raises:
        DatasetError: a file is missing, unreadable, not JSON, or of the wrong shape;
            the message names the file.
    """
    gt_path, detections_path = Path(gt_path), Path(detections_path)
    gt = _read_json(gt_path, "ground-truth")
    if not isinstance(gt, dict) or not isinstance(gt.get("images"), list):
        raise DatasetError(f"ground-truth file {gt_path} is not a COCO dict with an 'images' list")
    dets = _read_json(detections_path, "detections")
    if not isinstance(dets, list):
        raise DatasetError(
            f"detections file {detections_path} must hold a JSON list of "
            f"{{image_id, category_id, bbox, score}} objects, got {type(dets).__name__}"
        )
    try:
        return coco_metrics(gt, dets)
    except DatasetError as exc:
        raise DatasetError(f"{gt_path} / {detections_path}: {exc}") from None


def _to_numpy(value: Any, name: str) -> np.ndarray:
    """Tensor/array/list -> numpy array on the CPU."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{name} is not numeric: {exc}") from None


def detections_to_coco(
    image_id: int,
    boxes_xyxy: Any,
    scores: Any,
    labels: Any,
    label_to_category: Mapping[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Convert one image's torchvision-style predictions to COCO results entries.

    Args:
        image_id: COCO image id the predictions belong to.
        boxes_xyxy: ``(N, 4)`` boxes ``[x1, y1, x2, y2]`` in pixels (tensor, array or list).
        scores: ``(N,)`` confidences.
        labels: ``(N,)`` integer labels; by default they equal COCO category ids.
        label_to_category: optional ``{label: category_id}`` map.

    Returns:
        ``N`` dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.

    Raises:
        DatasetError: mismatched lengths, a box that is not 4 numbers, or a label
            missing from ``label_to_category``.
    """
    boxes = _to_numpy(boxes_xyxy, "boxes_xyxy")
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DatasetError(f"boxes_xyxy must have shape (N, 4), got {tuple(boxes.shape)}")
    score_arr = _to_numpy(scores, "scores").reshape(-1)
    label_arr = _to_numpy(labels, "labels").reshape(-1)
    if not len(boxes) == len(score_arr) == len(label_arr):
        raise DatasetError(
            f"image {image_id}: {len(boxes)} boxes, {len(score_arr)} scores and "
            f"{len(label_arr)} labels; expected equal lengths"
        )
    out: list[dict[str, Any]] = []
    for (x1, y1, x2, y2), score, label in zip(boxes, score_arr, label_arr):
        label_int = int(label)
        if label_to_category is None:
            category = label_int
        elif label_int in label_to_category:
            category = int(label_to_category[label_int])
        else:
            raise DatasetError(f"image {image_id}: label {label_int} not in label_to_category")
        out.append(
            {
                "image_id": image_id,
                "category_id": category,
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "score": float(score),
            }
        )
    return out


def _fmt(value: float) -> str:
    """A metric as a percentage string ('n/a' for pycocotools' -1)."""
    return "n/a" if value is None or value < 0 else f"{100.0 * value:5.1f}"


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """Readable text table of AP/AP50/AP75 (and the other stats present) plus per-class AP50.

    Values are printed in percent; ``n/a`` marks a metric pycocotools reports as -1.
    """
    lines = ["metric      value (%)", "----------  ---------"]
    for key in STAT_KEYS:
        if key in metrics:
            lines.append(f"{key:<10}  {_fmt(float(metrics[key])):>9}")
    per_class = metrics.get("per_class_AP50") or {}
    if per_class:
        width = max(10, max(len(str(name)) for name in per_class))
        lines += ["", f"{'class':<{width}}  AP50 (%)", f"{'-' * width}  --------"]
        for name, value in per_class.items():
            lines.append(f"{str(name):<{width}}  {_fmt(float(value)):>8}")
    return "\n".join(lines)
