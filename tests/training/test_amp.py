"""train.amp: on CPU it is ignored with one warning and training is float32 (the same
weights as without it). The CUDA path (float16 autocast + GradScaler) needs a GPU: it is
not exercised here."""

from __future__ import annotations

import logging

import pytest
import torch

from activedet.config import config_from_dict
from activedet.errors import ConfigError
from activedet.models.factory import build_adapter
from activedet.strategies.registry import build_strategy
from activedet.training import trainer as T
from activedet.training.mial import train_mial
from tests.conftest import make_detection_dataset, tiny_config


def _train(amp: bool, trainer=T.train_plain, strategy: str = "entropy", params: dict | None = None) -> dict:
    data = make_detection_dataset(n=8, seed=2)
    strat = build_strategy(strategy, params or {})
    cfg = tiny_config(**{"train.amp": amp, "train.batch_size": 2, "train.grad_clip": 10.0})
    adapter = build_adapter(cfg, data.num_classes, strat)
    adapter.reset(1)
    trainer(adapter, data, data.ids[:4], data.ids[4:], cfg.train, strat.params, 3, False)
    return adapter.state_dict()


def test_amp_on_cpu_is_ignored_with_one_warning_and_trains_in_float32(caplog) -> None:
    T._warn_amp_ignored.cache_clear()
    with caplog.at_level(logging.WARNING, logger="activedet.training.trainer"):
        on = _train(True)
        _train(True)
    warnings = [r.message for r in caplog.records if "train.amp" in r.message]
    assert warnings == ["train.amp is ignored on cpu (mixed precision runs on CUDA only): training in float32"]
    off = _train(False)
    assert on.keys() == off.keys()
    assert all(torch.equal(on[k], off[k]) for k in on)
    assert all(v.dtype != torch.float16 for v in on.values())


def test_amp_on_cpu_mial_stages_train_as_without_it() -> None:
    params = {"label_epochs": 1, "rounds": 1, "repeat": 1}
    on = _train(True, train_mial, "mial", params)
    off = _train(False, train_mial, "mial", params)
    assert all(torch.equal(on[k], off[k]) for k in on)


def test_precision_is_off_on_cpu_and_the_scaler_passes_through() -> None:
    p = T.Precision(False, "cpu")
    assert not p.enabled and not p.scaler.is_enabled()
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = torch.optim.SGD([w], lr=0.5)
    T.sgd_step(opt, (3 * w).sum(), None, p.scaler)
    assert w.item() == pytest.approx(1.0 - 0.5 * 3)


def test_amp_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="amp"):
        config_from_dict({"train": {"amp": "yes"}})
