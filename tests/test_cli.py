"""The command-line contract: evaluate agrees with pycocotools, datasets export/reload,
strategies listing, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from activedet.cli import main
from activedet.data.loading import load_dataset
from activedet.strategies.registry import available
from tests.evaluation.test_detection_metrics import make_coco, reference_eval

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


@pytest.mark.parametrize("seed", [5, 6])
def test_evaluate_json_agrees_with_pycocotools(tmp_path: Path, capsys, seed: int) -> None:
    gt, dets = make_coco(seed, n_images=15, n_classes=4)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    assert main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--detections",
                 str(tmp_path / "dets.json"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    ref = reference_eval(gt, dets).stats
    for key, value in zip(STATS, ref):
        assert abs(got[key] - float(value)) <= 1e-6, key
    assert set(got["per_class_AP50"]) <= {c["name"] for c in gt["categories"]}


def test_evaluate_bad_file_is_one_line_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "gt.json").write_text("{not json")
    assert main(["evaluate", "--gt", str(tmp_path / "gt.json"), "--detections",
                 str(tmp_path / "gt.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("activedet evaluate: error:") and "gt.json" in err and "\n" not in err


def test_datasets_export_round_trips(tmp_path: Path, capsys) -> None:
    assert main(["datasets", "export", "shapes", str(tmp_path / "shapes")]) == 0
    out = capsys.readouterr().out
    train_json = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("train"))
    exported = load_dataset(train_json)
    original = load_dataset("builtin:shapes")
    assert exported.ids == original.ids
    for i in original.ids[:20]:
        np.testing.assert_allclose(exported.record(i).boxes, original.record(i).boxes, atol=1e-4)
        assert exported.record(i).labels.tolist() == original.record(i).labels.tolist()
        assert np.array_equal(exported.load_array(i), original.load_array(i))


def test_strategies_json_lists_every_registered_strategy(capsys) -> None:
    assert main(["strategies", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(available())
    for r in rows:
        assert r["reference"] and r["tasks"] and r["archs"]


def test_unknown_builtin_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["datasets", "export", "nosuch", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nosuch" in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_report_labels_name_the_settings_an_ablation_varies() -> None:
    from activedet.report.runs import run_labels

    names = ["isal", "isal", "isal", "random"]
    settings = [{"top_k": 1, "depth": 50}, {"top_k": 10, "depth": 50}, {"top_k": 1, "depth": 50}, {}]
    assert run_labels(names, settings) == ["isal top_k=1", "isal top_k=10", "isal top_k=1", "random"]
