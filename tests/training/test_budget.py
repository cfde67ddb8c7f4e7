"""Equal training budgets: the labeled-iteration count of every trainer, checked against the
schedules themselves, and every shipped config gives its strategy the full-lr labeled
iterations that random gets from the same file (issue 11, cause 2)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from activedet.config import TrainConfig, load_config
from activedet.errors import ConfigError
from activedet.loop.runner import resolve
from activedet.training.budget import labeled_budget, protocol_sizes
from activedet.training.trainer import lr_factor

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
@pytest.mark.parametrize("epochs,steps,n,bs,warm", [(12, [0.8], 20, 4, 10), (15, [0.8], 41, 4, 0),
                                                    (26, [0.77], 9, 2, 3), (5, [], 10, 3, 0), (10, [0.5, 0.9], 33, 8, 7)])
def test_plain_budget_counts_the_trainers_own_lr_schedule(epochs, steps, n, bs, warm) -> None:
    cfg = TrainConfig(epochs=epochs, lr_steps=steps, batch_size=bs, warmup_iters=warm)
    total = epochs * -(-n // bs)
    factors = [lr_factor(it, total, cfg) for it in range(total)]
    full = sum(1 for f in factors if f == 1.0)
    warmup = sum(1 for it, f in enumerate(factors) if it < warm and f < 1.0)
    b = labeled_budget("plain", cfg, {}, n)
    assert (b.full_lr, b.warmup, b.reduced_lr, b.unlabeled) == (full, warmup, total - full - warmup, 0)


def test_mial_budget_by_hand() -> None:
    # label 4 -> max 1 -> min 1 -> label 4 at lr x 0.1, every epoch twice; 40 images in batches
    # of 4 = 10 batches a pass: full (4 + 1 + 1) x 2 x 10, reduced 4 x 2 x 10, unlabeled 2 x 2 x 10
    params = {"detector": "joint", "label_epochs": 4, "rounds": 1, "max_epochs": 1, "min_epochs": 1, "repeat": 2}
    b = labeled_budget("mial", TrainConfig(batch_size=4), params, 40)
    assert b.as_dict() == {"full_lr": 120, "warmup": 0, "reduced_lr": 80, "unlabeled": 40, "scorer": 0}
    # a warm-up of 20 at the start and 10 more at the start of the max and of the min stage
    b = labeled_budget("mial", TrainConfig(batch_size=4, warmup_iters=20), {**params, "stage_warmup_iters": 10}, 40)
    assert b.as_dict() == {"full_lr": 80, "warmup": 40, "reduced_lr": 80, "unlabeled": 40, "scorer": 0}
    # the authors' VOC schedule: 3 + 2 x (1 + 1 + 3) label-set epochs x 2 = 26 passes, the last 3 x 2 decayed
    b = labeled_budget("mial", TrainConfig(batch_size=2), {"detector": "joint", "label_epochs": 3, "rounds": 2}, 2)
    assert b.as_dict() == {"full_lr": 20, "warmup": 0, "reduced_lr": 6, "unlabeled": 8, "scorer": 0}
    # a max stage at a lower lr counts as decayed
    b = labeled_budget("mial", TrainConfig(batch_size=1), {**params, "max_lr_scale": 0.5, "repeat": 1}, 1)
    assert b.as_dict() == {"full_lr": 5, "warmup": 0, "reduced_lr": 5, "unlabeled": 2, "scorer": 0}


def test_mial_separate_detector_budget_is_the_plain_trainers_plus_a_scorer() -> None:
    # the detector: train.epochs 10 over 40 images in batches of 4, lr x 0.1 from 80 %; the scorer:
    # max 1 -> min 1 -> label 4 at lr x 0.1, every epoch twice: (1 + 1 + 4) x 2 x 10 labeled,
    # (1 + 1) x 2 x 10 unlabeled, none of it warming up (the first-stage warm-up is the detector's)
    cfg = TrainConfig(batch_size=4, epochs=10, lr_steps=[0.8], warmup_iters=20)
    params = {"detector": "separate", "label_epochs": 4, "rounds": 1, "max_epochs": 1, "min_epochs": 1,
              "repeat": 2}
    plain = labeled_budget("plain", cfg, {}, 40)
    b = labeled_budget("mial", cfg, params, 40)
    assert b.as_dict() == {**plain.as_dict(), "unlabeled": 40, "scorer": 120}


def test_iul_budget_resolves_label_epochs_from_train_epochs() -> None:
    # label_epochs null: round(200 / 3) = 67; 67 + 2 x (5 + 5 + 67), the last 67 decayed
    b = labeled_budget("mial_iul", TrainConfig(epochs=200, batch_size=1),
                       {"rounds": 2, "max_epochs": 5, "min_epochs": 5}, 1)
    assert b.as_dict() == {"full_lr": 67 + 2 * 10 + 67, "warmup": 0, "reduced_lr": 67, "unlabeled": 20, "scorer": 0}


def test_bad_budget_arguments_are_named() -> None:
    with pytest.raises(ConfigError, match="n = 0"):
        labeled_budget("plain", TrainConfig(), {}, 0)
    with pytest.raises(ConfigError, match="unknown trainer 'mail'"):
        labeled_budget("mail", TrainConfig(), {}, 5)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_gives_its_strategy_randoms_labeled_iterations(path: Path) -> None:
    """Swapping ``strategy.name`` for ``random`` (what every config's comments tell a user to
    do for the baseline) must not change the labeled iterations of any round, at full lr nor
    decayed (extra low-lr fine-tuning is training too: MIAL given 6 decayed epochs to random's 2
    beat random on the same round-0 images, NOTES.md)."""
    cfg = load_config(path)
    strategy = resolve(cfg)
    base = load_config(path)
    base.strategy = dataclasses.replace(base.strategy, name="random", params={})
    random = resolve(base)
    for n in protocol_sizes(cfg.loop):
        ours = labeled_budget(strategy.trainer, cfg.train, strategy.params, n)
        theirs = labeled_budget(random.trainer, base.train, random.params, n)
        assert (ours.full_lr, ours.reduced_lr) == (theirs.full_lr, theirs.reduced_lr), (
            f"{path.name}: {cfg.strategy.name} trains {ours.full_lr} full-lr + {ours.reduced_lr} decayed "
            f"labeled iterations on {n} images, random {theirs.full_lr} + {theirs.reduced_lr}")
