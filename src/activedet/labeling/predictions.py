"""``select --predictions FILE``: rank the pool from a detector's predictions the team already
has, in the COCO *results* format the common frameworks write (activedet never imports them):

- **Ultralytics** (``yolo detect val model=best.pt data=pool.yaml save_json=True conf=0.001``,
  ``runs/detect/val*/predictions.json``): ``{"image_id": file stem (an int when the stem is
  numeric), "file_name": "x.jpg" (recent releases), "category_id": class index + 1,
  "bbox": [x, y, w, h], "score"}``; class index + 1 is read as the labeled set's category
  in its order (1 = the first);
- **detectron2** (``COCOEvaluator(name, output_dir=OUT)`` + ``inference_on_dataset``,
  ``OUT/coco_instances_results.json``): ``{"image_id", "category_id", "bbox", "score"}``
  with the image ids of the COCO json the pool was registered from and its category ids;
- **MMDetection** (3.x: ``tools/test.py CFG CKPT --cfg-options test_evaluator.format_only=True
  test_evaluator.outfile_prefix=OUT``; 2.x: ``--format-only --options
  jsonfile_prefix=OUT``; ``OUT.bbox.json``): ``{"image_id", "bbox", "score", "category_id"}``,
  ids as detectron2's.

Boxes are ``[x, y, w, h]`` pixels of the image as stored. An entry may carry ``"probs"``:
its C class probabilities in the labeled set's category order (none of the three writes
it; a script of your own can). An image is found by ``file_name`` (its path under the pool
root, else its base name), else by ``image_id``: a COCO pool's image id (``coco``) or the
file stem (``ultralytics``). An image of the pool without an entry had no detection.

:func:`inferences` is the one place that turns the entries into
:class:`activedet.models.base.Inference` objects; :class:`PredictionsModel` hands them to
the strategies through the adapter's ``infer``, so their scoring code runs unchanged.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from activedet.errors import ConfigError, DatasetError, StrategyError
from activedet.models.base import Inference

FORMATS = ("auto", "ultralytics", "coco", "detectron2", "mmdetection")
#: strategies that read only the kept detections (boxes, scores, class probabilities)
DETECTION_ONLY = ("least_confidence", "margin", "entropy", "max_uncertainty", "mean_uncertainty", "random")
#: strategies that also need one feature vector per image (``--embeddings``)
WITH_EMBEDDINGS = ("coreset",)
#: of those, the ones whose score needs every class probability unless their measure says otherwise
NEEDS_PROBS = ("margin", "entropy")


@dataclass
class Results:
    """A results file, read and checked: ``by_image`` maps pool image id -> its entries."""

    path: str
    format: str  # ultralytics | coco
    by_image: dict[int, list[dict[str, Any]]]
    has_probs: bool
    entries: int


def read_results(path: str | Path, fmt: str, pool_paths: Mapping[int, str], root: str,
                 coco_ids: Mapping[str, int] | None) -> Results:
    """Read ``path`` and find each entry's pool image (see the module docstring)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--predictions-format {fmt!r} is not one of {', '.join(FORMATS)}")
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"--predictions {path}: cannot read JSON: {e}") from None
    if not isinstance(data, list):
        raise DatasetError(f"--predictions {path}: a COCO results file (a JSON list of detections) is expected, "
                           f"got a {type(data).__name__}")
    for k, e in enumerate(data):
        _check_entry(e, k, path)
    if fmt == "auto":
        fmt = "ultralytics" if data and all("file_name" in e and _stem_id(e["file_name"]) == e.get("image_id")
                                            for e in data) else "coco"
    fmt = "coco" if fmt in ("detectron2", "mmdetection") else fmt
    find = _ImageFinder(pool_paths, root, coco_ids, fmt)
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    missing: list[str] = []
    for e in data:
        i = find(e)
        if i is None:
            missing.append(repr(e.get("file_name", e.get("image_id"))))
        else:
            by_image[i].append(e)
    if missing:
        raise DatasetError(f"--predictions {path}: {len(missing)} detections name images that are not in the pool "
                           f"({', '.join(sorted(set(missing))[:5])}); {find.how()}")
    has_probs = bool(data) and all("probs" in e for e in data)
    return Results(str(path), fmt, dict(by_image), has_probs, len(data))


@dataclass
class Embeddings:
    """``--embeddings``: one row per image (``rows``: image id -> row of ``matrix``)."""

    path: str
    matrix: np.ndarray
    rows: dict[int, int]


