"""``activedet compare``: the paired statistics on hand-computed curves, and a real grid
(digits, 2 strategies x 2 seeds) that resumes, refuses a changed cell and runs one cell."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from activedet.cli import main
from activedet.compare import (boxes_to_reach, interval, paired, parse_strategy, recommend, seeds_to_decide,
                               summarise, verdict)


def test_boxes_to_reach_and_paired_savings_by_hand() -> None:
    assert boxes_to_reach(0.5, [10, 20, 30], [0.2, 0.4, 0.6]) == pytest.approx(25.0)
    assert boxes_to_reach(0.2, [10, 20, 30], [0.2, 0.4, 0.6]) == 10
    assert boxes_to_reach(0.7, [10, 20, 30], [0.2, 0.4, 0.6]) is None
    # random reaches its final 0.6 at 30 boxes; the strategy at 25 (0.5 -> 0.7 between 20 and 30)
    p = paired([0.2, 0.5, 0.7], [10, 20, 30], [0.2, 0.4, 0.6], [10, 20, 30])
    assert p["saved"] == pytest.approx(1 - 25 / 30) and p["reached"]
    assert p["per_image"] == pytest.approx(0.1) and p["per_box"] == pytest.approx(0.1)
    # more boxes per round: at its 40 boxes random's curve is undefined (left out); at 20, 0.4
    crowded = paired([0.2, 0.5, 0.6], [10, 20, 40], [0.2, 0.4, 0.6], [10, 20, 30])
    assert crowded["per_box"] == pytest.approx(0.1) and crowded["saved"] == pytest.approx(1 - 40 / 30)
    # never reaching random's final: no saving is claimed
    short = paired([0.2, 0.3, 0.4], [10, 20, 30], [0.2, 0.4, 0.6], [10, 20, 30])
    assert not short["reached"] and short["saved"] == 0.0


def test_interval_is_students_t() -> None:
    m, lo, hi = interval([0.1, 0.2, 0.3])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2 dof), from the tables
    assert (m, lo, hi) == pytest.approx((0.2, 0.2 - half, 0.2 + half))
    assert interval([0.5]) is None


def test_verdicts_and_the_recommendation() -> None:
    assert verdict([0.2, 0.25, 0.3], [0.01, 0.02, 0.03], 100).startswith("saves 25% of boxes (95% CI 13% to 37%")
    assert verdict([-0.3, -0.2, -0.25], [0, 0, 0], 100).startswith("costs more: 25% more boxes")
    noise = verdict([-0.1, 0.1, 0.05], [-0.01, 0.01, 0.0], 100, "labels")
    # mean 0.0167, half width t(0.975, 2) * 0.1041 / sqrt(3) = 0.2586: from 24% more to 28% fewer
    assert noise.startswith("no difference beyond noise (2% fewer labels on average, 95% CI 24% more labels to "
                            "28% fewer labels, 3 seeds, 2 ahead)")
    assert "at equal labels 0.0 points higher (95% CI 2.5 points lower to 2.5 points higher)" in noise
    assert "+" not in noise and "−" not in noise
    # mean 0.0167, sd 0.1041: t(0.975, n-1) * 0.1041 / sqrt(n) < 0.0167 first at n = 153 (checked below)
    assert noise.endswith("at this mean and spread 153 seeds would decide")
    assert [n for n in (152, 153) if stats.t.ppf(0.975, n - 1) * np.std([-0.1, 0.1, 0.05], ddof=1) / math.sqrt(n)
            < abs(np.mean([-0.1, 0.1, 0.05]))] == [153]
    assert seeds_to_decide([0.1, 0.1]) == 2 and seeds_to_decide([0.1, -0.1]) is None
    assert seeds_to_decide([0.14, -0.10, 0.30, 0.02, 0.35]) == 10  # mean 0.142, sd 0.188: t(0.975, 9) = 2.262
    assert "too few" in verdict([0.3], [0.1], 100)

    def rounds(curve, boxes):
        return [{"metrics": {"AP50": m}, "labeled_boxes": b, "labeled_images": 10 * (k + 1)}
                for k, (m, b) in enumerate(zip(curve, boxes))]

    rand = {s: rounds([0.2, 0.4, 0.6], [10, 20, 30]) for s in range(3)}
    good = {0: rounds([0.2, 0.5, 0.7], [10, 20, 30]), 1: rounds([0.2, 0.55, 0.7], [10, 20, 30]),
            2: rounds([0.2, 0.6, 0.7], [10, 20, 30])}
    same = {s: rounds([0.2, 0.4, 0.6], [10, 20, 30]) for s in range(3)}
    s = summarise({"random": rand, "good": good, "same": same})
    assert s["strategies"]["good"]["verdict"].startswith("saves") and s["strategies"]["good"]["ahead_per_box"] == 3
    assert s["recommendation"].startswith("good: saves")
    assert recommend(summarise({"random": rand, "same": same})) == "random: nothing beat it beyond noise here"
    assert parse_strategy("entropy:batch=kcenter;preselect=2.5") == (
        "entropy:batch=kcenter;preselect=2.5", {"name": "entropy", "batch": "kcenter", "preselect": 2.5})


@pytest.mark.slow
def test_a_real_grid_resumes_refuses_a_changed_cell_and_runs_one_cell(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "digits.yaml"
    cfg.write_text(yaml.safe_dump({
        "task": "classification", "device": "cpu", "seed": 0,
        "dataset": {"train": "builtin:digits", "options": {"size": 16, "n_train": 200, "n_test": 100}},
        "model": {"arch": "small_cnn", "image_size": 16},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "hflip": False},
        "loop": {"initial": 20, "per_cycle": 20, "cycles": 2}, "strategy": {"name": "random"}}))
    out = tmp_path / "cmp"
    argv = ["compare", str(cfg), "--strategies", "random,entropy", "--seeds", "2", "--out", str(out), "--quiet"]
    capsys.readouterr()
    assert main([*argv, "--jobs", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["strategies"]) == {"random", "entropy"} and summary["cost"] == "labels"
    assert len(summary["strategies"]["entropy"]["vs_random"]) == 2 and "verdict" in summary["strategies"]["entropy"]
    assert summary["recommendation"]
    assert (out / "compare.json").is_file() and (out / "report" / "index.html").is_file()
    assert "Does it beat random?" in (out / "report" / "index.html").read_text()
    runs = sorted(p.name for p in (out / "runs").iterdir() if p.is_dir())
    assert runs == ["entropy-seed0", "entropy-seed1", "random-seed0", "random-seed1"]
    stamp = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/ledger.sqlite")}

    assert main(argv) == 0  # everything is done: aggregated again, nothing re-run
    assert "recommendation:" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/ledger.sqlite")} == stamp

    assert main([*argv, "--set", "train.epochs=3"]) == 2  # a cell whose config changed is named
    err = capsys.readouterr().err
    assert "cell random-seed0" in err and "train.epochs" in err and len(err.strip().splitlines()) == 1

    one = [*argv[:-3], "--out", str(tmp_path / "one"), "--quiet"]
    assert main([*one, "--only", "entropy:1"]) == 0
    assert sorted(p.name for p in (tmp_path / "one" / "runs").iterdir() if p.is_dir()) == ["entropy-seed1"]
    assert main([*one, "--only", "isal:0"]) == 2

