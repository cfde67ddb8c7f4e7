"""Tiny run configs and helpers for the reliability tests."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from activedet.loop.ledger import Ledger

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch) -> Path:
    """The image-verification cache of each test in its own tmp dir."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ACTIVEDET_CACHE_DIR", str(cache))
    return cache


def shapes_config(tmp: Path, name: str = "cfg.yaml", cycles: int = 2, epochs: int = 1,
                  strategy: str = "entropy") -> Path:
    """Built-in shapes, FCOS + MobileNetV2 (random init) at 64 px: seconds per round on a CPU."""
    cfg = {
        "seed": 1, "device": "cpu",
        "dataset": {"train": "builtin:shapes",
                    "options": {"n_train": 24, "n_test": 6, "image_size": 64, "num_classes": 2,
                                "min_size": 12, "max_size": 30}},
        "model": {"arch": "fcos", "backbone": "mobilenet_v2", "pretrained": False, "image_size": 64,
                  "score_thresh": 0.001},
        "train": {"epochs": epochs, "batch_size": 4},
        "loop": {"initial": 4, "per_cycle": 3, "cycles": cycles},
        "strategy": {"name": strategy},
    }
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def ledger_rows(run_dir: Path) -> list[tuple]:
    """Everything a run decided and measured (not timings)."""
    con = sqlite3.connect(run_dir / "ledger.sqlite")
    rows = con.execute("SELECT round, selected, labeled_images, labeled_boxes, scores, checkpoint, metrics "
                       "FROM rounds ORDER BY round").fetchall()
    con.close()
    with Ledger(run_dir) as ledger:  # per-image scores: their own table (or the row, in old ledgers)
        return [r[:4] + (ledger.scores(r[0]),) + r[5:] for r in rows]


def cli_process(*args: str, **kwargs) -> subprocess.Popen:
    """``python -m activedet.cli ARGS`` in a subprocess on this checkout's sources."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    # a suite started in the background (CI, nohup, `cmd &`) inherits SIGINT ignored, and
    # Python then leaves it ignored: give the child the default so Ctrl-C reaches it
    reset = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    return subprocess.Popen([sys.executable, "-m", "activedet.cli", *args], env=env, preexec_fn=reset, **kwargs)
