"""Every classification config in configs/ loads, names a classification strategy and
fits its dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from activedet.config import load_config
from activedet.errors import DatasetError
from activedet.loop.runner import prepare
from activedet.strategies.registry import build_strategy

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("cls_*.yaml"))


def test_the_expected_configs_exist() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"cls_cpu_digits", "cls_cpu_fashion_random", "cls_cpu_fashion_entropy",
            "cls_cifar10_isal_protocol"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_its_strategy_builds(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.task == "classification" and cfg.model.arch in ("small_cnn", "resnet18")
    strategy = build_strategy(cfg.strategy.name, cfg.strategy.params)
    strategy.check_model(cfg.task, cfg.model.arch)
    if cfg.dataset.train.startswith("builtin:"):
        exp = prepare(cfg)  # budgets fit the pool
        assert len(exp.pool.ids) >= cfg.loop.initial + cfg.loop.cycles * cfg.loop.per_cycle
    else:  # full-scale CIFAR configs carry a placeholder path: a clear error naming it
        with pytest.raises(DatasetError, match="cifar-10-batches-py"):
            prepare(cfg)


def test_cifar_protocol_matches_isal() -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "cls_cifar10_isal_protocol.yaml")
    t, loop = cfg.train, cfg.loop
    assert (t.epochs, t.batch_size, t.lr, t.momentum, t.weight_decay, t.lr_steps, t.hflip) == \
        (200, 128, 0.1, 0.9, 0.0005, [0.8], True)
    assert (loop.initial, loop.per_cycle, loop.cycles, loop.reinit) == (1000, 1000, 9, True)
    assert cfg.model.arch == "resnet18" and cfg.strategy.name == "isal"
