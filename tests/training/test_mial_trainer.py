"""MIAL's training schedule: settings, stage list, gradient isolation of the max / min
stages, and one end-to-end cycle on a tiny detection dataset."""

from __future__ import annotations

import math

import pytest
import torch

from activedet.errors import ConfigError
from activedet.models.detection_adapter import DetectionAdapter, detection_adapter
from activedet.models.mial_settings import MIALTrainSettings
from activedet.training.mial import (
    Stage,
    build_schedule,
    run_stage,
    stage_trainable,
    train_mial,
    unlabeled_subset,
)
from tests.conftest import make_detection_dataset, tiny_config



def _adapter(seed: int = 0, arch: str = "retinanet", **head_kwargs) -> DetectionAdapter:
    cfg = tiny_config(**{"model.arch": arch})
    ad = detection_adapter(cfg.model, 2, "mial", "cpu", head_kwargs)
    ad.reset(seed)
    return ad


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (batch-norm running statistics included), cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=False).items()}


def _is_f12(name: str) -> bool:
    return name.startswith(("head.f1.", "head.f2."))


# ---------------------------------------------------------------------------- settings


def test_settings_defaults_follow_the_notes() -> None:
    s = MIALTrainSettings.pick({})
    assert (s.lam, s.iul, s.iur, s.reweight, s.order) == (0.5, True, True, "mil", "max_min")
    assert (s.label_epochs, s.rounds, s.repeat, s.min_epochs, s.max_epochs) == (3, 2, 2, 1, 1)
    assert s.final_lr_scale == pytest.approx(0.1)
    assert (s.max_params, s.stage_warmup_iters) == ("head", 0)
    # keys of other components (selection settings) are ignored
    assert MIALTrainSettings.pick({"top_k": 5, "aggregate": "max"}) == s


@pytest.mark.parametrize("key,value", [("lambda", 0), ("lambda", "x"), ("order", "max_max"),
                                       ("rounds", -1), ("repeat", 1.5), ("iul", "yes"),
                                       ("reweight", "both"), ("pseudo_threshold", 1.5)])
def test_bad_settings_name_the_key(key: str, value) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        MIALTrainSettings.pick({key: value})


def test_mil_reweighting_needs_the_mil_head() -> None:
    with pytest.raises(ConfigError, match="reweight"):
        MIALTrainSettings.pick({"iur": False})
    assert MIALTrainSettings.pick({"iur": False, "reweight": "f1"}).reweight == "f1"


# ---------------------------------------------------------------------------- schedule


def _kinds(stages: list[Stage]) -> list[str]:
    return [st.kind for st in stages]


def test_schedule_order_rounds_and_final_lr() -> None:
    paper = build_schedule(MIALTrainSettings.pick({}))
    assert _kinds(paper) == ["label", "max", "min", "label", "max", "min", "label"]
    assert [st.round for st in paper] == [0, 1, 1, 1, 2, 2, 2]
    assert [st.lr_scale for st in paper] == [1.0] * 6 + [pytest.approx(0.1)]
    code = build_schedule(MIALTrainSettings.pick({"order": "min_max", "rounds": 1}))
    assert _kinds(code) == ["label", "min", "max", "label"]
    # 26 passes over the labeled set per cycle at the defaults (notes: "≈ 26 passes")
    s = MIALTrainSettings.pick({})
    assert sum(st.epochs for st in paper) * s.repeat == 26
    no_iul = build_schedule(MIALTrainSettings.pick({"iul": False}))
    assert _kinds(no_iul) == ["label"] * 3  # same number of label epochs, no min/max
    no_max = build_schedule(MIALTrainSettings.pick({"max_epochs": 0, "rounds": 1}))
    assert _kinds(no_max) == ["label", "min", "label"]


def test_unlabeled_subset_is_sized_like_the_labeled_set() -> None:
    pool = list(range(100, 140))
    a = unlabeled_subset([1, 2, 3, 4, 5], pool, torch.Generator().manual_seed(7))
    b = unlabeled_subset([1, 2, 3, 4, 5], pool, torch.Generator().manual_seed(7))
    c = unlabeled_subset([1, 2, 3, 4, 5], pool, torch.Generator().manual_seed(8))
    assert a == b and a != c
    assert len(a) == 5 and len(set(a)) == 5 and set(a) <= set(pool) and a == sorted(a)
    assert unlabeled_subset(list(range(50)), pool, torch.Generator()) == pool  # pool smaller: all of it
    assert unlabeled_subset([1], [], torch.Generator()) == []


