"""benchmarks/replay.py: a config's detector trained on another run's labeled sets. With
the run's own config it must reproduce the run's metrics (same labeled sets, same seeds)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from activedet.config import load_config
from activedet.loop.ledger import Ledger
from activedet.loop.runner import run
from tests.loop.test_runner import write_config

ROOT = Path(__file__).resolve().parents[1]


def test_replay_of_a_run_with_its_own_config_reproduces_its_metrics(tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("replay", ROOT / "benchmarks" / "replay.py")
    replay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay)  # type: ignore[union-attr]
    cfg_path = write_config(tmp_path, cycles=1)
    run(load_config(cfg_path), tmp_path / "run", progress=False)
    with Ledger(tmp_path / "run") as ledger:
        rounds = ledger.rounds(scores=False)
    out = tmp_path / "replay.json"
    assert replay.main([str(cfg_path), "--labeled-from", str(tmp_path / "run"), "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert [g["round"] for g in got] == [0, 1]
    assert [g["images"] for g in got] == [r["labeled_images"] for r in rounds]
    for g, r in zip(got, rounds, strict=True):
        assert g["replayed"] == r["metrics"]["AP50"] == g["run"]
    assert "AP50 (replayed)" in capsys.readouterr().out