def read_embeddings(path: str | Path, ids_path: str | Path, results: Results, pool_paths: Mapping[int, str],
                    root: str, coco_ids: Mapping[str, int] | None) -> Embeddings:
    """An (N, D) ``.npy`` and a text file naming its N rows' images, one a line (an image id,
    or a file name), matched as the results file's entries are."""
    try:
        matrix = np.load(path, allow_pickle=False)
        names = [line.strip() for line in Path(ids_path).read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise DatasetError(f"--embeddings {path} / --embedding-ids {ids_path}: {e}") from None
    if matrix.ndim != 2 or len(matrix) != len(names) or not np.isfinite(matrix).all():
        raise DatasetError(f"--embeddings {path}: a finite (N, D) array with one row per line of {ids_path} is "
                           f"expected, got shape {matrix.shape} for {len(names)} lines")
    find = _ImageFinder(pool_paths, root, coco_ids, results.format)
    rows: dict[int, int] = {}
    for k, name in enumerate(names):
        i = find({"image_id": int(name)} if name.isdigit() else {"file_name": name, "image_id": name})
        if i is None:
            raise DatasetError(f"--embedding-ids {ids_path}, line {k + 1}: {name!r} is not an image of the project; "
                               f"{find.how()}")
        rows[i] = k
    return Embeddings(str(path), matrix, rows)


def _check_entry(e: Any, k: int, path: str | Path) -> None:
    here = f"--predictions {path}: detection #{k}"
    if not isinstance(e, dict):
        raise DatasetError(f"{here} is not an object")
    if "image_id" not in e and "file_name" not in e:
        raise DatasetError(f"{here} has neither 'image_id' nor 'file_name'")
    bbox = e.get("bbox")
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
            or bbox[2] < 0 or bbox[3] < 0):
        raise DatasetError(f"{here}: 'bbox' must be [x, y, w, h] finite numbers, w and h >= 0, got {bbox!r}")
    score = e.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
        raise DatasetError(f"{here}: 'score' must be a number in [0, 1], got {score!r}")
    if isinstance(e.get("category_id"), bool) or not isinstance(e.get("category_id"), int):
        raise DatasetError(f"{here}: 'category_id' must be an integer, got {e.get('category_id')!r}")


def _stem_id(name: Any) -> int | str | None:
    """Ultralytics' image id of a file: its stem, an int when numeric."""
    if not isinstance(name, str):
        return None
    stem = Path(name).stem
    return int(stem) if stem.isnumeric() else stem


class _ImageFinder:
    """Pool image id of an entry: by file name (path under the root, else base name), else by
    image id (a COCO pool's id, or Ultralytics' file stem)."""

    def __init__(self, pool_paths: Mapping[int, str], root: str, coco_ids: Mapping[str, int] | None,
                 fmt: str) -> None:
        from activedet.labeling.sources import display_name

        self.fmt, self.has_coco = fmt, bool(coco_ids)
        self.by_name = {display_name(p, root): i for i, p in pool_paths.items()}
        self.by_base = _unique_keys((os.path.basename(p), i) for i, p in pool_paths.items())
        self.by_stem = _unique_keys((_stem_id(p), i) for i, p in pool_paths.items())
        self.by_coco = {coco_ids[p]: i for i, p in pool_paths.items() if coco_ids and p in coco_ids}

    def __call__(self, e: dict[str, Any]) -> int | None:
        name = e.get("file_name")
        if isinstance(name, str):
            hit = self.by_name.get(Path(name).as_posix(), self.by_base.get(os.path.basename(name)))
            if hit is not None:
                return hit
        iid = e.get("image_id")
        if self.fmt == "coco" and self.has_coco:
            return self.by_coco.get(iid) if isinstance(iid, int) and not isinstance(iid, bool) else None
        return self.by_stem.get(iid) if isinstance(iid, (int, str)) and not isinstance(iid, bool) else None

    def how(self) -> str:
        if self.fmt == "coco" and self.has_coco:
            return "image_id is read as the pool COCO file's image id (detectron2, MMDetection)"
        return ("image_id is read as the file stem (Ultralytics; pass --predictions-format coco for a COCO "
                "pool's ids) and file_name as the path under the pool folder or the base name")


def _unique_keys(pairs: Any) -> dict[Any, int]:
    """key -> id for the keys that name one id only (an ambiguous base name matches nothing)."""
    out: dict[Any, int] = {}
    dup: set[Any] = set()
    for key, i in pairs:
        if key in out:
            dup.add(key)
        out[key] = i
    return {k: i for k, i in out.items() if k not in dup and k is not None}


