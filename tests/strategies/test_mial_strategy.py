"""The `mial` strategy: settings, scoring against a direct computation from the head,
batched scoring, and 2-cycle simulated runs on COCO data written to disk (with empty
images; single class), whose recorded scores are reproduced from the saved checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from activedet.cli import main
from activedet.data.pool import Pool
from activedet.errors import ConfigError, StrategyError
from activedet.loop.ledger import Ledger
from activedet.loop.runner import load_checkpoint, prepare, run
from activedet.models.detection_adapter import DetectionAdapter, detection_adapter
from activedet.models.factory import build_adapter
from activedet.strategies.registry import build_strategy, get_strategy_class
from tests.conftest import make_detection_dataset, tiny_config

#: a short paper schedule: one model trains through every stage (the default, auto, is separate)
JOINT = {"label_epochs": 1, "rounds": 1, "repeat": 1, "detector": "joint"}



# ---------------------------------------------------------------------------- settings


def test_registered_with_its_model_trainer_and_defaults() -> None:
    cls = get_strategy_class("mial")
    assert (cls.model_variant, cls.trainer, cls.supported_archs(), cls.tasks) == ("mial", "mial", ("fcos", "retinanet"),
                                                                                ("detection",))
    d = cls.settings_type.defaults()
    assert (d["lambda"], d["top_k"], d["aggregate"], d["weighting"], d["uncertainty"]) == (0.5, 10000, "topk", "none", "abs")
    assert (d["iul"], d["iur"], d["reweight"], d["order"]) == (True, True, "mil", "max_min")
    s = build_strategy("mial", {"iur": False, "reweight": "f1", "mil_weighting": "code", "regression_loss": "l1"})
    assert s.model_kwargs() == {"use_mil": False, "mil_weighting": "code", "regression_loss": "l1",
                                "det_reduction": "sum"}
    assert build_strategy("mial").model_kwargs()["use_mil"] is True


@pytest.mark.parametrize("params,key", [({"aggregate": "median"}, "aggregate"), ({"top_k": 0}, "top_k"),
                                        ({"uncertainty": "l2"}, "uncertainty"), ({"lambda": -1}, "lambda"),
                                        ({"score_fraction": 0}, "score_fraction"),
                                        ({"weighting": "mil", "iur": False, "reweight": "none"}, "weighting"),
                                        ({"topk": 5}, "topk")])
def test_bad_settings_fail_at_construction_naming_the_key(params: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build_strategy("mial", params)


def test_retinanet_or_fcos_detection() -> None:
    s = build_strategy("mial")
    s.check_model("detection", "retinanet")
    s.check_model("detection", "fcos")
    for task, arch in [("detection", "faster_rcnn"), ("classification", "resnet18")]:
        with pytest.raises(StrategyError):
            s.check_model(task, arch)
    # regression_loss is RetinaNet's: set for FCOS (which keeps its GIoU + centerness), it is an error
    s = build_strategy("mial", {"regression_loss": "l1"})
    s.check_model("detection", "retinanet")
    with pytest.raises(StrategyError, match="regression_loss"):
        s.check_model("detection", "fcos")


# ---------------------------------------------------------------------------- scoring


def _adapter(num_classes: int = 2, seed: int = 0, arch: str = "retinanet") -> DetectionAdapter:
    """A fresh MIAL detector whose f1, f2 and f_mil are redrawn with a large spread: at
    torchvision's init (N(0, 0.01²) through four convs) f1 and f2 agree to ~1e-8, below
    float32 resolution of the probabilities, so scores would be rounding noise."""
    ad = detection_adapter(tiny_config(**{"model.arch": arch}).model, num_classes, "mial", "cpu", {})
    ad.reset(seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in ad.model.head.named_parameters():
            if name.startswith(("f1.", "f2.", "f_mil.")):
                std = (2.0 / p[0].numel()) ** 0.5 if p.dim() == 4 else 1.0
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return ad


def _reference_scores(ad: DetectionAdapter, ds, ids, k: int, squared: bool, weighting: str) -> dict[int, float]:
    """Straight from the head's outputs (channel 0 dropped here, MIL via the head's own method)."""
    out = {}
    model = ad.model.eval()
    with torch.no_grad():
        for i in ids:
            il, _ = model.transform([ds.load_image(i)])
            ho = model.head(list(model.backbone(il.tensors).values()))
            d = torch.sigmoid(ho["cls_logits"][0, :, 1:]).double() - torch.sigmoid(ho["cls_logits2"][0, :, 1:]).double()
            d = d * d if squared else d.abs()
            if weighting == "mil":
                d = d * model.head.instance_mil_scores(ho)[0].double()
            u = d.mean(1)
            out[i] = float(u.topk(min(k, u.numel())).values.mean())
    return out


@pytest.mark.parametrize("arch", ["retinanet", "fcos"])
@pytest.mark.parametrize("squared,weighting,k", [(False, "none", 50), (True, "mil", 10000)])
def test_scores_match_a_direct_computation(squared: bool, weighting: str, k: int, arch: str) -> None:
    ds = make_detection_dataset(n=5, seed=6)
    ad = _adapter(arch=arch)
    s = build_strategy("mial", {"top_k": k, "uncertainty": "squared" if squared else "abs",
                                "weighting": weighting, "batch_size": 2})
    pool = Pool.from_dataset(ds)
    got = s.score(ad, pool, ds.ids, np.random.default_rng(0))
    ref = _reference_scores(ad, ds, ds.ids, k, squared, weighting)
    assert set(got) == set(ds.ids)
    for i in ds.ids:
        assert got[i] == pytest.approx(ref[i], rel=1e-5, abs=1e-12)
    # batch size does not change scores
    s1 = build_strategy("mial", {**s.params, "batch_size": 1})
    assert s1.score(ad, pool, ds.ids, np.random.default_rng(0)) == pytest.approx(got, rel=1e-5)


def test_aggregate_max_and_mean_bound_topk() -> None:
    ds = make_detection_dataset(n=3, seed=7)
    ad, pool, rng = _adapter(), Pool.from_dataset(ds), np.random.default_rng(0)
    sc = {a: build_strategy("mial", {"aggregate": a, "top_k": 20}).score(ad, pool, ds.ids, rng)
          for a in ("topk", "mean", "max")}
    for i in ds.ids:
        assert sc["mean"][i] <= sc["topk"][i] + 1e-12 <= sc["max"][i] + 2e-12


def test_select_with_score_fraction_scores_a_seeded_subset() -> None:
    ds = make_detection_dataset(n=10, seed=8)
    ad, pool = _adapter(), Pool.from_dataset(ds)
    pool.add([1, 2], 0)
    s = build_strategy("mial", {"score_fraction": 0.5})
    chosen = s.select(ad, pool, 2, np.random.default_rng(3))
    a, scored = chosen.ids, dict(chosen.scores)
    assert len(scored) == 4 and set(scored) <= set(pool.unlabeled)
    assert a == sorted(scored, key=lambda i: -scored[i])[:2]
    assert s.select(ad, pool, 2, np.random.default_rng(3)) == chosen  # same seed, same selection
    every = build_strategy("mial").select(ad, pool, 8, np.random.default_rng(0))
    assert len(every.ids) == 8
    assert set(every.scores) == set(pool.unlabeled)


# ---------------------------------------------------------------------------- simulate


def _run_cfg(tmp: Path, num_classes: int, seed: int, **strategy):
    """A tiny MIAL simulate config; ``strategy`` keys over :data:`JOINT`."""
    train = make_detection_dataset(n=10, seed=seed, num_classes=num_classes, empty_every=3).export_coco(tmp / "train")
    test = make_detection_dataset(n=4, seed=seed + 1, num_classes=num_classes, start_id=500).export_coco(tmp / "test")
    return tiny_config(**{"dataset": {"train": str(train), "test": str(test)},
                          "train": {"batch_size": 2, "lr": 0.001},
                          "loop": {"initial": 2, "per_cycle": 2, "cycles": 2},
                          "strategy": {"name": "mial", **JOINT, **strategy}})


def _ranking(scores: dict[int, float]) -> list[int]:
    return sorted(scores, key=lambda i: (-scores[i], i))


@pytest.fixture(scope="module")
def two_class_run(tmp_path_factory) -> tuple[Path, object]:
    tmp = tmp_path_factory.mktemp("mial_run")
    cfg = _run_cfg(tmp, 2, 11, top_k=200)
    run(cfg, tmp / "run", progress=False)
    return tmp / "run", cfg


def test_two_cycle_run_records_stage_losses_and_scores(two_class_run) -> None:
    run_dir, cfg = two_class_run
    with Ledger(run_dir) as ledger:
        rounds = ledger.rounds()
        assert ledger.meta()["complete"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    empty = {3, 6, 9}  # every third image has no object
    pool_ids = set(range(1, 11))
    for r in rounds:
        stages = [h["stage"] for h in r["train_log"]]
        assert stages == ["label", "max", "min", "label"]
        assert all(math.isfinite(v) for h in r["train_log"] for k, v in h.items() if k != "stage")
        assert "unlabeled_discrepancy" in r["train_log"][1] and "unlabeled_mil" in r["train_log"][2]
        assert "AP50" in r["metrics"]
    # every unlabeled image of rounds 1, 2 was scored, empty ones included
    labeled_before = set(rounds[0]["selected"])
    for r in rounds[1:]:
        assert set(r["scores"]) == pool_ids - labeled_before
        assert r["selected"] == _ranking(r["scores"])[:2]
        labeled_before |= set(r["selected"])
    # the empty images took part: trained on as labeled images or scored as unlabeled ones
    assert empty <= set(rounds[0]["selected"]) | set(rounds[1]["scores"])


def test_rescoring_from_the_checkpoint_reproduces_the_ranking(two_class_run) -> None:
    run_dir, cfg = two_class_run
    with Ledger(run_dir) as ledger:
        rounds = ledger.rounds()
    exp = prepare(cfg)
    for r in (1, 2):
        recorded = rounds[r]["scores"]
        adapter = build_adapter(cfg, exp.train.num_classes, exp.strategy)  # fresh, nothing built
        load_checkpoint(adapter, run_dir / rounds[r - 1]["checkpoint"])
        again = exp.strategy.score(adapter, Pool.from_dataset(exp.train), sorted(recorded), np.random.default_rng(0))
        assert _ranking(again) == _ranking(recorded)
        assert again == pytest.approx(recorded, rel=1e-6)


def test_report_draws_heatmaps_of_the_top_scored_images(two_class_run, tmp_path, capsys) -> None:
    run_dir, _ = two_class_run
    assert main(["report", str(run_dir), "--out", str(tmp_path), "--heatmaps", "2"]) == 0
    pngs = sorted((tmp_path / "heatmaps").rglob("*.png"))
    with Ledger(run_dir) as ledger:
        last = ledger.rounds()[-1]
    top = _ranking(last["scores"])[:2]
    assert [int(p.stem.rsplit("id", 1)[1]) for p in pngs] == top
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_single_class_run_completes(tmp_path) -> None:
    cfg = _run_cfg(tmp_path, 1, 21, order="min_max", uncertainty="squared", weighting="mil")
    status = run(cfg, tmp_path / "run", progress=False)
    assert status["complete"] and [r["round"] for r in status["rounds"]] == [0, 1, 2]
    with Ledger(tmp_path / "run") as ledger:
        rounds = ledger.rounds()
    assert [h["stage"] for h in rounds[1]["train_log"]] == ["label", "min", "max", "label"]
    assert all(math.isfinite(v) for v in rounds[2]["scores"].values())
    assert json.loads(json.dumps(status))["rounds"][2]["metrics"] is not None


def test_fcos_two_cycle_simulate_on_builtin_shapes(tmp_path) -> None:
    """`activedet simulate` of a tiny FCOS + MIAL config: every stage trains (FCOS's centerness
    loss recorded), every unlabeled image of rounds 1 and 2 is scored, the top ones chosen."""
    cfg = tmp_path / "mial_fcos.yaml"
    cfg.write_text(
        "task: detection\ndevice: cpu\nseed: 0\n"
        "dataset: {train: 'builtin:shapes', options: {n_train: 12, n_test: 4, image_size: 64, num_classes: 2,"
        " max_objects: 2}}\n"
        "model: {arch: fcos, backbone: mobilenet_v2, pretrained: false, image_size: 64, score_thresh: 0.001}\n"
        "train: {epochs: 1, batch_size: 2, lr: 0.001}\n"
        "loop: {initial: 2, per_cycle: 2, cycles: 2, unit: images}\n"
        "strategy: {name: mial, detector: joint, label_epochs: 1, rounds: 1, repeat: 1, top_k: 20,"
        " batch_size: 4}\n")
    assert main(["simulate", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    with Ledger(tmp_path / "run") as ledger:
        assert ledger.meta()["complete"]
        rounds = ledger.rounds()
    assert [r["round"] for r in rounds] == [0, 1, 2]
    labeled = set(rounds[0]["selected"])
    for r in rounds:
        assert [h["stage"] for h in r["train_log"]] == ["label", "max", "min", "label"]
        assert all("bbox_ctrness" in h and math.isfinite(h["bbox_ctrness"]) for h in r["train_log"])
        assert "AP50" in r["metrics"]
    assert len(rounds[1]["scores"]) == 12 - 2 and not labeled & set(rounds[1]["scores"])
    assert set(rounds[2]["scores"]) == set(rounds[1]["scores"]) - set(rounds[1]["selected"])
    for r in rounds[1:]:
        assert all(math.isfinite(v) and v > 0 for v in r["scores"].values())
        assert r["selected"] == _ranking(r["scores"])[:2]


def test_separate_detector_scores_with_the_scorer_from_the_checkpoint(tmp_path) -> None:
    """The default ``detector: auto`` resolves to ``separate`` (IUL rounds to run) and the
    ledger records ``separate``: rounds record the detector's plain epochs and the scorer's
    stages; the recorded scores are the scorer's (re-scored from the checkpoint, which holds
    it) and not the detector's."""
    cfg = _run_cfg(tmp_path, 2, 31, top_k=200, detector="auto")
    cfg.loop.cycles = 1
    run(cfg, tmp_path / "run", progress=False)
    with Ledger(tmp_path / "run") as ledger:
        rounds = ledger.rounds()
        assert ledger.meta()["config"]["strategy"]["detector"] == "separate"
    epochs = cfg.train.epochs
    for r in rounds:
        assert [(h["stage"], h.get("model")) for h in r["train_log"]] == (
            [("train", None)] * epochs + [("max", "scorer"), ("min", "scorer"), ("label", "scorer")])
    exp = prepare(cfg)
    recorded = rounds[1]["scores"]
    adapter = build_adapter(cfg, exp.train.num_classes, exp.strategy)
    load_checkpoint(adapter, tmp_path / "run" / rounds[0]["checkpoint"])
    assert adapter.scorer is not None
    pool, ids = Pool.from_dataset(exp.train), sorted(recorded)
    assert exp.strategy.score(adapter, pool, ids, np.random.default_rng(0)) == pytest.approx(recorded, rel=1e-6)
    adapter.scorer = None  # the detector alone scores differently
    alone = exp.strategy.score(adapter, pool, ids, np.random.default_rng(0))
    assert alone != pytest.approx(recorded, rel=1e-6)
