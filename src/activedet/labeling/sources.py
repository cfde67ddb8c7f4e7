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

Paths are made absolute but links are kept as the user gave them: a link inside the pool
folder stays a path under the pool root (what batch files and Label Studio's local-files
URLs show, and what the image is read through), even when it points outside. Each path's
real file (links resolved) is kept beside it (``PoolListing.real``), so an image already in
the labeled set is recognised whatever path led to it, and one file reached by two paths
(a link to a listed file, a COCO file listing it under two ids) is named
(``PoolListing.duplicates``: ``select`` and ``doctor`` refuse such a pool). Nothing is
decoded: a 100,000-image pool lists in seconds (one ``stat`` per file for the json and text
forms, to report missing files).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
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
    real: dict[str, str] = field(default_factory=dict)  # path -> its real file, where they differ
    duplicates: list[str] = field(default_factory=list)  # one line per file reached twice

    def real_path(self, path: str) -> str:
        """The file ``path`` (a listed path) reaches, links resolved."""
        return self.real.get(path, path)


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
    """Keep the first path to each real file; name every other path to it (a link to a listed
    file, one file under two COCO ids) in ``duplicates``."""
    first: dict[str, int] = {}
    keep: list[int] = []
    dups: list[str] = []
    for k, p in enumerate(listing.paths):
        j = first.setdefault(listing.real_path(p), k)
        if j == k:
            keep.append(k)
        elif p != listing.paths[j] or listing.ids is not None:
            dups.append(f"{_entry(listing, j)} and {_entry(listing, k)} are the same file "
                        f"{listing.real_path(p)}")
    if len(keep) == len(listing.paths):
        return listing
    ids = None if listing.ids is None else [listing.ids[k] for k in keep]
    paths = [listing.paths[k] for k in keep]
    real = {p: listing.real[p] for p in paths if p in listing.real}
    return PoolListing(listing.spec, paths, listing.root, ids, real, dups)


def _entry(listing: PoolListing, k: int) -> str:
    name = display_name(listing.paths[k], listing.root)
    return name if listing.ids is None else f"image id {listing.ids[k]} ({name})"


def duplicate_message(listing: PoolListing) -> str:
    """One line naming every file the pool reaches twice, and what to do."""
    shown = "; ".join(listing.duplicates[:5])
    more = f" (and {len(listing.duplicates) - 5} more)" if len(listing.duplicates) > 5 else ""
    return (f"unlabeled pool {listing.spec}: {len(listing.duplicates)} image file(s) reached twice, which "
            f"would be selected and labeled twice: {shown}{more}; remove the extra link or entry")


def _list_folder(spec: str, folder: Path) -> PoolListing:
    root = os.path.realpath(folder)
    paths: list[str] = []
    real: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in POOL_SUFFIXES:
                continue
            p = os.path.join(dirpath, name)
            paths.append(p)  # a link keeps its path under the root (os.walk's folders are real)
            if os.path.islink(p):
                real[p] = os.path.realpath(p)
    if not paths:
        raise DatasetError(f"unlabeled pool folder {spec} holds no images "
                           f"({', '.join(sorted(POOL_SUFFIXES))}, searched recursively)")
    return PoolListing(spec, paths, root, real=real)


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
    paths, ids, seen, real = [], [], set(), {}
    for k, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise DatasetError(f"unlabeled pool {spec}: image entry #{k} has no 'file_name'")
        iid = im.get("id")
        if isinstance(iid, bool) or not isinstance(iid, int):
            raise DatasetError(f"unlabeled pool {spec}: image {im['file_name']!r} has no integer 'id'")
        if iid in seen:
            raise DatasetError(f"unlabeled pool {spec}: duplicate image id {iid}")
        seen.add(iid)
        p = _given(root, im["file_name"], real)
        if not os.path.isfile(p):
            raise DatasetError(f"unlabeled pool {spec}: image id {iid}: file not found: {p}")
        paths.append(p)
        ids.append(iid)
    shown = root if all(under(p, root) for p in paths) else common_root(paths)
    return PoolListing(spec, paths, shown, ids, real)


def _given(root: str, name: str, real: dict[str, str]) -> str:
    """``name`` under ``root`` as given (normalised, links kept); its real file into ``real``."""
    p = os.path.normpath(os.path.join(root, name))
    r = os.path.realpath(p)
    if r != p:
        real[p] = r
    return p


def _list_text(spec: str, path: Path) -> PoolListing:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"unlabeled pool {spec}: cannot read the list of paths: {e}") from None
    root = os.path.realpath(path.parent)
    paths: list[str] = []
    real: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = _given(root, line, real)
        if not os.path.isfile(p):
            raise DatasetError(f"unlabeled pool {spec}, line {n}: image file not found: {line}")
        paths.append(p)
    if not paths:
        raise DatasetError(f"unlabeled pool {spec} lists no image paths")
    return PoolListing(spec, paths, common_root(paths), real=real)


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