# ---------------------------------------------------------------------------- isolation


@pytest.mark.parametrize("arch", ["retinanet", "fcos"])
def test_stage_trainable_partitions_the_parameters(arch: str) -> None:
    ad = _adapter(arch=arch)
    names = [n for n, _ in ad.model.named_parameters()]
    mx, mn, lb = (stage_trainable(ad.model, k, "classifiers") for k in ("max", "min", "label"))
    assert all(lb.values())
    assert {n for n in names if mx[n]} == {n for n in names if _is_f12(n)}
    assert all(mx[n] != mn[n] for n in names)
    head = stage_trainable(ad.model, "max")  # paper Eq. 8 (default): all but the feature extractor
    assert {n for n in names if head[n]} == {n for n in names if n.startswith("head.")}
    assert stage_trainable(ad.model, "min") == mn
    assert any(n.startswith("head.f_mil.") for n in names if mn[n])
    assert any(n.startswith("backbone.") for n in names if mn[n])
    if arch == "fcos":  # FCOS's box branch holds the centerness: head in the max stage, trained in min
        assert head["head.regression_head.bbox_ctrness.weight"] and mn["head.regression_head.bbox_ctrness.weight"]


@pytest.mark.parametrize("arch", ["retinanet", "fcos"])
@pytest.mark.parametrize(("kind", "max_params"), [("max", "classifiers"), ("max", "head"), ("min", "head")])
def test_stage_updates_exactly_its_parameters(kind: str, max_params: str, arch: str) -> None:
    """Max (Eq. 8): the head moves (max_params head), or only f1/f2 (classifiers). Min
    (Eq. 9): f1/f2 stay, everything else moves. Frozen tensors, buffers included, stay
    bit-identical."""
    ds = make_detection_dataset(n=6, seed=3, empty_every=3)
    ad = _adapter(arch=arch)
    cfg = tiny_config(**{"train.batch_size": 2, "train.lr": 0.01}).train
    s = MIALTrainSettings.pick({"repeat": 1, "max_params": max_params})
    flags = {n: p.requires_grad for n, p in ad.model.named_parameters()}
    before = _snapshot(ad.model)
    rows, images = run_stage(ad, ds, Stage(kind, 1, 1.0, 1), [1, 2], [3, 6], cfg, s,
                             torch.Generator().manual_seed(0))
    after = _snapshot(ad.model)
    params = {n for n, _ in ad.model.named_parameters()}
    if kind == "max" and max_params == "head":
        should_move = {n for n in params if flags[n] and n.startswith("head.")}
    else:
        should_move = {n for n in params if flags[n] and (_is_f12(n) == (kind == "max"))}
    assert should_move  # the stage has something to train
    for name in before:
        moved = not torch.equal(before[name], after[name])
        if name in should_move:
            assert moved, f"{kind} stage left {name} unchanged"
        elif name in params or kind == "max":  # max: every buffer too (frozen BN statistics)
            assert not moved, f"{kind} stage changed {name}"
    # flags are restored, nothing is left with a gradient
    assert {n: p.requires_grad for n, p in ad.model.named_parameters()} == flags
    assert all(p.grad is None for p in ad.model.parameters())
    assert images == 4 and len(rows) == 1
    row = rows[0]
    assert row["stage"] == kind and math.isfinite(row["unlabeled_discrepancy"])
    assert {"classification", "bbox_regression", "mil"} <= set(row)
    assert ("bbox_ctrness" in row) == (arch == "fcos")
    assert ("unlabeled_mil" in row) == (kind == "min")


def test_paired_stage_without_unlabeled_images_is_an_error() -> None:
    ad = _adapter()
    cfg = tiny_config().train
    with pytest.raises(Exception, match="unlabeled"):
        run_stage(ad, make_detection_dataset(n=4), Stage("max", 1, 1.0, 1), [1, 2], [], cfg,
                  MIALTrainSettings.pick({}), torch.Generator())


# ---------------------------------------------------------------------------- end to end


