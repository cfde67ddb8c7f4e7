"""The dead FCOS box branch on the shipped demo protocol, and the box prior that prevents it.

Seed 3's round 0 of ``configs/demo_shapes_random.yaml`` (20 images, 12 epochs) is a round
that collapsed before the fix: measured with ``benchmarks/training_health.py`` (NOTES.md),
its GIoU loss sat at exactly 1.000 for all 12 epochs and AP50 was 0.0. The same round with
the box prior trains healthily without needing a retry.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from activedet.config import config_from_dict
from activedet.loop.ledger import Ledger
from activedet.loop.runner import run

ROOT = Path(__file__).resolve().parents[2]


def _round0(tmp: Path, box_prior: float | None) -> dict:
    data = yaml.safe_load((ROOT / "configs" / "demo_shapes_random.yaml").read_text())
    data["seed"] = 3
    data["loop"]["cycles"] = 0
    data["model"]["box_prior"] = box_prior
    data["train"]["on_collapse"] = "warn"  # keep whatever trains, to look at it
    run(config_from_dict(data), tmp, progress=False)
    with Ledger(tmp) as ledger:
        return ledger.rounds()[0]


@pytest.mark.slow
def test_demo_round_that_collapsed_trains_with_the_box_prior(tmp_path: Path) -> None:
    dead = _round0(tmp_path / "torchvision_init", None)
    giou = [row["bbox_regression"] for row in dead["train_log"]]
    assert all(g == pytest.approx(1.0, abs=1e-3) for g in giou), giou
    assert dead["health"]["unhealthy"] and "dead" in dead["health"]["reason"]
    assert dead["metrics"]["AP50"] < 0.01

    alive = _round0(tmp_path / "box_prior", 1.0)
    giou = [row["bbox_regression"] for row in alive["train_log"]]
    assert giou[-1] < 0.4 < giou[0], giou
    assert not alive["health"]["unhealthy"] and len(alive["health"]["attempts"]) == 1
    assert alive["metrics"]["AP50"] > 0.5
