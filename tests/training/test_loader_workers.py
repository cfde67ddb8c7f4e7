"""Training batches decoded ahead by loader processes (``dataset.workers``) train exactly the
weights that batches read in the main process train: the same pixels, the same draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activedet.models.factory import build_adapter
from activedet.strategies.registry import build_strategy
from activedet.training.mial import train_mial
from activedet.training.trainer import train_plain
from tests.conftest import make_detection_dataset, tiny_config


def _weights(ad) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in ad.model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]


@pytest.mark.parametrize("trainer", ["plain", "mial"])
def test_training_with_loader_workers_is_bit_identical(trainer: str) -> None:
    data = make_detection_dataset(12, seed=4)
    labeled, unlabeled = list(data.ids[:6]), list(data.ids[6:])
    cfg = tiny_config(**{"train.epochs": 2, "train.batch_size": 2, "train.hflip": True})
    params = {"label_epochs": 1, "rounds": 1, "max_epochs": 1, "min_epochs": 1, "repeat": 1, "detector": "joint"}
    strategy = build_strategy("mial", params) if trainer == "mial" else None
    out = []
    for workers in (0, 2):
        ad = build_adapter(cfg, 2, strategy)
        ad.reset(0)
        ad.workers = workers
        if trainer == "mial":
            train_mial(ad, data, labeled, unlabeled, cfg.train, strategy.params, 5, False)
        else:
            train_plain(ad, data, labeled, unlabeled, cfg.train, {}, 5, False)
        out.append(_weights(ad))
    _same(*out)
    assert not all(torch.equal(v, w) for v, w in zip(out[0].values(), _weights_at_init(cfg, strategy).values()))


def _weights_at_init(cfg, strategy) -> dict[str, torch.Tensor]:
    ad = build_adapter(cfg, 2, strategy)
    ad.reset(0)
    return _weights(ad)


def test_classifier_training_with_loader_workers_is_bit_identical(tmp_path) -> None:
    from activedet.data.builtin import load_builtin

    digits = load_builtin("digits", "train", {"size": 16})
    ids = list(digits.ids[:24])
    cfg = tiny_config(**{"task": "classification", "model.arch": "small_cnn", "model.image_size": 16,
                         "model.pretrained": False, "train.epochs": 2, "train.batch_size": 8,
                         "train.hflip": True})
    out = []
    for workers in (0, 2):
        ad = build_adapter(cfg, 10)
        ad.reset(0)
        ad.workers = workers
        train_plain(ad, digits, ids, [], cfg.train, {}, 3, False)
        out.append(_weights(ad))
    _same(*out)
    assert np.isfinite(sum(float(v.float().sum()) for v in out[0].values()))
