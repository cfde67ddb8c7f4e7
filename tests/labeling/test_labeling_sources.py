"""The unlabeled pool: folder / COCO / text listings, exclusion of labeled images, and a
100,000-image pool prepared in seconds without decoding anything."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from activedet.config import config_from_dict
from activedet.data.pool import Pool
from activedet.errors import DatasetError
from activedet.labeling.dataset import project_dataset
from activedet.labeling.project import _open
from activedet.labeling.sources import list_unlabeled


def png(path: Path, size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)
    return path


def test_folder_is_recursive_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ["b/2.png", "a/1.JPG", "a/deep/3.webp", "c.bmp", "x.tif", ".hidden/4.png", "a/.5.png"]:
        png(tmp_path / "pool" / name)
    (tmp_path / "pool" / "notes.txt").write_text("not an image")
    os.symlink(tmp_path / "pool" / "c.bmp", tmp_path / "pool" / "b" / "link.png")
    listing = list_unlabeled(str(tmp_path / "pool"))
    rel = [os.path.relpath(p, listing.root) for p in listing.paths]
    # a symlink to a listed file is the same file: listed once, and named (select refuses the pool)
    assert rel == ["c.bmp", "x.tif", "a/1.JPG", "a/deep/3.webp", "b/2.png"]
    assert len(listing.duplicates) == 1 and "c.bmp and b/link.png are the same file" in listing.duplicates[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        list_unlabeled(str(tmp_path / "empty"))


def test_text_and_coco_listings_report_missing_files(tmp_path: Path) -> None:
    png(tmp_path / "imgs" / "a.png")
    (tmp_path / "list.txt").write_text("# my pool\nimgs/a.png\n\nimgs/missing.png\n")
    with pytest.raises(DatasetError, match=r"list.txt, line 4: image file not found: imgs/missing.png"):
        list_unlabeled(str(tmp_path / "list.txt"))
    (tmp_path / "pool.json").write_text(json.dumps({"images": [{"id": 3, "file_name": "imgs/a.png"}],
                                                     "annotations": [{"id": 1}], "categories": []}))
    with pytest.raises(DatasetError, match="holds 1 annotations"):
        list_unlabeled(str(tmp_path / "pool.json"))
    (tmp_path / "pool.json").write_text(json.dumps({"images": [{"id": 3, "file_name": "imgs/a.png"},
                                                                {"id": 4, "file_name": "imgs/gone.png"}]}))
    with pytest.raises(DatasetError, match="image id 4: file not found"):
        list_unlabeled(str(tmp_path / "pool.json"))
    with pytest.raises(DatasetError, match="not found"):
        list_unlabeled(str(tmp_path / "nowhere"))


def test_hundred_thousand_images_prepare_in_seconds(tmp_path: Path) -> None:
    """List, exclude the labeled image, assign stable ids, build the pool: no decoding."""
    pool_dir = tmp_path / "pool"
    labeled = png(pool_dir / "d0" / "00000.png", (8, 6))
    data = labeled.read_bytes()
    for d in range(10):
        (pool_dir / f"d{d}").mkdir(exist_ok=True)
        for k in range(10_000):
            p = pool_dir / f"d{d}" / f"{k:05d}.png"
            if not p.exists():
                p.write_bytes(data)
    (tmp_path / "labeled.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "pool/d0/00000.png"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3]}],
        "categories": [{"id": 1, "name": "thing"}]}))
    cfg = config_from_dict({"device": "cpu", "dataset": {"train": str(tmp_path / "labeled.json"),
                                                         "unlabeled": str(pool_dir)},
                            "model": {"arch": "fcos", "backbone": "mobilenet_v2"}})
    t0 = time.perf_counter()
    proj = _open(cfg, tmp_path / "project")
    dataset = project_dataset("detection", ["thing"], proj.base, {}, proj.pool_ids, proj.listing.root)
    pool = Pool(list(proj.base_order) + list(proj.pool_ids), {}, dataset)
    seconds = time.perf_counter() - t0
    proj.ledger.close()
    assert len(proj.pool_ids) == 99_999 and 1 not in proj.pool_ids  # the labeled image is excluded
    assert len(pool.ids) == 100_000 and not dataset._lazy  # nothing opened, let alone decoded
    assert seconds < 30, f"preparing a 100k pool took {seconds:.1f} s"
    print(f"100k pool prepared in {seconds:.2f} s")
    # ids are stable: a second listing (one image added) keeps every id
    png(pool_dir / "d0" / "new.png")
    again = _open(cfg, tmp_path / "project")
    again.ledger.close()
    assert {i: p for i, p in again.pool_ids.items() if i in proj.pool_ids} == proj.pool_ids
    assert len(again.pool_ids) == 100_000
    assert dataset.record(max(proj.pool_ids)).width == 8  # read from the header when asked
