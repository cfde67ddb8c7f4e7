"""Tiny on-disk COCO and VOC datasets written into tmp_path (a few 32-64 px images)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image


def _write_image(path: Path, width: int = 40, height: int = 30, mode: str = "RGB", seed: int = 0) -> Path:
    """Write a random image of ``mode`` (RGB, L, RGBA, P) to ``path``; returns the path."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    if mode == "L":
        im = im.convert("L")
    elif mode == "RGBA":
        im = im.convert("RGBA")
    elif mode == "P":
        im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    im.save(path)
    return path


@pytest.fixture
def write_image() -> Callable[..., Path]:
    return _write_image


def base_coco() -> dict[str, Any]:
    """Three images (40x30; id 3 has no boxes), categories 7 'dog' and 3 'cat'."""
    return {
        "images": [
            {"id": 1, "file_name": "images/a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "images/b.png"},  # size read from the header
            {"id": 3, "file_name": "images/c.png", "width": 40, "height": 30},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [20, 10, 8, 8]},
            {"id": 12, "image_id": 2, "category_id": 3, "bbox": [0, 0, 40, 30]},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }


@pytest.fixture
def coco_data() -> Callable[[], dict[str, Any]]:
    """A function returning a fresh copy of :func:`base_coco`'s dict."""
    return base_coco


@pytest.fixture
def make_coco(tmp_path: Path) -> Callable[..., Path]:
    """``make_coco(data=None, modes=None, raw=None)`` writes images + json, returns the json path."""

    def make(data: dict[str, Any] | None = None, modes: dict[str, str] | None = None,
             raw: str | None = None) -> Path:
        data = base_coco() if data is None else data
        for k, name in enumerate(("a", "b", "c")):
            _write_image(tmp_path / "images" / f"{name}.png", mode=(modes or {}).get(name, "RGB"), seed=k)
        path = tmp_path / "train.json"
        path.write_text(raw if raw is not None else json.dumps(data))
        return path

    return make


def voc_xml(objects: list[tuple[str, tuple[float, float, float, float], int]],
            width: int | None = 40, height: int | None = 30, filename: str = "x.jpg") -> str:
    """A VOC annotation document; objects are (name, (xmin, ymin, xmax, ymax), difficult)."""
    size = (f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            if width is not None else "")
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return f"<annotation><filename>{filename}</filename>{size}{objs}</annotation>"


@pytest.fixture(name="voc_xml")
def voc_xml_fixture() -> Callable[..., str]:
    """The :func:`voc_xml` document builder."""
    return voc_xml


@pytest.fixture
def make_voc(tmp_path: Path) -> Callable[..., Path]:
    """``make_voc(xmls=None, splits=None)`` writes a VOC folder; returns its root.

    Default: 'img1' (dog 1..10 x 1..20 + difficult person), 'img2' (no objects, grayscale
    PNG), 'img3' (cat); ImageSets/Main/train.txt lists img1 and img3, val.txt img2.
    """

    def make(xmls: dict[str, str] | None = None, splits: dict[str, list[str]] | None = None,
             images: dict[str, str] | None = None) -> Path:
        root = tmp_path / "VOC"
        xmls = xmls if xmls is not None else {
            "img1": voc_xml([("dog", (1, 1, 10, 20), 0), ("person", (5, 5, 40, 30), 1)]),
            "img2": voc_xml([]),
            "img3": voc_xml([("cat", (2, 3, 4, 5), 0)]),
        }
        images = images if images is not None else {"img1": "img1.jpg", "img2": "img2.png", "img3": "img3.jpg"}
        splits = splits if splits is not None else {"train": ["img1", "img3"], "val": ["img2"]}
        (root / "Annotations").mkdir(parents=True)
        for stem, text in xmls.items():
            (root / "Annotations" / f"{stem}.xml").write_text(text)
        for k, (stem, name) in enumerate(images.items()):
            _write_image(root / "JPEGImages" / name, mode="L" if name.endswith(".png") else "RGB", seed=k)
        (root / "ImageSets" / "Main").mkdir(parents=True)
        for split, stems in splits.items():
            (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
        return root

    return make
