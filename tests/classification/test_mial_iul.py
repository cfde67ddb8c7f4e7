"""MIAL's instance uncertainty learning for classifiers: losses, stages, trainer, strategy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activedet.config import ModelConfig, TrainConfig, config_from_dict
from activedet.data.base import ClassificationDataset
from activedet.data.classification import load_digits
from activedet.data.pool import Pool
from activedet.errors import ConfigError, StrategyError
from activedet.loop.runner import prepare
from activedet.models.classifier import ClassificationAdapter
from activedet.strategies.mial_iul import MIALIULStrategy, head_discrepancy
from activedet.strategies.registry import available, build_strategy
from activedet.training.mial import Stage
from activedet.training.mial_iul import (discrepancy, iul_settings, run_stage, train_mial_iul,
                                         unlabeled_loss)
from activedet.training.trainer import get_trainer


@pytest.fixture(scope="module")
def digits() -> ClassificationDataset:
    return load_digits("train", {"n_train": 200, "size": 16, "seed": 0})


def _adapter(variant: str = "mial") -> ClassificationAdapter:
    return ClassificationAdapter(ModelConfig(arch="small_cnn", image_size=16), 10, variant=variant)


def _eval_discrepancy(adapter: ClassificationAdapter, ds: ClassificationDataset, ids: list[int]) -> float:
    infs = list(adapter.infer(ds, ids, 64))
    p1 = torch.stack([i.extra["probs1"] for i in infs])
    p2 = torch.stack([i.extra["probs2"] for i in infs])
    return float(head_discrepancy(p1, p2).mean())


# ---------------------------------------------------------------------- maths
def test_discrepancy_and_losses_match_numpy_reference() -> None:
    g = torch.Generator().manual_seed(0)
    l1, l2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    e1 = np.exp(l1.numpy() - l1.numpy().max(1, keepdims=True))
    e2 = np.exp(l2.numpy() - l2.numpy().max(1, keepdims=True))
    p1, p2 = e1 / e1.sum(1, keepdims=True), e2 / e2.sum(1, keepdims=True)
    ref = np.abs(p1 - p2).mean(1)
    np.testing.assert_allclose(discrepancy(l1, l2).numpy(), ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(head_discrepancy(p1, p2), ref, rtol=1e-6)
    lam = 0.7
    lmax = unlabeled_loss(l1, l2, "max", lam)["discrepancy"]
    lmin = unlabeled_loss(l1, l2, "min", lam)["discrepancy"]
    assert float(lmin) == pytest.approx(lam * ref.mean(), rel=1e-5)
    assert float(lmax) == pytest.approx(lam * (1 - ref.mean()), rel=1e-5)
    # the two stages push the discrepancy in opposite directions
    a = l1.clone().requires_grad_(True)
    ga_max, = torch.autograd.grad(unlabeled_loss(a, l2, "max", lam)["discrepancy"], a)
    ga_min, = torch.autograd.grad(unlabeled_loss(a, l2, "min", lam)["discrepancy"], a)
    torch.testing.assert_close(ga_max, -ga_min)
    assert float(discrepancy(l1, l1).abs().max()) == 0.0
    with pytest.raises(ValueError):
        unlabeled_loss(l1, l2, "label", lam)
    with pytest.raises(ValueError):
        discrepancy(l1, l2[:, :3])


def test_settings_defaults_and_bad_keys() -> None:
    s = iul_settings({}, epochs=9)
    assert (s.label_epochs, s.rounds, s.lam, s.iul) == (3, 2, 0.5, True)
    assert iul_settings({"rounds": 0}, epochs=9).label_epochs == 9
    assert iul_settings({"label_epochs": 4, "batch_size": 3}, epochs=9).label_epochs == 4
    for key, bad in (("lambda", -1), ("rounds", -1), ("order", "sideways"), ("iul", "yes")):
        with pytest.raises(ConfigError, match=key):
            iul_settings({key: bad}, epochs=9)


# ---------------------------------------------------------------------- stages
def _snapshot(adapter: ClassificationAdapter) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in adapter.model.state_dict().items()}


@pytest.mark.parametrize("kind", ["max", "min"])
def test_stage_updates_only_its_parameters(digits: ClassificationDataset, kind: str) -> None:
    adapter = _adapter()
    ids = digits.ids
    before = _snapshot(adapter)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05)
    rows, n = run_stage(adapter, digits, Stage(kind, 1, 1.0, 1), ids[:32], ids[32:64], cfg,
                        iul_settings({}, 1), torch.Generator().manual_seed(0))
    after = adapter.model.state_dict()
    head = {k for k in before if k.startswith(("fc1.", "fc2."))}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if kind == "max":  # heads only; body weights and batch-norm statistics untouched
        assert changed == head
    else:  # heads frozen, feature extractor (weights and BN statistics) moves
        assert not changed & head
        assert any(k.endswith("weight") for k in changed) and any(k.endswith("running_mean") for k in changed)
    assert n == 64 and rows[0]["stage"] == kind and 0 <= rows[0]["discrepancy"] <= 0.2
    assert all(p.requires_grad for p in adapter.model.parameters())  # restored
    assert adapter.model.training and adapter.model.body.training


def test_max_raises_and_min_lowers_the_discrepancy(digits: ClassificationDataset) -> None:
    adapter = _adapter()
    ids = digits.ids
    lab, unl = ids[:64], ids[64:128]
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05)
    s = iul_settings({"lambda": 20.0}, 1)
    g = torch.Generator().manual_seed(0)
    run_stage(adapter, digits, Stage("label", 3, 1.0, 0), lab, unl, cfg, s, g)
    d0 = _eval_discrepancy(adapter, digits, unl)
    run_stage(adapter, digits, Stage("max", 1, 1.0, 1), lab, unl, cfg, s, g)
    d1 = _eval_discrepancy(adapter, digits, unl)
    assert d1 > 3 * d0
    # min: the first epoch also moves the batch-norm statistics (the max stage froze them),
    # so compare from there on
    run_stage(adapter, digits, Stage("min", 1, 1.0, 1), lab, unl, cfg, s, g)
    d2 = _eval_discrepancy(adapter, digits, unl)
    rows, _ = run_stage(adapter, digits, Stage("min", 3, 1.0, 1), lab, unl, cfg, s, g)
    d3 = _eval_discrepancy(adapter, digits, unl)
    assert d3 < d2
    train_d = [r["discrepancy"] for r in rows]
    assert train_d[-1] < train_d[0]


# ---------------------------------------------------------------------- trainer
def test_trainer_schedule_determinism_and_no_iul(digits: ClassificationDataset) -> None:
    assert get_trainer("mial_iul") is train_mial_iul
    ids = digits.ids
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.05)
    params = {"rounds": 1, "lambda": 0.5}
    a, b = _adapter(), _adapter()
    ra = train_mial_iul(a, digits, ids[:24], ids[24:], cfg, params, seed=5, progress=False)
    rb = train_mial_iul(b, digits, ids[:24], ids[24:], cfg, params, seed=5, progress=False)
    assert [h["stage"] for h in ra.history] == ["label", "label", "max", "min", "label", "label"]
    assert [h["lr"] for h in ra.history][-2:] == pytest.approx([0.005, 0.005])
    assert ra.history == rb.history
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ra.images == 24 * 6 + 24 * 2  # labeled every epoch, plus unlabeled in max and min
    c = _adapter()
    rc = train_mial_iul(c, digits, ids[:24], ids[24:], cfg, {**params, "iul": False}, seed=5, progress=False)
    assert [h["stage"] for h in rc.history] == ["label"] * 4
    # no unlabeled images left: label-set training only
    rd = train_mial_iul(_adapter(), digits, ids[:24], [], cfg, params, seed=5, progress=False)
    assert [h["stage"] for h in rd.history] == ["label"] * 4


def test_trainer_refuses_a_plain_classifier(digits: ClassificationDataset) -> None:
    with pytest.raises(ConfigError, match="variant 'mial'"):
        train_mial_iul(_adapter("plain"), digits, digits.ids[:8], digits.ids[8:], TrainConfig(epochs=1),
                       {}, seed=0, progress=False)


# ---------------------------------------------------------------------- strategy
def test_strategy_scores_are_the_head_discrepancy(digits: ClassificationDataset) -> None:
    strat = build_strategy("mial_iul", {"batch_size": 32})
    assert isinstance(strat, MIALIULStrategy)
    assert (strat.model_variant, strat.trainer, strat.tasks) == ("mial", "mial_iul", ("classification",))
    adapter = _adapter()
    train_mial_iul(adapter, digits, digits.ids[:32], digits.ids[32:], TrainConfig(epochs=2, batch_size=16, lr=0.05),
                   {"rounds": 1}, seed=0, progress=False)
    pool = Pool.from_dataset(digits)
    pool.add(digits.ids[:32], 0)
    chosen = strat.select(adapter, pool, 10, np.random.default_rng(0))
    picked = chosen.ids
    unl = pool.unlabeled
    infs = {i.image_id: i for i in adapter.infer(digits, unl, 64)}
    ref = {i: float(np.abs(infs[i].extra["probs1"].numpy() - infs[i].extra["probs2"].numpy()).mean())
           for i in unl}
    assert set(chosen.scores) == set(unl)
    for i in unl:
        assert chosen.scores[i] == pytest.approx(ref[i], rel=1e-5, abs=1e-8)
    top = sorted(unl, key=lambda i: -ref[i])[:10]
    assert sorted(picked) == sorted(top)
    with pytest.raises(ConfigError, match="variant 'mial'"):
        strat.select(_adapter("plain"), pool, 3, np.random.default_rng(0)).ids
    # selection: random (MIAL Table 2 protocol): a seeded permutation of the unlabeled pool
    rand = build_strategy("mial_iul", {"selection": "random"})
    drawn = rand.select(adapter, pool, 10, np.random.default_rng(3))
    got = drawn.ids
    perm = np.random.default_rng(3).permutation(len(unl))
    assert got == [unl[j] for j in perm[:10]] and drawn.scores == {}


def test_strategy_bad_keys() -> None:
    with pytest.raises(ConfigError, match="lambda"):
        build_strategy("mial_iul", {"lambda": 0})
    with pytest.raises(ConfigError, match="batch_size"):
        build_strategy("mial_iul", {"batch_size": 0})
    with pytest.raises(ConfigError, match="selection"):
        build_strategy("mial_iul", {"selection": "best"})
    with pytest.raises(ConfigError, match="strategy.bogus"):
        build_strategy("mial_iul", {"bogus": 1})


# ---------------------------------------------------------------------- which strategies apply
def _cls_config(strategy: str) -> dict:
    return {"task": "classification", "device": "cpu",
            "dataset": {"train": "builtin:digits", "options": {"n_train": 60, "n_test": 30, "size": 16}},
            "model": {"arch": "small_cnn", "image_size": 16},
            "train": {"epochs": 1, "batch_size": 16},
            "loop": {"initial": 10, "per_cycle": 10, "cycles": 1}, "strategy": {"name": strategy}}


def test_strategies_that_cannot_classify_fail_in_prepare_with_a_clear_error() -> None:
    detection_only = [name for name, cls in available().items() if "classification" not in cls.tasks]
    for name in detection_only:
        with pytest.raises(StrategyError, match=f"strategy '{name}' does not apply to task 'classification'"):
            prepare(config_from_dict(_cls_config(name)))
    for name, cls in available().items():
        if "classification" in cls.tasks and (cls.archs is None or "small_cnn" in cls.archs):
            prepare(config_from_dict(_cls_config(name)))  # no error
    det = {"task": "detection", "device": "cpu", "dataset": {"train": "builtin:shapes"},
           "model": {"arch": "retinanet"}, "strategy": {"name": "mial_iul"}}
    with pytest.raises(StrategyError, match="strategy 'mial_iul' does not apply to task 'detection'"):
        prepare(config_from_dict(det))
