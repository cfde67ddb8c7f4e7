"""Property-based tests: mutated COCO json, VOC XML and YAML configs either load into a
usable, valid object or raise the project's own error with a one-line message — never
another exception, never a silently wrong dataset."""

from __future__ import annotations

import copy
import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from activedet.config import ExperimentConfig, load_config
from activedet.data.coco import load_coco
from activedet.data.voc import load_voc
from activedet.errors import ConfigError, DatasetError
from tests.data.conftest import _write_image, base_coco, voc_xml

ROOT = Path(__file__).resolve().parents[2]
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 150)), deadline=None, derandomize="FUZZ_RANDOM" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# ------------------------------------------------------------------ generic mutations
ODD_SCALARS = st.sampled_from([
    None, True, False, 0, -1, 1, 2 ** 31, 2 ** 63, -2 ** 63 - 1, 10 ** 30, 0.5, -0.5, 1e308, -1e308,
    5e-324, math.nan, math.inf, -math.inf, "", "0", "1", "nan", "-inf", "1e309", "ünïcödé ☃", "\x00",
    "a\nb", "../../x", "images/a.png", [], {}, [1, 2, 3, 4], {"a": 1},
])
SCALARS = st.one_of(ODD_SCALARS, st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


def node_paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) to a node of a nested dict/list, the root included."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += node_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += node_paths(v, prefix + (i,))
    return out


def mutate(obj: Any, data: st.DataObject, max_ops: int = 3) -> Any:
    """Apply 1..max_ops random mutations: replace a node by a junk value, delete it, wrap it
    in a list or a dict, or add a junk key to a mapping."""
    obj = copy.deepcopy(obj)
    for _ in range(data.draw(st.integers(1, max_ops))):
        paths = [p for p in node_paths(obj) if p]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        leaf = path[-1]
        op = data.draw(st.sampled_from(["replace", "replace", "delete", "wrap", "nest", "add_key"]))
        if op == "replace":
            parent[leaf] = data.draw(VALUES)
        elif op == "delete":
            del parent[leaf]
        elif op == "wrap":
            parent[leaf] = [parent[leaf]]
        elif op == "nest":
            parent[leaf] = {"value": parent[leaf]}
        elif isinstance(parent[leaf], dict):
            parent[leaf][data.draw(st.text(max_size=8))] = data.draw(VALUES)
    return obj


def assert_one_line(e: Exception) -> None:
    msg = str(e)
    assert msg.strip() and "\n" not in msg, repr(msg)


def assert_valid_detection_dataset(ds: Any) -> None:
    """What a loaded dataset promises the rest of the code."""
    assert all(isinstance(n, str) for n in ds.class_names)
    for i in ds.ids:
        r = ds.record(i)
        assert isinstance(r.width, int) and isinstance(r.height, int) and r.width > 0 and r.height > 0
        assert r.boxes.dtype == np.float32 and r.boxes.shape == (len(r.labels), 4)
        assert np.all(np.isfinite(r.boxes))
        assert np.all(r.boxes[:, 2] > r.boxes[:, 0]) and np.all(r.boxes[:, 3] > r.boxes[:, 1])
        assert np.all(r.boxes >= 0) and np.all(r.boxes[:, [0, 2]] <= r.width) and np.all(r.boxes[:, [1, 3]] <= r.height)
        assert np.all((r.labels >= 1) & (r.labels <= ds.num_classes))
        assert len(r.difficult) == len(r.labels)
        ds.target(i)  # usable as a torchvision target (the id fits an int64 tensor)
        assert ds.load_array(i).shape == (r.height, r.width, 3)


# ------------------------------------------------------------------ COCO
@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    for k, name in enumerate(("a", "b", "c")):
        _write_image(root / "images" / f"{name}.png", seed=k)
    return root


FLAG_VALUES = (0, 1, True, False, 0.0, 1.0)


@FUZZ
@given(data=st.data())
def test_mutated_coco_json(coco_dir: Path, data: st.DataObject) -> None:
    coco = mutate(base_coco(), data)
    path = coco_dir / "fuzz.json"
    path.write_text(json.dumps(coco))
    try:
        ds = load_coco(path)
    except DatasetError as e:
        assert_one_line(e)
        return
    assert_valid_detection_dataset(ds)
    anns = coco.get("annotations") or []
    for ann in anns:  # a flag the loader accepted was a real 0/1, not a truthy string or list
        for flag in ("iscrowd", "difficult"):
            assert flag not in ann or any(ann[flag] == v and type(ann[flag]) is type(v) for v in FLAG_VALUES), ann
    assert sum(len(ds.record(i).labels) + len(ds.record(i).crowd_labels) for i in ds.ids) == len(anns)


@FUZZ
@given(cut=st.integers(0, 400), junk=st.text(max_size=8))
@example(cut=10 ** 6, junk="1" * 5000)  # a 5000-digit number: Python's int-parsing limit
@example(cut=10 ** 6, junk="[" * 100000)  # nesting deeper than the recursion limit
def test_damaged_coco_text(coco_dir: Path, cut: int, junk: str) -> None:
    text = json.dumps(base_coco())
    path = coco_dir / "damaged.json"
    if junk.startswith("1") or junk.startswith("["):
        path.write_text('{"images": [], "annotations": [], "categories": [{"id": ' + junk + ', "name": "x"}]}')
    else:
        path.write_text(text[:cut] + junk)
    try:
        assert_valid_detection_dataset(load_coco(path))
    except DatasetError as e:
        assert_one_line(e)


