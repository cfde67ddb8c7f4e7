"""Every shipped config loads, names a registered strategy that accepts its settings and
model, and (for built-in data) has budgets the pool can pay."""

from __future__ import annotations

from pathlib import Path

import pytest

from activedet.config import load_config
from activedet.strategies.registry import build_strategy

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_exist() -> None:
    names = {p.name for p in CONFIGS}
    assert {"demo_shapes_random.yaml", "demo_shapes_entropy.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid(path: Path) -> None:
    cfg = load_config(path)
    strategy = build_strategy(cfg.strategy.name, cfg.strategy.params)
    strategy.check_model(cfg.task, cfg.model.arch)
