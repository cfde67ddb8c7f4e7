"""Built-in datasets, loadable as ``builtin:NAME`` without any download.

- ``shapes``: procedural coloured shapes on textured backgrounds, generated in memory
  from a seed (detection, easy enough to learn on a CPU in minutes);
- ``trees``: aerial tree-crown photos with VOC boxes shipped in the ``deepforest`` PyPI
  package, tiled into fixed-size crops (detection, one class);
- ``objects``: the benchmark, Fashion-MNIST's product photos on the aerial photos with
  PASCAL VOC 2007's objects per image and class frequencies (:mod:`activedet.data.benchmark`);
- ``digits``, ``fashion_mnist``: classification, provided by
  :mod:`activedet.data.classification` (imported lazily).

:data:`BUILTINS` maps each name to a :class:`BuiltinInfo`; :func:`load_builtin` loads one
split, :func:`export_builtin` writes every split as COCO.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
from PIL import Image

from activedet.data.base import ClassificationDataset, DetectionDataset, ImageRecord, read_image_rgb
from activedet.errors import ConfigError, DatasetError

AnyDataset = Union[DetectionDataset, ClassificationDataset]


@dataclass(frozen=True)
class BuiltinInfo:
    """A built-in dataset: ``loader(split, options)`` returns one split of it.

    ``defaults`` lists the options and their default values (empty when the loader lives
    in another module and validates its own options).
    """

    name: str
    task: str  # "detection" | "classification"
    description: str
    loader: Callable[[str, dict[str, Any]], AnyDataset]
    splits: tuple[str, ...] = ("train", "test")
    defaults: dict[str, Any] = field(default_factory=dict)


def resolve_options(name: str, defaults: dict[str, Any], options: dict[str, Any] | None) -> dict[str, Any]:
    """``defaults`` updated by ``options``; an unknown key or a wrongly typed value is a
    :class:`ConfigError` naming it."""
    out = dict(defaults)
    for key, value in (options or {}).items():
        if key not in defaults:
            raise ConfigError(f"unknown option {key!r} for built-in dataset {name!r} "
                              f"(known: {', '.join(sorted(defaults))})")
        ref = defaults[key]
        if isinstance(ref, int) and not isinstance(ref, bool):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(ref, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = True
        if not ok:
            raise ConfigError(f"option {key!r} of built-in dataset {name!r} must be "
                              f"{type(ref).__name__}, got {value!r}")
        out[key] = value
    return out


def _require(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"built-in dataset {name!r}: {message}")


# ============================================================================ shapes
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring")
#: One well-separated RGB colour per class (saturated; backgrounds are greyish).
SHAPE_COLORS = np.array([[225, 35, 35], [35, 175, 55], [40, 80, 235],
                         [240, 205, 25], [205, 45, 205], [30, 205, 215]], dtype=np.float32)

SHAPES_DEFAULTS: dict[str, Any] = {
    "n_train": 400, "n_val": 100, "n_test": 200, "image_size": 96, "num_classes": 3,
    "max_objects": 4, "min_size": 16, "max_size": 40, "empty_fraction": 0.1, "seed": 0,
}
_SPLIT_STREAM = {"train": 0, "test": 1, "val": 2}


def load_shapes(split: str, options: dict[str, Any] | None = None) -> DetectionDataset:
    """Generate split ``train`` | ``val`` | ``test`` of the ``shapes`` dataset in memory.

    Each split uses its own random stream derived from ``seed``. Images are
    (image_size, image_size, 3) uint8; boxes are the tight pixel extents of the shapes.
    """
    o = resolve_options("shapes", SHAPES_DEFAULTS, options)
    s = o["image_size"]
    _require(32 <= s <= 1024, "shapes", f"image_size={s} must be in 32..1024")
    _require(1 <= o["num_classes"] <= len(SHAPE_CLASSES), "shapes",
             f"num_classes={o['num_classes']} must be in 1..{len(SHAPE_CLASSES)}")
    _require(4 <= o["min_size"] <= o["max_size"] <= s - 4, "shapes",
             f"need 4 <= min_size ({o['min_size']}) <= max_size ({o['max_size']}) <= image_size - 4")
    _require(o["max_objects"] >= 0, "shapes", f"max_objects={o['max_objects']} must be >= 0")
    _require(0.0 <= o["empty_fraction"] <= 1.0, "shapes",
             f"empty_fraction={o['empty_fraction']} must be in [0, 1]")
    if split not in _SPLIT_STREAM:
        raise DatasetError(f"built-in dataset 'shapes' has no split {split!r} (train, val, test)")
    n = o[f"n_{split}"]
    _require(n >= 0, "shapes", f"n_{split}={n} must be >= 0")
    rng = np.random.default_rng(np.random.SeedSequence([o["seed"], _SPLIT_STREAM[split]]))
    empty = set(rng.choice(n, size=int(round(n * o["empty_fraction"])), replace=False).tolist())
    records = []
    for k in range(n):
        n_obj = 0 if (k in empty or o["max_objects"] == 0) else int(rng.integers(1, o["max_objects"] + 1))
        arr, boxes, labels = _shapes_image(rng, s, n_obj, o["num_classes"], o["min_size"], o["max_size"])
        records.append(ImageRecord(id=k + 1, file_name=f"{k + 1:06d}.png", width=s, height=s,
                                   boxes=boxes, labels=labels, array=arr))
    return DetectionDataset(records, SHAPE_CLASSES[:o["num_classes"]], f"shapes-{split}",
                            source=f"builtin:shapes:{split}")


def _shapes_image(rng: np.random.Generator, size: int, n_obj: int, num_classes: int,
                  min_size: int, max_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: (size, size, 3) uint8, boxes (N, 4) float32 xyxy, labels (N,) int64 in 1..C."""
    img = _background(rng, size)
    _distractors(rng, img, min_size)
    boxes: list[list[float]] = []
    labels: list[int] = []
    for _ in range(n_obj):
        for _try in range(30):
            w = int(rng.integers(min_size, max_size + 1))
            h = min(max(round(w * rng.uniform(0.85, 1.15)), min_size), max_size)
            x0, y0 = int(rng.integers(1, size - w)), int(rng.integers(1, size - h))
            if all(x0 >= b[2] + 2 or x0 + w + 2 <= b[0] or y0 >= b[3] + 2 or y0 + h + 2 <= b[1]
                   for b in boxes):
                break
        else:
            continue  # no free spot: fewer objects in this image
        c = int(rng.integers(num_classes))
        mask = _shape_mask(c, w, h)
        color = SHAPE_COLORS[c] + rng.uniform(-25, 25, size=3).astype(np.float32)
        img[y0:y0 + h, x0:x0 + w][mask] = color
        rows, cols = np.nonzero(mask)
        boxes.append([x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1])
        labels.append(c + 1)
    img += 5.0 * rng.standard_normal(size=img.shape, dtype=np.float32)
    out = np.clip(img, 0, 255, out=img).astype(np.uint8)
    return (out, np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 greyish texture: a low-frequency field plus finer grain."""
    base = rng.uniform(85, 155) + rng.uniform(-12, 12, size=3)
    coarse = rng.uniform(-30, 30, size=(6, 6)).astype(np.float32)
    fine = rng.uniform(-12, 12, size=(size // 4, size // 4)).astype(np.float32)
    field = (np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR))
             + np.asarray(Image.fromarray(fine).resize((size, size), Image.Resampling.BILINEAR)))
    return (base[None, None, :] + field[:, :, None]).astype(np.float32)


def _distractors(rng: np.random.Generator, img: np.ndarray, min_size: int) -> None:
    """Draw 0..3 thin grey lines and 0..3 small dull blobs (not objects) in place."""
    size = img.shape[0]
    yy, xx = _pixel_grid(size)
    for _ in range(int(rng.integers(0, 4))):
        (x1, y1), (x2, y2) = rng.uniform(0, size, size=(2, 2))
        length = max(np.hypot(x2 - x1, y2 - y1), 1.0)
        dist = np.abs((x2 - x1) * (y1 - yy) - (x1 - xx) * (y2 - y1)) / length
        t = ((xx - x1) * (x2 - x1) + (yy - y1) * (y2 - y1)) / length ** 2
        img[(dist < 0.7) & (t >= 0) & (t <= 1)] = rng.uniform(40, 220)
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = rng.uniform(0, size, size=2)
        r = rng.uniform(1.5, max(2.0, min_size / 5))
        grey = rng.uniform(50, 210)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = grey + rng.uniform(-15, 15, size=3)


@functools.lru_cache(maxsize=4)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(size, size) float32 pixel-centre y and x coordinates (read-only, cached)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


@functools.lru_cache(maxsize=512)
def _shape_mask(kind: int, w: int, h: int) -> np.ndarray:
    """(h, w) bool mask of shape class ``kind`` (index into SHAPE_CLASSES) filling the box."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (u + 0.5) / w * 2 - 1  # in (-1, 1)
    v = (v + 0.5) / h * 2 - 1
    r2 = u * u + v * v
    name = SHAPE_CLASSES[kind]
    if name == "circle":
        m = r2 <= 1.0
    elif name == "square":
        m = np.ones((h, w), bool)
    elif name == "triangle":
        m = np.abs(u) <= (v + 1) / 2
    elif name == "diamond":
        m = np.abs(u) + np.abs(v) <= 1.0
    elif name == "cross":
        m = (np.abs(u) <= 0.3) | (np.abs(v) <= 0.3)
    else:  # ring
        m = (r2 <= 1.0) & (r2 >= 0.3)
    m.flags.writeable = False
    return m


# ============================================================================ trees
TREES_DEFAULTS: dict[str, Any] = {"tile_size": 128, "test_fraction": 0.25}


def deepforest_data_dir() -> Path:
    """The ``data`` folder of the installed ``deepforest`` package (never imported)."""
    hint = "install it with `pip install --no-deps deepforest`"
    spec = importlib.util.find_spec("deepforest")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        if (Path(loc) / "data").is_dir():
            return Path(loc) / "data"
    raise DatasetError(f"built-in dataset 'trees' needs the deepforest package's data folder; {hint}")


def load_trees(split: str, options: dict[str, Any] | None = None) -> DetectionDataset:
    """Tiles of the deepforest tree-crown photos (one class ``tree``).

    Each source image is cut into non-overlapping ``tile_size`` squares (the remainder
    strip at the right/bottom is dropped). The right-most ``test_fraction`` of each
    image's tile columns go to ``test``, the rest to ``train``, so the splits cover
    disjoint regions. A box is clipped to its tile and kept when it keeps >= 50% of its
    area and stays >= 2 px wide and high. ``file_name`` is ``STEM_rROW_cCOL.png``.
    """
    from activedet.data.voc import load_voc  # local: keep builtin importable on its own

    o = resolve_options("trees", TREES_DEFAULTS, options)
    t = o["tile_size"]
    _require(32 <= t <= 1024, "trees", f"tile_size={t} must be in 32..1024")
    _require(0.0 <= o["test_fraction"] < 1.0, "trees", f"test_fraction={o['test_fraction']} must be in [0, 1)")
    if split not in ("train", "test"):
        raise DatasetError(f"built-in dataset 'trees' has no split {split!r} (train, test)")
    source = load_voc(deepforest_data_dir(), layout="paired", name="deepforest")
    records: list[ImageRecord] = []
    for sid in source.ids:
        rec = source.record(sid)
        arr = read_image_rgb(rec.path, sid)  # type: ignore[arg-type]
        rows, cols = arr.shape[0] // t, arr.shape[1] // t
        n_test = int(round(cols * o["test_fraction"]))
        if o["test_fraction"] > 0 and cols >= 2:
            n_test = min(max(n_test, 1), cols - 1)
        elif cols < 2:
            n_test = 0
        for r in range(rows):
            for c in range(cols):
                if (c >= cols - n_test) != (split == "test"):
                    continue
                boxes = _clip_to_tile(rec.boxes, c * t, r * t, t)
                records.append(ImageRecord(
                    id=len(records) + 1, file_name=f"{rec.file_name}_r{r:02d}_c{c:02d}.png",
                    width=t, height=t, boxes=boxes, labels=np.ones(len(boxes), np.int64),
                    array=np.ascontiguousarray(arr[r * t:(r + 1) * t, c * t:(c + 1) * t]),
                ))
    return DetectionDataset(records, ["tree"], f"trees-{split}", source=f"builtin:trees:{split}")


def _clip_to_tile(boxes: np.ndarray, x0: int, y0: int, t: int) -> np.ndarray:
    """Boxes (N, 4) xyxy clipped to the tile at (x0, y0) and shifted into its frame.

    Drops boxes keeping < 50% of their area or narrower/lower than 2 px. Returns (M, 4).
    """
    b = boxes.astype(np.float32).reshape(-1, 4)
    clipped = np.stack([np.clip(b[:, 0] - x0, 0, t), np.clip(b[:, 1] - y0, 0, t),
                        np.clip(b[:, 2] - x0, 0, t), np.clip(b[:, 3] - y0, 0, t)], axis=1)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep = (w >= 2) & (h >= 2) & (w * h >= 0.5 * area)
    return clipped[keep].astype(np.float32).reshape(-1, 4)


# ============================================================================ registry
def _classification(func: str) -> Callable[[str, dict[str, Any]], AnyDataset]:
    """Loader calling ``activedet.data.classification.<func>`` (imported on first use)."""

    def load(split: str, options: dict[str, Any]) -> AnyDataset:
        try:
            module = importlib.import_module("activedet.data.classification")
        except ImportError as e:
            raise DatasetError(f"classification built-ins need activedet.data.classification: {e}") from None
        return getattr(module, func)(split, options)

    return load


BUILTINS: dict[str, BuiltinInfo] = {
    "shapes": BuiltinInfo(
        "shapes", "detection",
        "procedural coloured shapes (circle/square/triangle...) on textured backgrounds, "
        "96 px, generated from a seed", load_shapes, ("train", "val", "test"), SHAPES_DEFAULTS),
    "trees": BuiltinInfo(
        "trees", "detection",
        "aerial tree crowns from the deepforest package, tiled 128 px, one class; "
        "test = right-most 25% of each photo", load_trees, ("train", "test"), TREES_DEFAULTS),
    "objects": BuiltinInfo(
        "objects", "detection",
        "the benchmark: Fashion-MNIST product photos on aerial photos, 10 classes, VOC 2007's objects "
        "per image and long-tailed class frequencies, 96 px (options: n_train, n_test, image_size, seed)",
        lambda split, options: _objects(split, options), ("train", "test")),
    "digits": BuiltinInfo(
        "digits", "classification", "8x8 handwritten digits (scikit-learn), 10 classes",
        _classification("load_digits")),
    "fashion_mnist": BuiltinInfo(
        "fashion_mnist", "classification", "Fashion-MNIST clothing images, 10 classes",
        _classification("load_fashion_mnist")),
}


def _info(name: str) -> BuiltinInfo:
    try:
        return BUILTINS[name]
    except KeyError:
        raise DatasetError(f"unknown built-in dataset {name!r} (known: {', '.join(sorted(BUILTINS))})") from None


def load_builtin(name: str, split: str = "train", options: dict[str, Any] | None = None) -> AnyDataset:
    """Load split ``split`` of built-in dataset ``name`` with generator ``options``.

    ``split="reference"`` (ISAL's labeled reference set) loads the ``val`` split of
    built-ins that have one.
    """
    info = _info(name)
    if split == "reference" and "val" in info.splits:
        split = "val"
    return info.loader(split, dict(options or {}))


def export_builtin(name: str, out_dir: str | Path, options: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write every split of ``name`` to ``out_dir/<split>/``; returns {split: written path}.

    Detection splits become COCO (``annotations.json`` + ``images/``). Classification
    splits are written by ``activedet.data.classification.export_classification`` when
    that function exists.
    """
    info = _info(name)
    out_dir = Path(out_dir)
    exporter = None
    if info.task == "classification":
        try:
            exporter = getattr(importlib.import_module("activedet.data.classification"),
                               "export_classification", None)
        except ImportError:
            exporter = None
        if exporter is None:
            raise DatasetError(f"export of classification builtin {name} is not supported")
    written: dict[str, Path] = {}
    for split in info.splits:
        dataset = load_builtin(name, split, options)
        if exporter is not None:
            written[split] = Path(exporter(dataset, out_dir / split))
        else:
            written[split] = dataset.export_coco(out_dir / split)  # type: ignore[union-attr]
    return written


def _objects(split: str, options: dict[str, Any]) -> AnyDataset:
    from activedet.data.benchmark import load_objects  # reads Fashion-MNIST and the deepforest photos

    return load_objects(split, options)
