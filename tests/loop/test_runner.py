"""The simulate loop end to end: budgets, ledger, status, resume after kill -9, bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from activedet.cli import main
from activedet.data.pool import Pool
from activedet.errors import ConfigError
from activedet.loop.ledger import Ledger
from activedet.loop.runner import budget_targets, check_budgets, fit_budget
from tests.conftest import make_detection_dataset, tiny_config

ROOT = Path(__file__).resolve().parents[2]


def write_coco_splits(tmp: Path, n_train: int = 16, n_test: int = 6) -> tuple[Path, Path]:
    train = make_detection_dataset(n=n_train, seed=1).export_coco(tmp / "train")
    test = make_detection_dataset(n=n_test, seed=2, start_id=1000).export_coco(tmp / "test")
    return train, test


def write_config(tmp: Path, name: str = "cfg.yaml", **loop) -> Path:
    train, test = write_coco_splits(tmp)
    cfg = {
        "seed": 3, "device": "cpu",
        "dataset": {"train": str(train), "test": str(test)},
        "model": {"arch": "retinanet", "backbone": "mobilenet_v2", "pretrained": False,
                  "image_size": 64, "score_thresh": 0.001},
        "train": {"epochs": 1, "batch_size": 4},
        "loop": {"initial": 4, "per_cycle": 3, "cycles": 2, **loop},
        "strategy": {"name": "entropy"},
    }
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def status_of(run_dir: Path, capsys) -> dict:
    assert main(["status", str(run_dir), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_fit_budget_never_overspends() -> None:
    pool = Pool([1, 2, 3, 4, 5], {1: 3, 2: 0, 3: 2, 4: 5, 5: 1})
    assert fit_budget([1, 2, 3, 4, 5], pool, "images", 2) == [1, 2]
    assert fit_budget([1, 2, 3, 4, 5], pool, "boxes", 5) == [1, 2, 3]  # 3 + 0 + 2; next (5) doesn't fit
    assert fit_budget([4, 1], pool, "boxes", 4) == []


def test_budget_targets_fraction_and_count() -> None:
    pool = Pool(range(100))
    cfg = tiny_config(**{"loop.initial": 0.05, "loop.per_cycle": 0.025, "loop.cycles": 6}).loop
    assert budget_targets(cfg, pool) == [5, 8, 11, 14, 17, 20, 23]  # 2.5 rounds half up
    with pytest.raises(ConfigError, match="loop asks for"):
        check_budgets(tiny_config(**{"loop.initial": 90, "loop.per_cycle": 10, "loop.cycles": 2}).loop, pool)


@pytest.mark.parametrize("unit", ["images", "boxes"])
def test_simulate_two_cycles(tmp_path: Path, capsys, unit: str) -> None:
    cfg = write_config(tmp_path, unit=unit, **({"initial": 6, "per_cycle": 4} if unit == "boxes" else {}))
    run_dir = tmp_path / "run"
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet"]) == 0
    capsys.readouterr()
    st = status_of(run_dir, capsys)
    assert st["complete"] and st["strategy"] == "entropy" and len(st["rounds"]) == 3
    train_ids = set(json.loads((tmp_path / "train" / "annotations.json").read_text())["images"][i]["id"]
                    for i in range(16))
    seen: set[int] = set()
    for r, target in zip(st["rounds"], [4, 7, 10] if unit == "images" else [6, 10, 14]):
        assert set(r["selected"]) <= train_ids
        assert not (set(r["selected"]) & seen), "selections must be disjoint"
        seen |= set(r["selected"])
        assert r["labeled_images"] == len(seen)
        amount = r["labeled_images"] if unit == "images" else r["labeled_boxes"]
        if unit == "images":
            assert amount == target
        else:
            assert amount <= target
        assert {"AP", "AP50", "AP75", "per_class_AP50"} <= set(r["metrics"])
        assert {"train", "evaluate", "score", "select"} <= set(r["seconds"])
    assert (run_dir / "checkpoints" / "round_002.pt").is_file()


def _ledger_rows(run_dir: Path) -> list[tuple]:
    con = sqlite3.connect(run_dir / "ledger.sqlite")
    rows = con.execute("SELECT round, selected, labeled_images, labeled_boxes, scores, metrics "
                       "FROM rounds ORDER BY round").fetchall()
    con.close()
    with Ledger(run_dir) as ledger:  # per-image scores: their own table (or the row, in old ledgers)
        return [r[:4] + (ledger.scores(r[0]),) + r[5:] for r in rows]


def test_kill_and_resume_gives_the_same_ledger(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    ref = tmp_path / "ref"
    assert main(["simulate", str(cfg), "--out", str(ref), "--quiet"]) == 0
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "activedet.cli", "simulate", str(cfg), "--out", str(killed), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # kill -9 twice at different points: once after round 0 trained, once in round 1's training
    for wait_for in ("round_000.pt", "round_001"):
        proc = subprocess.Popen(cmd + (["--resume"] if killed.exists() else []), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            ck = killed / "checkpoints"
            if ck.is_dir() and any(p.name.startswith(wait_for) for p in ck.iterdir()):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert main(["simulate", str(cfg), "--out", str(killed), "--resume", "--quiet"]) == 0
    assert _ledger_rows(killed) == _ledger_rows(ref)


def test_resume_refuses_a_different_config(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path)
    run_dir = tmp_path / "run"
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet"]) == 0
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet"]) == 2  # exists, no --resume
    data = yaml.safe_load(cfg.read_text())
    data["seed"] = 4
    cfg.write_text(yaml.safe_dump(data))
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "seed: 3 -> 4" in err
    # the ledger holds the resolved config: a strategy default that changed between versions
    # (simulated by editing the stored one) is named too
    data["seed"] = 3
    cfg.write_text(yaml.safe_dump(data))
    with sqlite3.connect(run_dir / "ledger.sqlite") as db:
        stored = json.loads(db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
        assert stored["strategy"]["min_score"] == 0.05  # a default, not written in the config
        stored["strategy"]["min_score"] = 0.01
        db.execute("UPDATE meta SET value = ? WHERE key = 'config'", (json.dumps(stored),))
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--resume", "--quiet"]) == 2
    assert "strategy.min_score: 0.01 -> 0.05" in capsys.readouterr().err


def test_bad_dataset_exits_nonzero_and_writes_no_ledger(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path)
    ann = tmp_path / "train" / "annotations.json"
    coco = json.loads(ann.read_text())
    coco["annotations"][0]["category_id"] = 99
    bad_id = coco["annotations"][0]["id"]
    ann.write_text(json.dumps(coco))
    run_dir = tmp_path / "run"
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "annotations.json" in err and str(bad_id) in err
    assert not (run_dir / "ledger.sqlite").exists()


def test_unknown_config_key_is_named(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("loop:\n  cycels: 3\n")
    assert main(["simulate", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "loop.cycels" in capsys.readouterr().err


def test_missing_pretrained_weights_fail_before_the_ledger(tmp_path: Path, capsys, monkeypatch) -> None:
    import activedet.models.detection as det

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(det.torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    monkeypatch.setattr(det.torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict",
                        offline, raising=False)
    monkeypatch.setattr(det, "packaged_weights_path", lambda backbone: None)  # no offline fallback
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: {train: 'builtin:shapes', options: {n_train: 20, n_test: 5}}\n"
                   "model: {arch: retinanet, backbone: resnet18, pretrained: true, image_size: 64}\n"
                   "loop: {initial: 4, per_cycle: 2, cycles: 1}\n")
    out = tmp_path / "run"
    assert main(["simulate", str(cfg), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no pretrained ImageNet weights for backbone 'resnet18'" in err
    assert not (out / "ledger.sqlite").exists()


def test_unset_image_size_is_the_median_shorter_side(tmp_path: Path) -> None:
    from activedet.loop.runner import auto_image_size, prepare

    data = make_detection_dataset(n=12, size=72)
    assert auto_image_size(data) == 72
    cfg = tiny_config(**{"model.image_size": None})
    data.export_coco(tmp_path / "d")
    cfg.dataset.train = cfg.dataset.test = str(tmp_path / "d" / "annotations.json")
    assert prepare(cfg).cfg.model.image_size == 72


def test_a_ledger_from_before_a_new_config_key_resumes(tmp_path: Path, capsys) -> None:
    """A run recorded before ``loop.initial_strategy`` existed resumes: the missing key reads
    as its default; a key that really differs is still refused."""
    cfg = write_config(tmp_path, cycles=1)
    run_dir = tmp_path / "run"
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet"]) == 0
    with Ledger(run_dir) as ledger:
        old = ledger.meta()["config"]
        del old["loop"]["initial_strategy"]  # as the previous release wrote it
        ledger.set_meta(config=old, complete=False)
        rounds = len(ledger.rounds())
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet", "--resume"]) == 0
    with Ledger(run_dir) as ledger:
        assert len(ledger.rounds()) == rounds
    capsys.readouterr()
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet", "--resume",
                 "--set", "loop.initial_strategy=typical"]) == 2
    assert "loop.initial_strategy" in capsys.readouterr().err


def test_a_ledger_from_before_a_new_strategy_key_resumes(tmp_path: Path, capsys) -> None:
    """A run recorded before a strategy key existed (its resolved settings lack it) resumes
    with the key at its default; set to another value it is refused by name."""
    cfg = write_config(tmp_path, cycles=1)
    run_dir = tmp_path / "run"
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet"]) == 0
    with Ledger(run_dir) as ledger:
        old = ledger.meta()["config"]
        del old["strategy"]["cost_min_score"]  # as a release before the key wrote it
        ledger.set_meta(config=old, complete=False)
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet", "--resume"]) == 0
    capsys.readouterr()
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet", "--resume",
                 "--set", "strategy.cost_min_score=0.3"]) == 2
    assert "strategy.cost_min_score: 0.5 -> 0.3" in capsys.readouterr().err


def test_the_strategys_selection_info_is_in_the_ledger(tmp_path: Path) -> None:
    """Every strategy's ``Selection.info`` is recorded with its round (PPAL: its candidates and
    class qualities); a round drawn without a strategy records none."""
    cfg = write_config(tmp_path, cycles=1)
    data = yaml.safe_load(cfg.read_text())
    data["strategy"] = {"name": "ppal", "min_score": 0.0, "pool_ratio": 2.0}
    cfg.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet"]) == 0
    with Ledger(run_dir) as ledger:
        info, first = ledger.selection_info(1), ledger.selection_info(0)
    assert info["candidates"] == 6 and len(info["class_quality"]) == 2  # 2 x 3 images; 2 classes
    assert first == {}


def test_selection_info_with_arrays_is_recorded_as_plain_json(tmp_path: Path) -> None:
    import numpy as np
    import torch

    with Ledger(tmp_path, create=True) as ledger:
        ledger.add_round(1, [3], 1, 1, {}, None, info={"lam": np.float32(0.5), "w": torch.tensor([1.0, 2.0]),
                                                       "n": np.int64(3), "s": "x"})
        assert ledger.selection_info(1) == {"lam": 0.5, "w": [1.0, 2.0], "n": 3, "s": "x"}
