"""``builtin:objects``: real product photos on real aerial photos, with PASCAL VOC 2007's
object statistics; the benchmark on which activedet shows what it saves.

Objects are Fashion-MNIST's photos (Debian ``dataset-fashion-mnist``; ``train`` images for
the train split, ``t10k`` for test), cropped to their pixels and pasted, with their grey
levels as opacity, on crops of the aerial photos the ``deepforest`` package ships (the
left 75% of each photo for train, the right 25% for test, so no background region is in
both splits). The set is a pure function of its options.

What follows VOC 2007 (trainval, the statistics published with the VOC 2007 development
kit; fixed here before
any strategy was run on the set, and not tuned since):

- objects per image: VOC 2007 trainval has 12,608 objects in 5,011 images, 2.52 per
  image, and no image without an object. Here an image holds 1 + G objects, G geometric
  with mean 1.52 (capped at ``max_objects``), so the mean is VOC's (a test pins it within
  10%); the shape of VOC's distribution is not matched, only its mean and minimum;
- class frequencies: VOC's 20 per-class object counts, sorted, merged pairwise (ranks 1+2,
  3+4, ...) into 10 frequencies, from 5,940 of 12,608 objects (47%) down to 444 (3.5%),
  given to Fashion-MNIST's classes in their index order (T-shirt/top the most frequent,
  ankle boot the rarest); each object's class is drawn independently (VOC's co-occurrence,
  e.g. several sheep together, is not matched).

What is not VOC's: object scale (VOC's size distribution is not available offline to check
against; here an object's side is log-uniform between 12% and 50% of the image side, large
objects as in VOC), overlap (bounded: two objects' boxes overlap by IoU <= ``max_iou``),
image size (square, ``image_size``) and appearance (grey product photos on aerial photos).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_iou

from activedet.data.base import DetectionDataset, ImageRecord, read_image_rgb
from activedet.errors import ConfigError, DatasetError

#: VOC 2007 trainval objects per class (the VOC 2007 development kit's statistics).
VOC2007_TRAINVAL_OBJECTS: dict[str, int] = {
    "aeroplane": 306, "bicycle": 353, "bird": 486, "boat": 290, "bottle": 505, "bus": 229, "car": 1250,
    "cat": 376, "chair": 798, "cow": 259, "diningtable": 215, "dog": 510, "horse": 362, "motorbike": 339,
    "person": 4690, "pottedplant": 514, "sheep": 257, "sofa": 248, "train": 297, "tvmonitor": 324}
VOC2007_TRAINVAL_IMAGES = 5011
OBJECT_CLASSES: tuple[str, ...] = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                                   "sneaker", "bag", "ankle_boot")

OBJECTS_DEFAULTS: dict[str, Any] = {
    "n_train": 600, "n_test": 200, "image_size": 96, "max_objects": 12, "max_iou": 0.3,
    "min_scale": 0.12, "max_scale": 0.5, "seed": 0, "root": "/usr/share/datasets/fashion-mnist"}


def voc_class_frequencies(n_classes: int = 10) -> np.ndarray:
    """(n_classes,) float64 summing to 1: VOC 2007's sorted per-class object counts merged
    in equal runs (20 classes into 10: ranks 1+2, 3+4, ...), most frequent first."""
    counts = np.sort(np.array(list(VOC2007_TRAINVAL_OBJECTS.values()), np.float64))[::-1]
    if len(counts) % n_classes:
        raise ConfigError(f"cannot merge VOC's {len(counts)} classes into {n_classes}")
    merged = counts.reshape(n_classes, -1).sum(axis=1)
    return merged / merged.sum()


def voc_objects_per_image() -> float:
    """VOC 2007 trainval's mean objects per image: 12,608 / 5,011 = 2.516."""
    return sum(VOC2007_TRAINVAL_OBJECTS.values()) / VOC2007_TRAINVAL_IMAGES


def load_objects(split: str, options: dict[str, Any] | None = None) -> DetectionDataset:
    """Split ``train`` | ``test`` of the ``objects`` benchmark (see the module docstring)."""
    from activedet.data.builtin import _require, resolve_options
    from activedet.data.classification import _find_idx, load_idx

    o = resolve_options("objects", OBJECTS_DEFAULTS, options)
    s = o["image_size"]
    _require(48 <= s <= 512, "objects", f"image_size={s} must be in 48..512")
    _require(0.05 <= o["min_scale"] <= o["max_scale"] <= 0.9, "objects",
             f"need 0.05 <= min_scale ({o['min_scale']}) <= max_scale ({o['max_scale']}) <= 0.9")
    _require(o["max_objects"] >= 1, "objects", f"max_objects={o['max_objects']} must be >= 1")
    _require(0.0 <= o["max_iou"] < 1.0, "objects", f"max_iou={o['max_iou']} must be in [0, 1)")
    if split not in ("train", "test"):
        raise DatasetError(f"built-in dataset 'objects' has no split {split!r} (train, test)")
    n = o[f"n_{split}"]
    _require(n >= 0, "objects", f"n_{split}={n} must be >= 0")
    root, prefix = Path(o["root"]), "train" if split == "train" else "t10k"
    photos, classes = load_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"),
                               _find_idx(root, f"{prefix}-labels-idx1-ubyte"))
    by_class = [np.flatnonzero(classes == c) for c in range(len(OBJECT_CLASSES))]
    backgrounds = _backgrounds(split)
    freq = voc_class_frequencies(len(OBJECT_CLASSES))
    rng = np.random.default_rng(np.random.SeedSequence([o["seed"], 7, 0 if split == "train" else 1]))
    records = []
    for k in range(n):
        n_obj = min(o["max_objects"], int(rng.geometric(1.0 / voc_objects_per_image())))  # >= 1, mean 2.52
        img = _background_crop(rng, backgrounds, s)
        boxes, labels = _paste_objects(rng, img, n_obj, photos, by_class, freq, o)
        records.append(ImageRecord(id=k + 1, file_name=f"{k + 1:06d}.png", width=s, height=s,
                                   boxes=boxes, labels=labels, array=img))
    return DetectionDataset(records, list(OBJECT_CLASSES), f"objects-{split}", source=f"builtin:objects:{split}")


