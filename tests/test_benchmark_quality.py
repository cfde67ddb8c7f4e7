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