def inferences(results: Results, category_ids: Sequence[int], image_ids: Iterable[int]) -> Iterator[Inference]:
    """One :class:`Inference` per image of ``image_ids``, made as asked for (the only place
    they are made, so the file's detections take the memory of the JSON alone): boxes
    xyxy, scores, labels 1..C, and ``probs`` (K, C): the entries' ``probs``, else the score at
    the detection's class and 0 elsewhere (what least_confidence reads; :func:`check_strategy`
    refuses the strategies that need more). An image without entries: no detection."""
    C = len(category_ids)
    label_of = ({k: k for k in range(1, C + 1)} if results.format == "ultralytics"
                else {c: k for k, c in enumerate(category_ids, 1)})
    for i in image_ids:
        entries = results.by_image.get(i, [])
        boxes = np.array([e["bbox"] for e in entries], np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        scores = np.array([e["score"] for e in entries], np.float32)
        labels = np.array([_label(e, label_of, results) for e in entries], np.int64)
        if results.has_probs:
            probs = np.array([_probs(e, C, results.path) for e in entries], np.float32).reshape(-1, C)
        else:
            probs = np.zeros((len(entries), C), np.float32)
            probs[np.arange(len(entries)), labels - 1] = scores
        yield Inference(i, torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(scores),
                        torch.from_numpy(labels), torch.from_numpy(probs), {"source": "predictions"})


def _label(e: dict[str, Any], label_of: Mapping[int, int], results: Results) -> int:
    label = label_of.get(e["category_id"])
    if label is None:
        what = ("class index + 1 (Ultralytics)" if results.format == "ultralytics" else "the labeled set's "
                "category ids")
        raise DatasetError(f"--predictions {results.path}: category_id {e['category_id']} is not one of "
                           f"{sorted(label_of)} ({what})")
    return label


def _probs(e: dict[str, Any], C: int, path: str) -> list[float]:
    p = e["probs"]
    if not isinstance(p, list) or len(p) != C or not all(isinstance(v, (int, float)) for v in p):
        raise DatasetError(f"--predictions {path}: 'probs' must be {C} numbers (one per category), got {p!r}")
    return [float(v) for v in p]


def check_strategy_name(name: str, embeddings: bool = False) -> None:
    """Refuse a strategy that reads more than the kept detections (and, with ``--embeddings``,
    the images' features) before any file is read."""
    allowed = DETECTION_ONLY + (WITH_EMBEDDINGS if embeddings else ())
    if name not in allowed:
        more = "" if embeddings else f"; {', '.join(WITH_EMBEDDINGS)} with --embeddings"
        raise StrategyError(f"strategy '{name}' needs the model itself (features, heads or gradients), which a "
                            f"predictions file does not hold; with --predictions use one of "
                            f"{', '.join(allowed)} (least_confidence reads only the scores){more}")


def check_strategy(strategy: Any, results: Results, score_as_probs: bool, embeddings: bool = False) -> None:
    """Refuse, by name, a strategy that needs what the file lacks."""
    name = strategy.name
    check_strategy_name(name, embeddings)
    if strategy.params.get("batch", "topk") != "topk" and not embeddings:
        raise StrategyError(f"strategy key 'batch' = {strategy.params['batch']!r} needs image features, which a "
                            f"predictions file does not hold: pass --embeddings, or use batch: topk")
    measure = strategy.fixed.get("measure") if hasattr(strategy, "fixed") else None
    measure = measure or strategy.params.get("measure")
    if (name in NEEDS_PROBS or measure in NEEDS_PROBS) and not results.has_probs and not score_as_probs:
        how = f" (measure: {measure})" if measure and measure != name else ""
        raise StrategyError(f"strategy '{name}'{how} needs every class probability of a "
                            f"detection, and {results.path} has only scores (no 'probs'): use --strategy "
                            f"least_confidence, or pass --score-as-probs to score each detection from its score "
                            f"alone (its class at the score, the others at 0)")


class PredictionsModel:
    """The adapter a strategy sees for a predictions file: ``infer`` yields the file's
    detections; everything that needs the model itself is refused."""

    task = "detection"
    arch = "predictions"
    variant = "plain"
    device = torch.device("cpu")

    def __init__(self, results: Results, category_ids: Sequence[int], embeddings: Embeddings | None = None) -> None:
        self.results, self.embeddings = results, embeddings
        self.category_ids = list(category_ids)
        self.num_classes = len(category_ids)
        for _ in inferences(results, category_ids, list(results.by_image)):
            pass  # every entry's category and probs are checked now, before anything is ranked

    def infer(self, dataset: Any, ids: Sequence[int], batch_size: int = 8, progress: bool = False,
              **_: Any) -> Iterator[Inference]:
        return inferences(self.results, self.category_ids, ids)

    def features(self, dataset: Any, ids: Sequence[int], batch_size: int = 8, **_: Any) -> np.ndarray:
        """(N, D) float32 rows of ``--embeddings`` for ``ids``."""
        if self.embeddings is None:
            raise StrategyError(f"image features are not in the predictions file {self.results.path}: pass "
                                f"--embeddings E.npy --embedding-ids IDS")
        rows = self.embeddings.rows
        missing = [i for i in ids if i not in rows]
        if missing:
            raise StrategyError(f"--embeddings {self.embeddings.path} has no row for image id {missing[0]} "
                                f"({len(missing)} such images; the labeled images need rows too, as centers)")
        return self.embeddings.matrix[[rows[i] for i in ids]].astype(np.float32, copy=False)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {}