def test_train_mial_one_cycle_records_every_stage() -> None:
    ds = make_detection_dataset(n=10, seed=4)
    ad = _adapter(seed=1)
    cfg = tiny_config(**{"train.batch_size": 2}).train
    params = {"detector": "joint", "label_epochs": 1, "rounds": 1, "repeat": 1, "order": "min_max", "top_k": 3}
    result = train_mial(ad, ds, [1, 2, 3, 4], [5, 6, 7, 8, 9, 10], cfg, params, seed=0, progress=False)
    assert [h["stage"] for h in result.history] == ["label", "min", "max", "label"]
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert [h["lr"] for h in result.history] == [pytest.approx(v) for v in (1e-3, 1e-3, 1e-3, 1e-4)]
    for h in result.history:
        for k, v in h.items():
            if k not in ("stage",):
                assert math.isfinite(v), (k, v)
    assert "unlabeled_discrepancy" in result.history[1] and "unlabeled_mil" in result.history[1]
    # label 4 + min (4 labeled + 4 unlabeled) + max (4 + 4) + label 4
    assert result.images == 24 and result.seconds > 0
    assert all(p.grad is None for p in ad.model.parameters())


def test_train_mial_without_iul_or_unlabeled_pool_trains_on_labels_only() -> None:
    ds = make_detection_dataset(n=4, seed=5)
    ad = _adapter(seed=2, use_mil=False)
    cfg = tiny_config(**{"train.batch_size": 2}).train
    res = train_mial(ad, ds, [1, 2], [], cfg, {"detector": "joint", "label_epochs": 1, "rounds": 1, "repeat": 1,
                                               "iur": False, "reweight": "none"}, seed=0, progress=False)
    assert [h["stage"] for h in res.history] == ["label", "label"]
    assert "mil" not in res.history[0]
    with pytest.raises(ConfigError, match="MIL"):
        train_mial(ad, ds, [1, 2], [3], cfg, {"rounds": 0}, seed=0, progress=False)


def test_same_seed_same_weights() -> None:
    ds = make_detection_dataset(n=4, seed=9)
    cfg = tiny_config(**{"train.batch_size": 2}).train
    params = {"detector": "joint", "label_epochs": 1, "rounds": 1, "repeat": 1, "max_epochs": 0}  # label, min, label
    states = []
    for seed in (5, 5, 6):
        ad = _adapter(seed=1)
        train_mial(ad, ds, [1, 2], [3, 4], cfg, params, seed=seed, progress=False)
        states.append(_snapshot(ad.model))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


@pytest.mark.parametrize("warmup", [0, 3])
def test_every_later_stage_warms_up(monkeypatch, warmup: int) -> None:
    """Each stage builds a fresh optimizer; its first ``stage_warmup_iters`` steps ramp the lr."""
    import activedet.training.mial as M

    steps: list[tuple[int, float]] = []
    real = M.guarded_step

    def spy(opt, losses, it, step_lr, cfg, where, *rest):
        if "unlabeled" not in where:
            steps.append((it, step_lr))
        return real(opt, losses, it, step_lr, cfg, where, *rest)

    monkeypatch.setattr(M, "guarded_step", spy)
    ds = make_detection_dataset(n=10, seed=4)
    cfg = tiny_config(**{"train.batch_size": 2, "train.lr": 0.01}).train
    params = {"detector": "joint", "label_epochs": 1, "rounds": 1, "repeat": 1, "stage_warmup_iters": warmup,
              "final_lr_scale": 1.0}
    train_mial(_adapter(seed=1), ds, [1, 2, 3, 4, 5, 6], [7, 8, 9, 10], cfg, params, seed=0, progress=False)
    stages = [[lr for it, lr in steps[k:k + 3]] for k in range(0, len(steps), 3)]  # 3 batches per stage
    assert len(stages) == 4  # label, max, min, label
    for lrs in stages[1:]:
        if warmup == 0:
            assert lrs == [pytest.approx(0.01)] * 3
        else:
            assert lrs[0] == pytest.approx(0.01 * 0.001) and lrs[0] < lrs[1] < lrs[2] < 0.01


@pytest.mark.parametrize(("train_clip", "params", "expected"), [
    (None, {}, 10.0),                                  # the max/min stages' own bound
    (None, {"discrepancy_grad_clip": None}, None),     # turned off
    (3.0, {}, 3.0),                                    # train.grad_clip, when set, applies instead
])
def test_max_and_min_stages_clip_the_gradient(monkeypatch, train_clip, params, expected) -> None:
    """The summed discrepancy's gradient grows with the anchor count: the max and min stages
    clip at ``discrepancy_grad_clip`` unless ``train.grad_clip`` is set; label stages keep
    ``train.grad_clip``."""
    import activedet.training.mial as M

    clips: dict[str, set] = {}
    real = M.guarded_step

    def spy(opt, losses, it, step_lr, cfg, where, *rest):
        clips.setdefault(where.split()[1], set()).add(cfg.grad_clip)
        return real(opt, losses, it, step_lr, cfg, where, *rest)

    monkeypatch.setattr(M, "guarded_step", spy)
    ds = make_detection_dataset(n=8, seed=4)
    cfg = tiny_config(**{"train.batch_size": 2, "train.lr": 0.01, "train.grad_clip": train_clip}).train
    train_mial(_adapter(seed=1), ds, [1, 2, 3, 4], [5, 6, 7, 8], cfg,
               {"detector": "joint", "label_epochs": 1, "rounds": 1, "repeat": 1, **params}, seed=0, progress=False)
    assert clips == {"label": {train_clip}, "max": {expected}, "min": {expected}}


