"""The shared loop on a classification pool: 3-cycle CPU simulate on Fashion-MNIST.

Uses the IDX files of the Debian package ``dataset-fashion-mnist`` (a small seeded subset,
16-px SmallCNN) so the whole module runs in well under a minute on one CPU core.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from activedet.cli import main
from activedet.data.classification import FASHION_MNIST_CLASSES
from activedet.loop.ledger import Ledger
from activedet.strategies.registry import available

STRATEGIES = {"random": {}, "entropy": {"batch_size": 64}}
if "isal" in available():  # light LiSSA so the test stays fast
    STRATEGIES["isal"] = {"depth": 50, "repeats": 1, "batch_size": 64}


def fashion_config(strategy: str, params: dict) -> dict:
    return {
        "task": "classification", "device": "cpu", "seed": 0,
        "dataset": {"train": "builtin:fashion_mnist", "options": {"n_train": 500, "n_test": 300}},
        "model": {"arch": "small_cnn", "image_size": 16},
        "train": {"epochs": 10, "batch_size": 16, "lr": 0.05, "lr_steps": [0.8], "eval_batch_size": 256},
        "loop": {"initial": 50, "per_cycle": 50, "cycles": 3},
        "strategy": {"name": strategy, **params},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cls_sim")
    out = {}
    for name, params in STRATEGIES.items():
        cfg = root / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(fashion_config(name, params)))
        assert main(["simulate", str(cfg), "--out", str(root / name), "--quiet"]) == 0
        out[name] = root / name
    return out


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_three_cycles_complete_and_accuracy_rises(runs: dict[str, Path], strategy: str) -> None:
    with Ledger(runs[strategy]) as ledger:
        assert ledger.meta()["complete"] is True
        rounds = ledger.rounds()
    assert [r["labeled_images"] for r in rounds] == [50, 100, 150, 200]
    selected = [i for r in rounds for i in r["selected"]]
    assert len(selected) == len(set(selected)) == 200
    top1 = [r["metrics"]["top1"] for r in rounds]
    assert all(0.0 <= a <= 1.0 for a in top1)
    assert top1[-1] > top1[0] + 0.1, top1  # 4× the labels: clearly better
    assert all(b > a - 0.03 for a, b in zip(top1, top1[1:])), top1  # no cycle loses ground
    assert top1[-1] > 0.5, top1  # chance is 0.1
    for r in rounds:  # per-class accuracy: every class of the test subset, consistent with top-1
        per_class = r["metrics"]["per_class_accuracy"]
        assert set(per_class) == set(FASHION_MNIST_CLASSES)
        assert min(per_class.values()) <= r["metrics"]["top1"] <= max(per_class.values())


def test_status_and_report_show_top1(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert main(["status", str(runs["random"]), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["task"] == "classification" and "top1" in status["rounds"][-1]["metrics"]
    out = tmp_path / "report"
    assert main(["report", *[str(p) for p in runs.values()], "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    text = json.dumps(report)
    assert "top1" in text and all(name in text for name in STRATEGIES)
