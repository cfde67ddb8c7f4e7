"""``compare`` on three cost axes: the area statistic and its seed estimate on known curves,
annotator seconds recorded per round, budgets in boxes by default for detection, and round 0
trained once per seed across strategies."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
import yaml
from scipy import stats

from activedet.cli import main
from activedet.compare import area_differences, area_mean, by_cost, seeds_to_decide
from activedet.config import config_from_dict
from activedet.evaluation.annotation_time import AnnotatorTimes
from activedet.loop.round0 import round0_key


def test_area_mean_by_hand() -> None:
    xs, ys = [100.0, 200.0, 300.0], [0.1, 0.3, 0.3]
    assert area_mean(xs, ys, 100, 300) == pytest.approx((100 * 0.2 + 100 * 0.3) / 200)
    assert area_mean(xs, ys, 150, 250) == pytest.approx((50 * (0.2 + 0.3) / 2 + 50 * 0.3) / 100)
    assert area_mean(xs, ys, 200, 200) == pytest.approx(0.3)


def test_area_differences_use_the_range_every_seed_covers() -> None:
    pairs = {0: ([100, 200, 300], [0.1, 0.25, 0.35], [100, 190, 280], [0.1, 0.2, 0.3]),
             1: ([110, 210, 320], [0.1, 0.2, 0.3], [100, 200, 300], [0.1, 0.2, 0.3])}
    lo, hi, per_seed = area_differences(pairs)
    assert (lo, hi) == (110, 280)
    assert per_seed[1] == pytest.approx(area_mean([110, 210, 320], [0.1, 0.2, 0.3], 110, 280)
                                        - area_mean([100, 200, 300], [0.1, 0.2, 0.3], 110, 280))
    assert area_differences({0: ([100, 150], [0, 1], [200, 300], [0, 1])}) is None  # no common range


def _curves(metric: list[list[float]], boxes: list[list[float]]) -> dict:
    return {seed: (m, b, [40.0 * (k + 1) for k in range(len(m))], [7.0 * x for x in b])
            for seed, (m, b) in enumerate(zip(metric, boxes))}


def test_by_cost_verdict_and_seed_estimate_from_known_curves() -> None:
    boxes = [[100.0, 200.0, 300.0]] * 3
    rand = _curves([[0.10, 0.20, 0.30]] * 3, boxes)
    ahead = _curves([[0.10, 0.26, 0.36], [0.10, 0.24, 0.34], [0.10, 0.26, 0.36]], boxes)
    got = by_cost(ahead, rand, "boxes", 100.0)
    diffs = [(100 * d / 2 + 100 * d) / 200 for d in (0.06, 0.04, 0.06)]  # trapezoids over 100-300
    m, sd = sum(diffs) / 3, math.sqrt(sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert got["area"] == pytest.approx((m, m - half, m + half))
    assert got["area_range"] == [100.0, 300.0]
    assert got["area_verdict"].startswith("over 100-300 boxes the mean metric is 4.0 points higher")
    assert "would decide" not in got["area_verdict"]  # the interval excludes zero
    assert by_cost(ahead, rand, "seconds", 100.0)["area_range"] == [700.0, 2100.0]

    mixed = _curves([[0.10, 0.30, 0.40], [0.10, 0.14, 0.24], [0.10, 0.22, 0.32]], boxes)
    got = by_cost(mixed, rand, "boxes", 100.0)
    diffs = list(got["area_per_seed"].values())
    need = seeds_to_decide(diffs)
    m, sd = sum(diffs) / 3, math.sqrt(sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2)
    brute = next(n for n in range(2, 1000) if stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) < abs(m))
    assert need == brute and f"at this mean and spread {need} seeds would decide" in got["area_verdict"]
    assert "lower" in got["area_verdict"] and "higher" in got["area_verdict"]


def test_round0_key_shares_plain_training_only() -> None:
    cfg = config_from_dict({"dataset": {"train": "builtin:shapes"}, "strategy": {"name": "entropy"}})
    other = config_from_dict({"dataset": {"train": "builtin:shapes"}, "strategy": {"name": "random"}})
    assert round0_key(cfg, "plain", "plain", [3, 1]) == round0_key(other, "plain", "plain", [1, 3])
    assert round0_key(cfg, "plain", "plain", [1, 2]) != round0_key(cfg, "plain", "plain", [1, 3])
    assert round0_key(cfg, "mial", "mial", [1, 3]) is None
    other.seed = 1
    assert round0_key(cfg, "plain", "plain", [1, 3]) != round0_key(other, "plain", "plain", [1, 3])


TINY = {"task": "detection", "device": "cpu", "seed": 0,
        "dataset": {"train": "builtin:objects", "options": {"n_train": 40, "n_test": 12, "image_size": 64}},
        "model": {"arch": "fcos", "backbone": "mobilenet_v2", "pretrained": True, "image_size": 64},
        "train": {"epochs": 1, "batch_size": 4, "lr": 0.01, "eval_batch_size": 16},
        "loop": {"initial": 8, "per_cycle": 8, "cycles": 1, "unit": "images"}, "strategy": {"name": "random"}}


@pytest.mark.slow
def test_compare_in_boxes_with_seconds_and_one_round0_per_seed(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "cmp"
    assert main(["compare", str(cfg), "--strategies", "random,entropy", "--seeds", "1", "--out", str(out),
                 "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["unit"] == "boxes"  # detection: the budget in boxes by default
    cell = yaml.safe_load((out / "runs" / "entropy-seed0.yaml").read_text())
    assert cell["loop"]["unit"] == "boxes" and cell["loop"]["initial"] > 8  # 8 images -> their boxes
    rnd, ent = out / "runs" / "random-seed0", out / "runs" / "entropy-seed0"
    for name in ("random", "entropy"):
        st = summary["strategies"][name]
        assert len(st["images"]) == len(st["boxes"]) == len(st["seconds"]) == 2
        assert all(x is not None and x > 0 for x in st["seconds"])
    assert set(summary["strategies"]["entropy"]["by_cost"]) == {"boxes", "seconds"}

    def rows(run: Path) -> tuple:
        with sqlite3.connect(run / "ledger.sqlite") as db:
            meta = dict(db.execute("SELECT key, value FROM meta"))
            row = db.execute("SELECT checkpoint, seconds, metrics FROM rounds WHERE round = 0").fetchone()
            costs = db.execute("SELECT boxes, seconds, edits FROM costs WHERE round = 0").fetchall()
        return meta, row, costs

    meta_r, row_r, costs_r = rows(rnd)
    meta_e, row_e, costs_e = rows(ent)
    assert "round0_from" not in meta_r and json.loads(meta_e["round0_from"]) == str(rnd)
    assert json.loads(row_e[1])["train"] == 0.0 and json.loads(row_r[1])["train"] > 0  # trained once
    assert (ent / row_e[0]).read_bytes() == (rnd / row_r[0]).read_bytes() and row_e[2] == row_r[2]
    t = AnnotatorTimes()
    for boxes, seconds, edits in costs_r:  # round 0 has no pre-annotations: every box drawn
        assert json.loads(edits) == {"right": 0, "off": 0, "false": 0, "missed": boxes}
        assert seconds == pytest.approx(t.look + t.draw * boxes)


@pytest.mark.slow
def test_simulate_spends_a_budget_in_annotator_seconds(tmp_path: Path, capsys) -> None:
    data = json.loads(json.dumps(TINY))
    data["loop"] = {"initial": 120, "per_cycle": 90, "cycles": 1, "unit": "seconds"}
    data["strategy"] = {"name": "entropy"}
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump(data))
    assert main(["simulate", str(cfg), "--out", str(tmp_path / "run"), "--quiet", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    spent = [r["labeled_seconds"] for r in status["rounds"]]
    assert spent[0] <= 120 and spent[1] <= 210 and spent[1] > spent[0]
    assert spent[0] > 120 - (1.6 + 7.0 * 12)  # stops at the first image that does not fit, no earlier


def test_markdown_table_in_words() -> None:
    from activedet.compare import markdown, summarise

    def run(ms, boxes, secs):
        return [{"metrics": {"AP50": m}, "labeled_boxes": b, "labeled_images": 40 * (k + 1), "labeled_seconds": s}
                for k, (m, b, s) in enumerate(zip(ms, boxes, secs))]
    res = {"random": {s: run([0.1, 0.2, 0.3], [100, 200, 300], [700, 1400, 2000]) for s in range(3)},
           "entropy": {s: run([0.1, 0.22 + 0.01 * s, 0.33], [100, 200, 300], [700, 1300, 1900]) for s in range(3)}}
    md = markdown(summarise(res, "boxes")).splitlines()
    assert md[2].startswith("| random | 3 | 30.0 ± 0.0 |")
    assert "| 10% fewer (95% CI 8% fewer to 13% fewer) | 14% fewer (95% CI 12% fewer to 16% fewer) |" in md[3]