# ---------------------------------------------------------------------------- detector: separate


def test_separate_detector_trains_as_the_plain_trainer_and_a_copy_scores() -> None:
    """``detector: separate``: the detector's weights are exactly the plain trainer's on the
    same model and seed (random's budget); the scorer is a trained copy that differs; both
    travel in the adapter's state dict and come back from it."""
    from activedet.training.trainer import train_plain

    ds = make_detection_dataset(n=10, seed=4)
    cfg = tiny_config(**{"train.batch_size": 2, "train.epochs": 2}).train
    params = {"detector": "separate", "label_epochs": 1, "rounds": 1, "repeat": 1}
    ad = _adapter(seed=1)
    result = train_mial(ad, ds, [1, 2, 3, 4], [5, 6, 7, 8, 9, 10], cfg, params, seed=0, progress=False)
    plain = _adapter(seed=1)
    train_plain(plain, ds, [1, 2, 3, 4], [], cfg, params, seed=0, progress=False)
    det, ref = _snapshot(ad.model), _snapshot(plain.model)
    assert det.keys() == ref.keys() and all(torch.equal(det[k], ref[k]) for k in det)
    assert ad.scorer is not None
    sc = _snapshot(ad.scorer)
    assert not all(torch.equal(sc[k], det[k]) for k in det)
    # history: the detector's epochs, then the scorer's max, min, label (at final_lr_scale)
    assert [(h["stage"], h.get("model")) for h in result.history] == [
        ("train", None), ("train", None), ("max", "scorer"), ("min", "scorer"), ("label", "scorer")]
    assert result.history[-1]["lr"] == pytest.approx(cfg.lr * 0.1)
    # the checkpoint layout: detector keys as they are, the scorer's under "scorer."
    state = ad.state_dict()
    assert len(state) == 2 * len(det)
    back = _adapter(seed=7)
    back.load_state_dict(state)
    assert all(torch.equal(_snapshot(back.model)[k], det[k]) for k in det)
    assert all(torch.equal(_snapshot(back.scorer)[k], sc[k]) for k in sc)
    assert back.scoring().model is back.scorer and back.scoring().scorer is None
    back.load_state_dict(ref)  # a checkpoint without a scorer drops the one held
    assert back.scorer is None and back.scoring() is back
    back.reset(3)
    assert back.scorer is None


def test_separate_detector_without_unlabeled_images_has_no_scorer() -> None:
    ds = make_detection_dataset(n=4, seed=5)
    cfg = tiny_config(**{"train.batch_size": 2, "train.epochs": 1}).train
    ad = _adapter(seed=2)
    ad.scorer = ad.model  # a stale scorer from an earlier round must not survive
    res = train_mial(ad, ds, [1, 2], [], cfg, {"detector": "separate", "rounds": 1}, seed=0, progress=False)
    assert ad.scorer is None and [h["stage"] for h in res.history] == ["train"]


@pytest.mark.parametrize("params,resolved", [({}, "separate"), ({"rounds": 0}, "joint"), ({"iul": False}, "joint"),
                                             ({"max_epochs": 0, "min_epochs": 0}, "joint"),
                                             ({"max_epochs": 0}, "separate"), ({"detector": "joint"}, "joint")])
def test_detector_auto_is_separate_when_there_are_iul_rounds(params, resolved) -> None:
    s = MIALTrainSettings.pick({"detector": "auto", **params})
    assert s.detector == resolved and s.to_dict()["detector"] == resolved
    assert MIALTrainSettings.pick(params).detector == resolved  # auto is the default


def test_separate_detector_needs_iul_rounds() -> None:
    for bad in ({"iul": False}, {"rounds": 0}, {"max_epochs": 0, "min_epochs": 0}):
        with pytest.raises(ConfigError, match="'detector' = 'separate'"):
            MIALTrainSettings.pick({"detector": "separate", **bad})
