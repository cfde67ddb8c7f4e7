"""One entry point that turns a dataset spec string (as written in a config) into a dataset.

Accepted specs:

- ``builtin:NAME`` or ``builtin:NAME:SPLIT`` (the explicit split wins over ``split``);
- ``PATH.json``: a COCO file (images under ``images_root``, default next to the json);
- ``voc:DIR`` or ``voc:DIR:SPLIT`` (prefix case-insensitive);
- a directory holding ``Annotations/``: VOC; ``split`` is used when
  ``ImageSets/Main/{split}.txt`` exists, else every annotation file;
- a directory holding ``NAME.xml`` next to ``NAME.png|jpg``: paired VOC files;
- a directory whose subfolders hold images: a classification image folder
  (``activedet.data.classification.load_image_folder``);
- a CIFAR-10/100 python-pickle folder (``batches.meta`` or ``meta``, possibly under
  ``cifar-10-batches-py/``): ``activedet.data.classification.load_cifar`` (``train`` | ``test``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from activedet.data.base import ClassificationDataset, DetectionDataset
from activedet.data.builtin import load_builtin
from activedet.data.coco import load_coco
from activedet.data.voc import IMAGE_SUFFIXES, load_voc
from activedet.errors import DatasetError


def load_dataset(spec: str, split: str = "train", images_root: str | None = None,
                 options: dict[str, Any] | None = None) -> DetectionDataset | ClassificationDataset:
    """Load the dataset described by ``spec`` (see the module docstring).

    ``options`` are built-in generator options; they are ignored for other kinds of spec
    (a config may pair a built-in train split with a file test split). Anything
    unrecognised is a :class:`DatasetError` naming ``spec``.
    """
    if not isinstance(spec, str) or not spec:
        raise DatasetError(f"dataset spec must be a non-empty string, got {spec!r}")
    if spec.startswith("builtin:"):
        name, _, explicit = spec[len("builtin:"):].partition(":")
        return load_builtin(name, explicit or split, options)
    if spec[:4].lower() == "voc:":  # also VOC:DIR[:SPLIT]
        body = spec[4:]
        root, sep, explicit = body.rpartition(":")
        if not sep or not root or Path(body).is_dir():  # no split given (or ':' in the path)
            root, explicit = body, ""
        return load_voc(root, explicit or split, layout="voc")
    path = Path(spec)
    if spec.lower().endswith(".json"):
        return load_coco(path, images_root)
    if path.is_dir():
        if any((d / meta).is_file() for d in (path, path / "cifar-10-batches-py", path / "cifar-100-python")
               for meta in ("batches.meta", "meta")):
            from activedet.data.classification import load_cifar

            return load_cifar(path, split)
        if (path / "Annotations").is_dir():
            return load_voc(path, split, layout="voc")  # all files if no {split}.txt
        if any(path.glob("*.xml")):
            return load_voc(path, layout="paired")
        if _is_image_folder(path):
            try:
                module = importlib.import_module("activedet.data.classification")
            except ImportError as e:
                raise DatasetError(f"{spec}: image-folder datasets need "
                                   f"activedet.data.classification ({e})") from None
            return module.load_image_folder(path)
    if not path.exists():
        raise DatasetError(f"dataset {spec!r} not found (expected a COCO .json file, a VOC "
                           f"folder, an image folder, or builtin:NAME)")
    raise DatasetError(f"cannot tell what kind of dataset {spec!r} is (expected a COCO .json "
                       f"file, a VOC folder, an image folder, or builtin:NAME)")


def _is_image_folder(path: Path) -> bool:
    """True when some subfolder of ``path`` directly holds an image file."""
    for sub in path.iterdir():
        if sub.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in sub.iterdir()):
            return True
    return False
