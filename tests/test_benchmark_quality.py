"""benchmarks/quality.py: strategy specs, overrides, and the summary it prints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_strategy_specs(quality) -> None:
    assert quality.parse_strategy("random") == ("random", {"name": "random"})
    assert quality.parse_strategy("isal:scale=auto,depth=50") == (
        "isal:scale=auto,depth=50", {"name": "isal", "scale": "auto", "depth": 50})
    assert quality.parse_strategy("isal+cb=isal:batch=class_balanced,preselect=2.5") == (
        "isal+cb", {"name": "isal", "batch": "class_balanced", "preselect": 2.5})


def test_overrides_create_sections(quality) -> None:
    data = {"train": {"epochs": 10}, "dataset": None}
    quality.override(data, "train.epochs=3")
    quality.override(data, "dataset.options.n_train=50")
    quality.override(data, "train.lr_steps=[0.5]")
    assert data == {"train": {"epochs": 3, "lr_steps": [0.5]}, "dataset": {"options": {"n_train": 50}}}


def test_summary_means_stds_and_boxes_to_random(quality) -> None:
    def rounds(curve):
        return [{"metrics": {"top1": m}, "labeled_boxes": 10 * (k + 1)} for k, m in enumerate(curve)]

    results = {"random": {0: rounds([0.2, 0.4, 0.6]), 1: rounds([0.2, 0.5, 0.6])},
               "better": {0: rounds([0.2, 0.6, 0.7]), 1: rounds([0.2, 0.6, 0.5])}}
    s = quality.summarise(results)
    assert s["metric"] == "top1"
    r, b = s["strategies"]["random"], s["strategies"]["better"]
    assert r["per_round"][1] == pytest.approx((0.45, 0.0707107))
    assert r["mean_over_cycles"][0] == pytest.approx(0.525)  # rounds 1..2, then over seeds
    assert b["boxes_to_random_final"] == 20 and r["boxes_to_random_final"] == 30
    assert "better" in quality.table(s)


def test_paired_differences_per_image_and_at_equal_boxes(quality) -> None:
    def rounds(curve, boxes):
        return [{"metrics": {"AP50": m}, "labeled_boxes": b} for m, b in zip(curve, boxes)]

    # seed 0: "crowded" buys +0.1 per image with more boxes; at its 20 boxes (round 1)
    # random's curve reads 0.4 -> 0.5 - 0.4 = +0.1; round 2's 40 boxes lie outside
    # random's range (max 30) and are left out
    results = {"random": {0: rounds([0.2, 0.4, 0.6], [10, 20, 30])},
               "crowded": {0: rounds([0.2, 0.5, 0.7], [10, 20, 40])},
               "sparse": {0: rounds([0.2, 0.4, 0.5], [10, 15, 20])}}
    s = quality.summarise(results)["strategies"]
    assert s["crowded"]["vs_random"]["per_image"][0] == pytest.approx(0.1)
    assert s["crowded"]["vs_random"]["per_box"][0] == pytest.approx(0.1)
    # sparse: per image -0.05; at 15 boxes random reads 0.3 (+0.1), at 20 boxes 0.4 (+0.1)
    assert s["sparse"]["vs_random"]["per_image"][0] == pytest.approx(-0.05)
    assert s["sparse"]["vs_random"]["per_box"][0] == pytest.approx(0.1)
    assert quality.interp(35, [10, 20, 30], [0.2, 0.4, 0.6]) is None
