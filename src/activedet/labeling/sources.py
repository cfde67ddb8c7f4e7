"""The unlabeled pool of a labeling project: a list of image paths, read without decoding.

``dataset.unlabeled`` is one of

- an image folder, searched recursively for ``.jpg .jpeg .png .bmp .tif .tiff .webp``
  (sorted by path; hidden files and folders skipped);
- a COCO json whose images carry no annotations (``file_name`` relative to the json's
  folder, or to ``dataset.images`` when set); its image ids are kept;
- a text file with one image path per line (relative to the text file's folder; blank
  lines and lines starting with ``#`` are ignored).

``root`` (what batch files and Label Studio URLs show paths relative to) is the folder, the
COCO image root, or the deepest folder holding every listed path.

Paths are made absolute and symlinks resolved, so an image already in the labeled set is
recognised whatever path led to it. Nothing is decoded: a 100,000-image pool lists in
seconds (one ``stat`` per file for the json and text forms, to report missing files).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from activedet.errors import DatasetError

POOL_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


@dataclass
class PoolListing:
    """Resolved absolute image paths of a pool, in listing order.

    ``ids``: the COCO image ids (same order) when the pool is a COCO json, else None.
    ``root``: the folder relative names are shown against (batch files, Label Studio URLs).
    """

    spec: str
    paths: list[str]
    root: str
    ids: list[int] | None = None


def list_unlabeled(spec: str, images_root: str | None = None) -> PoolListing:
    """List the pool described by ``spec`` (see the module docstring)."""
    if not isinstance(spec, str) or not spec:
        raise DatasetError(f"dataset.unlabeled must be a path, got {spec!r}")
    path = Path(spec)
    if path.is_dir():
        return _unique(_list_folder(spec, path))
    if not path.is_file():
        raise DatasetError(f"unlabeled pool {spec!r} not found (expected an image folder, a COCO "
                           f".json without annotations, or a text file of image paths)")
    if path.suffix.lower() == ".json":
        return _unique(_list_coco(spec, path, images_root))
    return _unique(_list_text(spec, path))


def _unique(listing: PoolListing) -> PoolListing:
    """Drop repeated paths (a symlink to a listed file, a line given twice); first wins."""
    seen: set[str] = set()
    keep = [k for k, p in enumerate(listing.paths) if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]
    if len(keep) == len(listing.paths):
        return listing
    ids = None if listing.ids is None else [listing.ids[k] for k in keep]
    return PoolListing(listing.spec, [listing.paths[k] for k in keep], listing.root, ids)


def _list_folder(spec: str, folder: Path) -> PoolListing:
    root = os.path.realpath(folder)
    paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in POOL_SUFFIXES:
                continue
            p = os.path.join(dirpath, name)
            paths.append(os.path.realpath(p) if os.path.islink(p) else p)
    if not paths:
        raise DatasetError(f"unlabeled pool folder {spec} holds no images "
                           f"({', '.join(sorted(POOL_SUFFIXES))}, searched recursively)")
    return PoolListing(spec, paths, root)


def _list_coco(spec: str, path: Path, images_root: str | None) -> PoolListing:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"unlabeled pool {spec}: cannot read JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"unlabeled pool {spec}: a COCO file with an 'images' list is expected")
    if data.get("annotations"):
        raise DatasetError(f"unlabeled pool {spec} holds {len(data['annotations'])} annotations; the pool "
                           f"must be unlabeled (put labeled images in dataset.train)")
    root = os.path.realpath(images_root if images_root is not None else path.parent)
    paths, ids, seen = [], [], set()
    for k, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise DatasetError(f"unlabeled pool {spec}: image entry #{k} has no 'file_name'")
        iid = im.get("id")
        if isinstance(iid, bool) or not isinstance(iid, int):
            raise DatasetError(f"unlabeled pool {spec}: image {im['file_name']!r} has no integer 'id'")
        if iid in seen:
            raise DatasetError(f"unlabeled pool {spec}: duplicate image id {iid}")
        seen.add(iid)
        p = os.path.realpath(os.path.join(root, im["file_name"]))
        if not os.path.isfile(p):
            raise DatasetError(f"unlabeled pool {spec}: image id {iid}: file not found: {p}")
        paths.append(p)
        ids.append(iid)
    return PoolListing(spec, paths, root if all(under(p, root) for p in paths) else common_root(paths), ids)


def _list_text(spec: str, path: Path) -> PoolListing:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"unlabeled pool {spec}: cannot read the list of paths: {e}") from None
    root = os.path.realpath(path.parent)
    paths = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = os.path.realpath(os.path.join(root, line))
        if not os.path.isfile(p):
            raise DatasetError(f"unlabeled pool {spec}, line {n}: image file not found: {line}")
        paths.append(p)
    if not paths:
        raise DatasetError(f"unlabeled pool {spec} lists no image paths")
    return PoolListing(spec, paths, common_root(paths))


def under(path: str, root: str) -> bool:
    """True when ``path`` lies inside folder ``root`` (both absolute, normalised)."""
    return path.startswith(root.rstrip(os.sep) + os.sep)


def common_root(paths: list[str]) -> str:
    """The deepest folder holding every path."""
    return os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else os.sep


def display_name(path: str, root: str) -> str:
    """``path`` relative to ``root`` (posix) when it lies under it, else the absolute path."""
    rel = os.path.relpath(path, root)
    if rel.startswith(".."):
        return Path(path).as_posix()
    return Path(rel).as_posix()