# ------------------------------------------------------------------ VOC
XML_TEXT = st.one_of(st.sampled_from(["", " ", "nan", "inf", "-inf", "1e309", "-1", "0", "3.7", "40", "1",
                                      "ünï", "dog", "cat", "2", "9999999999999999999999"]),
                     st.text(max_size=10).filter(lambda t: "\x00" not in t and all(ord(c) >= 32 or c in "\t\n" for c in t)))


def mutate_xml(text: str, data: st.DataObject) -> str:
    root = ET.fromstring(text)
    for _ in range(data.draw(st.integers(1, 3))):
        elems = list(root.iter())
        el = data.draw(st.sampled_from(elems))
        op = data.draw(st.sampled_from(["text", "text", "delete", "duplicate", "child", "rename"]))
        parents = {c: p for p in root.iter() for c in p}
        if op == "text":
            el.text = data.draw(XML_TEXT)
        elif op == "delete" and el in parents:
            parents[el].remove(el)
        elif op == "duplicate" and el in parents:
            parents[el].append(copy.deepcopy(el))
        elif op == "child":
            child = ET.SubElement(el, data.draw(st.sampled_from(["object", "bndbox", "xmin", "name", "size", "width"])))
            child.text = data.draw(XML_TEXT)
        elif op == "rename" and el is not root:
            el.tag = data.draw(st.sampled_from(["object", "bndbox", "xmax", "name", "difficult", "junk"]))
    return ET.tostring(root, encoding="unicode")


@pytest.fixture(scope="module")
def voc_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    _write_image(root / "img1.png", seed=0)
    return root


@FUZZ
@given(data=st.data())
def test_mutated_voc_xml(voc_dir: Path, data: st.DataObject) -> None:
    base = voc_xml([("dog", (1, 1, 10, 20), 0), ("cat", (5, 5, 40, 30), 1)], filename="img1.png")
    text = mutate_xml(base, data)
    if data.draw(st.booleans()):
        text = text[: data.draw(st.integers(0, len(text)))]  # cut short
    (voc_dir / "img1.xml").write_text(text)
    try:
        ds = load_voc(voc_dir, layout="paired")
    except DatasetError as e:
        assert_one_line(e)
        return
    assert_valid_detection_dataset(ds)


# ------------------------------------------------------------------ YAML configs
BASE_CONFIGS = ["demo_shapes_random.yaml", "mial_cpu_shapes.yaml", "isal_cpu_shapes.yaml", "cls_cpu_digits.yaml"]


def assert_valid_config(cfg: ExperimentConfig) -> None:
    """Every number a run will use is finite and in its range."""
    def finite(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    assert isinstance(cfg.seed, int) and 0 <= cfg.seed < 2 ** 32, cfg.seed
    assert isinstance(cfg.dataset.train, str) and cfg.dataset.train
    for key in ("test", "reference", "images"):
        assert getattr(cfg.dataset, key) is None or isinstance(getattr(cfg.dataset, key), str)
    assert isinstance(cfg.dataset.options, dict)
    for key in ("initial", "per_cycle"):
        assert finite(getattr(cfg.loop, key)) and getattr(cfg.loop, key) > 0
    assert isinstance(cfg.loop.cycles, int) and cfg.loop.cycles >= 0
    assert isinstance(cfg.loop.reinit, bool)
    t = cfg.train
    for key in ("epochs", "batch_size", "eval_batch_size"):
        assert isinstance(getattr(t, key), int) and getattr(t, key) >= 1
    assert isinstance(t.warmup_iters, int) and t.warmup_iters >= 0
    assert finite(t.lr) and t.lr > 0 and finite(t.momentum) and t.momentum >= 0
    assert finite(t.weight_decay) and t.weight_decay >= 0
    assert t.grad_clip is None or (finite(t.grad_clip) and t.grad_clip > 0)
    assert all(finite(s) and 0 < s <= 1 for s in t.lr_steps)
    assert isinstance(t.hflip, bool)
    m = cfg.model
    assert isinstance(m.pretrained, bool)
    assert m.image_size is None or (isinstance(m.image_size, int) and m.image_size >= 1)
    assert m.anchor_scale is None or (finite(m.anchor_scale) and m.anchor_scale > 0)
    assert finite(m.score_thresh) and 0 <= m.score_thresh <= 1
    assert isinstance(m.detections_per_img, int) and m.detections_per_img >= 1
    assert isinstance(cfg.strategy.name, str)


@FUZZ
@given(base=st.sampled_from(BASE_CONFIGS), data=st.data())
def test_mutated_yaml_config(tmp_path: Path, base: str, data: st.DataObject) -> None:
    raw = yaml.safe_load((ROOT / "configs" / base).read_text())
    mutated = mutate(raw, data)
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(mutated, allow_unicode=True))
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert_one_line(e)
        return
    assert_valid_config(cfg)


@FUZZ
@given(cut=st.integers(0, 600), junk=st.text(max_size=10))
@example(cut=0, junk="[" * 5000)
@example(cut=0, junk="seed: !!python/object:os.system ls")
@example(cut=0, junk="a: &a [*a]")
def test_damaged_yaml_text(tmp_path: Path, cut: int, junk: str) -> None:
    text = (ROOT / "configs" / "demo_shapes_random.yaml").read_text()
    path = tmp_path / "damaged.yaml"
    path.write_text(text[:cut] + junk)
    try:
        assert_valid_config(load_config(path))
    except ConfigError as e:
        assert_one_line(e)


@pytest.mark.parametrize("image_id", [2 ** 63, -2 ** 63 - 1, 1e300])
def test_coco_ids_beyond_int64_are_refused(coco_dir: Path, image_id: float) -> None:
    coco = base_coco()
    coco["images"][2]["id"] = image_id  # image 3 has no annotation pointing at it
    path = coco_dir / "big_id.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match="does not fit in 64 bits"):
        load_coco(path)
