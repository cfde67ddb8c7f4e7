"""Image-classification datasets: image folders, CIFAR pickles, IDX files, built-ins.

Every loader returns a :class:`~activedet.data.base.ClassificationDataset` with labels
``0..C-1`` (``class_names[c]`` names label ``c``) and integer image ids. Arrays are
``(H, W, 3) uint8`` RGB; grayscale sources are repeated over three channels.

- :func:`load_image_folder`: ``root/class_name/*.png|jpg|jpeg|bmp``, read lazily.
- :func:`load_cifar`: CIFAR-10 / CIFAR-100 "python version" pickles, in memory.
- :func:`load_idx` / :func:`load_fashion_mnist`: IDX files (plain or gzip), e.g. the
  Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``).
- :func:`load_digits`: scikit-learn's 8×8 digits, upscaled; the embedded default.
- :func:`export_classification`: writes the image-folder layout back out.

Randomness (subsets, splits) comes only from the ``seed`` option.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import pickle
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from PIL import Image

from activedet.data.base import ClassificationDataset, ImageRecord
from activedet.errors import ConfigError, DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_DEFAULTS: dict[str, Any] = {"n_train": 3000, "n_test": 1000, "seed": 0,
                                          "root": str(FASHION_MNIST_DIR)}
DIGITS_DEFAULTS: dict[str, Any] = {"n_train": None, "n_test": None, "seed": 0, "size": 32,
                                   "test_fraction": 0.3}
_SPLITS = ("train", "test")


# ------------------------------------------------------------------------ helpers
def _natural_key(text: str) -> list[Any]:
    """Sort key that orders ``img2`` before ``img10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ConfigError(f"split {split!r} is not one of {', '.join(_SPLITS)}")


def _resolve_options(options: Mapping[str, Any] | None, defaults: Mapping[str, Any],
                     who: str) -> dict[str, Any]:
    """Merge ``options`` over ``defaults``; an unknown key is a :class:`ConfigError`."""
    out = dict(defaults)
    for key, value in (options or {}).items():
        if key not in defaults:
            raise ConfigError(f"unknown option {key!r} for dataset {who} "
                              f"(known: {', '.join(sorted(defaults))})")
        out[key] = value
    for key in ("n_train", "n_test", "seed", "size"):
        v = out.get(key)
        if v is None and key in ("n_train", "n_test"):
            continue
        if key in out and (not isinstance(v, int) or isinstance(v, bool)
                           or v < (0 if key == "seed" else 1)):
            raise ConfigError(f"option {key!r} for dataset {who} must be a "
                              f"{'non-negative' if key == 'seed' else 'positive'} integer, got {v!r}")
    return out


def _subset_indices(n_total: int, n: int | None, rng: np.random.Generator, what: str) -> np.ndarray:
    """Sorted random subset of ``range(n_total)`` of size ``n`` (all when ``n`` is None)."""
    if n is None:
        return np.arange(n_total)
    if n > n_total:
        raise ConfigError(f"{what} = {n} exceeds the {n_total} images available")
    return np.sort(rng.choice(n_total, size=n, replace=False))


def _records_from_arrays(images: np.ndarray, labels: np.ndarray, ids: Iterable[int],
                         file_names: list[str] | None = None) -> list[ImageRecord]:
    """One in-memory record per image. images: (N, H, W, 3) uint8; labels: (N,) int."""
    records = []
    for k, image_id in enumerate(ids):
        arr = images[k]
        records.append(ImageRecord(
            id=int(image_id), file_name=file_names[k] if file_names else f"{int(image_id)}.png",
            width=int(arr.shape[1]), height=int(arr.shape[0]), array=arr, label=int(labels[k])))
    return records