@functools.lru_cache(maxsize=2)
def _backgrounds(split: str) -> tuple[np.ndarray, ...]:
    """The deepforest photos as (H, W, 3) uint8, the left 75% (train) or right 25% (test)."""
    from activedet.data.builtin import deepforest_data_dir

    folder = deepforest_data_dir()
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise DatasetError(f"built-in dataset 'objects' found no photos in {folder}")
    out = []
    for i, path in enumerate(files):
        arr = read_image_rgb(path, i)
        cut = int(arr.shape[1] * 0.75)
        part = arr[:, :cut] if split == "train" else arr[:, cut:]
        out.append(np.ascontiguousarray(part))
        out[-1].flags.writeable = False
    return tuple(out)


def _background_crop(rng: np.random.Generator, backgrounds: tuple[np.ndarray, ...], size: int) -> np.ndarray:
    """(size, size, 3) uint8: a random square crop of a random photo (side 1-3x ``size``,
    at most the photo's), resized to ``size``, flipped and rotated at random."""
    bg = backgrounds[int(rng.integers(len(backgrounds)))]
    h, w = bg.shape[:2]
    side = int(min(h, w, rng.uniform(1.0, 3.0) * size))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(bg[y:y + side, x:x + side]).resize((size, size), Image.Resampling.BILINEAR)
    arr = np.rot90(np.asarray(crop), int(rng.integers(4)))
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    return arr.copy()  # writable, contiguous


def _paste_objects(rng: np.random.Generator, img: np.ndarray, n_obj: int, photos: np.ndarray,
                   by_class: list[np.ndarray], freq: np.ndarray,
                   o: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``n_obj`` objects into ``img`` (in place); boxes (N, 4) float32 xyxy, labels (N,)
    int64 in 1..10. An object that finds no place within ``max_iou`` in 50 tries is left out."""
    s = img.shape[0]
    boxes: list[list[float]] = []
    labels: list[int] = []
    for _ in range(n_obj):
        c = int(rng.choice(len(freq), p=freq))
        photo = _object_crop(photos[by_class[c][int(rng.integers(len(by_class[c])))]])
        for _try in range(50):
            side = s * float(np.exp(rng.uniform(np.log(o["min_scale"]), np.log(o["max_scale"]))))
            ph, pw = photo.shape
            k = side / np.sqrt(ph * pw)
            w, h = max(4, min(s - 2, round(pw * k))), max(4, min(s - 2, round(ph * k)))
            x0, y0 = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
            box = [float(x0), float(y0), float(x0 + w), float(y0 + h)]
            if not boxes or float(box_iou(torch.tensor([box], dtype=torch.float64),
                                          torch.tensor(boxes, dtype=torch.float64)).max()) <= o["max_iou"]:
                break
        else:
            continue
        alpha = np.asarray(Image.fromarray(photo).resize((w, h), Image.Resampling.BILINEAR), np.float32) / 255.0
        tone = rng.uniform(0.75, 1.15)
        region = img[y0:y0 + h, x0:x0 + w].astype(np.float32)
        grey = np.clip(alpha * 255.0 * tone, 0, 255)[:, :, None]
        a = np.clip(alpha * 3.0, 0.0, 1.0)[:, :, None]  # grey >= 85 is opaque
        img[y0:y0 + h, x0:x0 + w] = np.clip(a * grey + (1 - a) * region, 0, 255).astype(np.uint8)
        rows, cols = np.nonzero(alpha > 0.125)
        if len(rows) == 0:
            continue
        boxes.append([x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1])
        labels.append(c + 1)
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def _object_crop(photo: np.ndarray) -> np.ndarray:
    """A (28, 28) uint8 Fashion-MNIST photo cut to the extent of its pixels above 32."""
    rows, cols = np.nonzero(photo > 32)
    if len(rows) == 0:
        return photo
    return photo[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


__all__ = ["OBJECT_CLASSES", "OBJECTS_DEFAULTS", "VOC2007_TRAINVAL_OBJECTS", "load_objects",
           "voc_class_frequencies", "voc_objects_per_image"]
