"""Per-image scores go to the ledger in chunks; an interrupted round shows nothing."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from activedet.loop import ledger as ledger_module
from activedet.loop.ledger import Ledger

ROOT = Path(__file__).resolve().parents[2]


def _scores(n: int) -> dict[int, float]:
    return {i: (i * 7919 % 1000) / 997.0 + 1e-9 * i for i in range(1, n + 1)}


def test_scores_round_trip_in_chunks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ledger_module, "SCORE_CHUNK", 3)
    scores = _scores(10)  # four chunks: 3 + 3 + 3 + 1
    with Ledger(tmp_path, create=True) as led:
        led.set_meta(strategy="entropy")
        led.add_round(0, [1, 2], 2, 2, {}, None)
        led.add_round(1, [3], 3, 3, {"score": 0.1}, scores)
        led.add_round(2, [4], 4, 4, {}, {})
    with Ledger(tmp_path) as led:
        rounds = led.rounds()
        assert [r["scores"] for r in rounds] == [None, scores, {}]
        assert all(r["scores"] is None for r in led.rounds(scores=False))
        assert led.scores(1) == scores and led.scores(7) is None
        assert "scores" not in led.status()["rounds"][1]


_CRASH = """
import os, sys
from activedet.loop import ledger as L
L.SCORE_CHUNK = 3
calls = 0
real = L.Ledger._put_scores
def put(self, *a):
    global calls
    calls += 1
    if calls == 3:  # two chunks committed, the third never is
        os._exit(9)
    return real(self, *a)
L.Ledger._put_scores = put
led = L.Ledger(sys.argv[1], create=True)
led.set_meta(strategy="entropy")
led.add_round(0, [1, 2], 2, 2, {}, None)
led.add_round(1, [3], 3, 3, {}, {i: i / 10 for i in range(1, 11)})
"""


def test_a_crash_between_chunks_leaves_no_trace_and_the_round_is_recorded_again(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", _CRASH, str(tmp_path)], env=env)
    assert proc.returncode == 9
    with sqlite3.connect(tmp_path / Ledger.FILENAME) as raw:  # the committed chunks are on disk ...
        assert raw.execute("SELECT COUNT(*) FROM scores WHERE round = 1").fetchone()[0] == 6
    with Ledger(tmp_path) as led:  # ... but the round is not recorded, nor its scores
        assert [r["round"] for r in led.rounds()] == [0]
        assert led.scores(1) is None
        again = {i: -i / 10 for i in range(1, 11)}  # a resumed run records the round afresh
        led.add_round(1, [4], 3, 3, {}, again)
        assert led.scores(1) == again and led.rounds()[1]["selected"] == [4]


def test_a_ledger_with_scores_in_the_rounds_row_still_reads(tmp_path: Path) -> None:
    with Ledger(tmp_path, create=True) as led:
        led.set_meta(strategy="entropy")
        led.add_round(0, [1], 1, 1, {}, None)
        led.conn.execute("UPDATE rounds SET scored = NULL, scores = ? WHERE round = 0",
                         (json.dumps({"2": 0.5, "10": 0.25}),))
        led.conn.commit()
    with Ledger(tmp_path) as led:
        assert led.scores(0) == {2: 0.5, 10: 0.25}
        assert led.rounds()[0]["scores"] == {2: 0.5, 10: 0.25}