def _gray_to_rgb(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 -> (N, H, W, 3) uint8, contiguous."""
    return np.ascontiguousarray(np.repeat(images[..., None], 3, axis=-1))


# ------------------------------------------------------------------- image folder
def load_image_folder(root: str | Path, name: str | None = None) -> ClassificationDataset:
    """Load ``root/class_name/*.{png,jpg,jpeg,bmp}``.

    Class names are the sub-folder names, sorted; label ``c`` is the ``c``-th name. Image
    ids are ``0..N-1`` in sorted path order (class folder, then natural file-name order).
    Each file's header is opened once here (size, readability); pixels are read lazily.
    Raises :class:`DatasetError` naming the folder (missing, no class folders, empty class
    folder) or the file and its id (unreadable image).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist or is not a directory")
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: p.name)
    if not class_dirs:
        raise DatasetError(f"image folder {root} has no class sub-folders (expected root/class_name/*.png)")
    records: list[ImageRecord] = []
    for label, cdir in enumerate(class_dirs):
        files = sorted((p for p in cdir.iterdir()
                        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                       key=lambda p: _natural_key(p.name))
        if not files:
            raise DatasetError(f"class folder {cdir} holds no images "
                               f"({', '.join(IMAGE_EXTENSIONS)})")
        for path in files:
            image_id = len(records)
            try:
                with Image.open(path) as im:  # header only
                    width, height = im.size
            except (OSError, ValueError) as e:
                raise DatasetError(f"cannot read image {path} (image id {image_id}): {e}") from None
            records.append(ImageRecord(id=image_id, file_name=str(path.relative_to(root)),
                                       width=width, height=height, path=path, label=label))
    return ClassificationDataset(records, [p.name for p in class_dirs],
                                 name=name or root.name, source=str(root))


def export_classification(dataset: ClassificationDataset, out_dir: str | Path,
                          ids: Iterable[int] | None = None) -> Path:
    """Write ``out_dir/class_name/<id>.png`` for every image (or ``ids``); returns ``out_dir``.

    Only classes with at least one exported image get a folder (so the result loads back
    with :func:`load_image_folder`). File images are re-encoded as PNG.
    """
    out_dir = Path(out_dir)
    for c in dataset.class_names:
        if not c or "/" in c or "\\" in c or c in (".", ".."):
            raise DatasetError(f"class name {c!r} cannot be used as a folder name")
    out_dir.mkdir(parents=True, exist_ok=True)
    for image_id in (dataset.ids if ids is None else list(ids)):
        cdir = out_dir / dataset.class_names[dataset.label(image_id)]
        cdir.mkdir(exist_ok=True)
        Image.fromarray(np.ascontiguousarray(dataset.load_array(image_id))).save(cdir / f"{image_id}.png")
    return out_dir


# -------------------------------------------------------------------------- CIFAR
def _numpy_globals() -> dict[tuple[str, str], Any]:
    import numpy._core.multiarray as ma  # numpy >= 2
    import numpy._core.numeric as nu
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = ma._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = ma.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = nu._frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays, lists, dicts, strings and numbers.

    CIFAR is distributed as pickles; this refuses any other global, so a crafted file
    cannot run code.
    """

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _ArrayUnpickler._allowed is None:
            _ArrayUnpickler._allowed = _numpy_globals()
        try:
            return _ArrayUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def _read_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR batch as a dict with ``str`` keys (the files use ``bytes`` keys)."""
    if not path.is_file():
        raise DatasetError(f"CIFAR file {path} is missing")
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a malformed file
        raise DatasetError(f"CIFAR file {path} is not a valid pickle: {e}") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"CIFAR file {path} does not hold a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _decode_names(values: Any, path: Path, key: str) -> list[str]:
    if not isinstance(values, (list, tuple)):
        raise DatasetError(f"CIFAR file {path}: '{key}' is not a list")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _cifar_dir(root: Path) -> tuple[Path, int]:
    """Directory holding the batches and the CIFAR variant (10 or 100)."""
    for sub in ("", "cifar-10-batches-py", "cifar-100-python"):
        d = root / sub if sub else root
        if (d / "batches.meta").is_file():
            return d, 10
        if (d / "meta").is_file():
            return d, 100
    raise DatasetError(f"{root} holds no CIFAR data (expected batches.meta for CIFAR-10 "
                       "or meta for CIFAR-100, possibly under cifar-10-batches-py/)")


def load_cifar(root: str | Path, split: str = "train") -> ClassificationDataset:
    """CIFAR-10 (``data_batch_1..5``, ``test_batch``, ``batches.meta``) or CIFAR-100
    (``train``, ``test``, ``meta``; fine labels) from the python-pickle distribution.

    ``root`` is the extracted folder or its parent. Images are held in memory as
    (32, 32, 3) uint8 arrays; ids are ``0..N-1`` in file order. A missing or malformed
    file raises :class:`DatasetError` naming it.
    """
    _check_split(split)
    d, variant = _cifar_dir(Path(root))
    if variant == 10:
        meta_path, label_key, names_key = d / "batches.meta", "labels", "label_names"
        files = [d / f"data_batch_{k}" for k in range(1, 6)] if split == "train" else [d / "test_batch"]
    else:
        meta_path, label_key, names_key = d / "meta", "fine_labels", "fine_label_names"
        files = [d / split]
    meta = _read_pickle(meta_path)
    if names_key not in meta:
        raise DatasetError(f"CIFAR file {meta_path} has no '{names_key}'")
    class_names = _decode_names(meta[names_key], meta_path, names_key)
    images, labels, file_names = [], [], []
    for path in files:
        batch = _read_pickle(path)
        for key in ("data", label_key):
            if key not in batch:
                raise DatasetError(f"CIFAR file {path} has no '{key}'")
        data = np.asarray(batch["data"])
        lab = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise DatasetError(f"CIFAR file {path}: expected 'data' (N, 3072) uint8 and N labels, "
                               f"got {data.dtype} {data.shape} and {len(lab)} labels")
        if len(lab) and (lab.min() < 0 or lab.max() >= len(class_names)):
            raise DatasetError(f"CIFAR file {path}: label {int(lab.max())} out of range "
                               f"for {len(class_names)} classes")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
        names = batch.get("filenames")
        file_names += (_decode_names(names, path, "filenames") if names is not None
                       else [f"{path.name}_{k}.png" for k in range(len(lab))])
    all_images = np.ascontiguousarray(np.concatenate(images))  # (N, 32, 32, 3)
    all_labels = np.concatenate(labels)
    records = _records_from_arrays(all_images, all_labels, range(len(all_labels)), file_names)
    return ClassificationDataset(records, class_names, name=f"cifar{variant}-{split}", source=str(d))


# ---------------------------------------------------------------------------- IDX
def _read_maybe_gzip(path: Path) -> bytes:
    if not path.is_file():
        raise DatasetError(f"IDX file {path} is missing")
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetError(f"cannot read IDX file {path}: {e}") from None


def _parse_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX file with ``ndim`` dimensions as an array of that shape.

    Read-only; cached per (path, size, modification time), so several runs in one process
    (a test session, a sweep) decompress the 60,000 Fashion-MNIST images once.
    """
    if not path.is_file():
        raise DatasetError(f"IDX file {path} is missing")
    st = path.stat()
    return _parse_idx_cached(str(path), str(path.resolve()), st.st_size, st.st_mtime_ns, ndim)


@functools.lru_cache(maxsize=4)
def _parse_idx_cached(path_str: str, resolved: str, file_size: int, mtime_ns: int,
                      ndim: int) -> np.ndarray:
    """:func:`_parse_idx` without the cache key (``resolved``, ``file_size``, ``mtime_ns``)."""
    path = Path(path_str)
    buf = _read_maybe_gzip(path)
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DatasetError(f"IDX file {path} is truncated ({len(buf)} bytes)")
    magic = int.from_bytes(buf[:4], "big")
    expected = 0x0800 + ndim  # zero, zero, 0x08 (unsigned byte), ndim
    if magic != expected:
        raise DatasetError(f"IDX file {path} has magic number {magic:#010x}, "
                           f"expected {expected:#010x} (unsigned bytes, {ndim} dims)")
    shape = tuple(int.from_bytes(buf[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    size = int(np.prod(shape))
    if len(buf) - header != size:
        raise DatasetError(f"IDX file {path}: header says shape {shape} ({size} bytes) "
                           f"but the file holds {len(buf) - header} bytes of data")
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(shape)


def load_idx(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an IDX image file (magic 0x803) and label file (magic 0x801), plain or gzip.

    Returns images (N, H, W) uint8 and labels (N,) int64. Raises :class:`DatasetError`
    naming the file on a missing file, bad magic number, wrong size or count mismatch.
    """
    images = _parse_idx(Path(images_path), 3)
    labels = _parse_idx(Path(labels_path), 1).astype(np.int64)
    if len(images) != len(labels):
        raise DatasetError(f"IDX files {images_path} ({len(images)} images) and "
                           f"{labels_path} ({len(labels)} labels) disagree")
    return images, labels


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DatasetError(f"Fashion-MNIST file {root / stem}(.gz) is missing: install the Debian "
                       "package with `apt-get install dataset-fashion-mnist` "
                       f"(files in {FASHION_MNIST_DIR}) or set the dataset option 'root'")


def load_fashion_mnist(split: str = "train", options: dict | None = None) -> ClassificationDataset:
    """Fashion-MNIST from IDX files (Debian ``dataset-fashion-mnist``), as 28×28×3 RGB.

    Options: ``n_train`` (3000) / ``n_test`` (1000): size of the seeded random subset of
    the split (None = all 60,000 / 10,000); ``seed`` (0); ``root`` (the Debian path).
    Image ids are indices into the original split file, so they are stable per image.
    """
    _check_split(split)
    opts = _resolve_options(options, FASHION_MNIST_DEFAULTS, "fashion_mnist")
    root = Path(opts["root"])
    prefix = "train" if split == "train" else "t10k"
    images, labels = load_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"),
                              _find_idx(root, f"{prefix}-labels-idx1-ubyte"))
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DatasetError(f"Fashion-MNIST labels in {root} go up to {int(labels.max())}, expected 0..9")
    rng = np.random.default_rng([opts["seed"], _SPLITS.index(split)])
    idx = _subset_indices(len(labels), opts[f"n_{split}"], rng, f"fashion_mnist option n_{split}")
    records = _records_from_arrays(_gray_to_rgb(images[idx]), labels[idx], idx)
    return ClassificationDataset(records, FASHION_MNIST_CLASSES, name=f"fashion_mnist-{split}",
                                 source=str(root))


# ------------------------------------------------------------------------- digits
def _stratified_split(labels: np.ndarray, test_fraction: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) index arrays; each class contributes round(frac * n_c) to test."""
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _upscale(images: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) float in [0, 1] -> (N, size, size) uint8, bilinear."""
    t = torch.from_numpy(images.astype(np.float32))[:, None]
    if t.shape[-1] != size or t.shape[-2] != size:
        t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear",
                                            align_corners=False, antialias=size < images.shape[-1])
    return t[:, 0].mul(255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images (1797, 8, 8) float32 in [0, 1], labels (1797,) int64
    (read-only, cached)."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise DatasetError("the built-in dataset digits needs scikit-learn "
                           "(pip install scikit-learn)") from None
    bunch = sk_load_digits()
    raw = np.asarray(bunch.images, dtype=np.float32) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    raw.setflags(write=False)
    labels.setflags(write=False)
    return raw, labels


def load_digits(split: str = "train", options: dict | None = None) -> ClassificationDataset:
    """scikit-learn's handwritten digits (1797 images, 8×8, values 0..16), upscaled to RGB.

    Options: ``size`` (32): output side in pixels; ``test_fraction`` (0.3): seeded split,
    stratified by class; ``n_train`` / ``n_test`` (None = the whole split): seeded random
    subset of the split; ``seed`` (0). Image ids are indices into the 1797 images, so the
    train and test splits never share an id. Images: (size, size, 3) uint8.
    """
    _check_split(split)
    opts = _resolve_options(options, DIGITS_DEFAULTS, "digits")
    frac = opts["test_fraction"]
    if not isinstance(frac, (int, float)) or isinstance(frac, bool) or not 0 < frac < 1:
        raise ConfigError(f"option 'test_fraction' for dataset digits must be in (0, 1), got {frac!r}")
    raw, labels = _digits_arrays()
    train, test = _stratified_split(labels, float(frac), np.random.default_rng([opts["seed"], 0]))
    idx = train if split == "train" else test
    rng = np.random.default_rng([opts["seed"], 1 + _SPLITS.index(split)])
    idx = idx[_subset_indices(len(idx), opts[f"n_{split}"], rng, f"digits option n_{split}")]
    images = _gray_to_rgb(_upscale(raw[idx], opts["size"]))
    records = _records_from_arrays(images, labels[idx], idx)
    return ClassificationDataset(records, [str(c) for c in range(10)], name=f"digits-{split}",
                                 source="sklearn.datasets.load_digits")
