"""Checkpoints are written atomically with a recorded sha256; on resume a truncated,
corrupted or missing checkpoint is detected and its round re-trained, not loaded."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from activedet.cli import main
from tests.reliability.conftest import ledger_rows, shapes_config


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = shapes_config(tmp, cycles=1)
    assert main(["simulate", str(cfg), "--out", str(tmp / "ref"), "--quiet"]) == 0
    return cfg, tmp / "ref"


def copy_run(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst)


def recorded_sums(run_dir: Path) -> dict[str, str]:
    con = sqlite3.connect(run_dir / "ledger.sqlite")
    (value,) = con.execute("SELECT value FROM meta WHERE key = 'checkpoint_sha256'").fetchone()
    con.close()
    return json.loads(value)


def test_checksums_are_recorded_for_every_checkpoint(reference) -> None:
    _, ref = reference
    sums = recorded_sums(ref)
    assert set(sums) == {"checkpoints/round_000.pt", "checkpoints/round_001.pt"}
    for name, digest in sums.items():
        assert hashlib.sha256((ref / name).read_bytes()).hexdigest() == digest
    assert not [p for p in (ref / "checkpoints").iterdir() if p.suffix != ".pt"], "no temp files left"


@pytest.mark.parametrize("damage", ["truncated", "flipped", "missing"])
def test_damaged_checkpoint_is_retrained_on_resume(tmp_path: Path, reference, damage: str, caplog) -> None:
    cfg, ref = reference
    run_dir = tmp_path / "run"
    copy_run(ref, run_dir)
    # as if killed right after round 0 was evaluated: round 1 not selected yet, so resuming
    # must load round 0's model to select round 1
    con = sqlite3.connect(run_dir / "ledger.sqlite")
    with con:
        con.execute("DELETE FROM rounds WHERE round = 1")
        con.execute("UPDATE meta SET value = 'false' WHERE key = 'complete'")
    con.close()
    ckpt = run_dir / "checkpoints" / "round_000.pt"
    data = ckpt.read_bytes()
    if damage == "truncated":
        ckpt.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":  # still a readable zip: only the checksum can tell
        mid = len(data) // 2
        ckpt.write_bytes(data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:])
    else:
        ckpt.unlink()
    with caplog.at_level("WARNING", logger="activedet.loop.runner"):
        assert main(["simulate", str(cfg), "--out", str(run_dir), "--resume", "--quiet"]) == 0
    assert "re-training round 0" in caplog.text
    assert ledger_rows(run_dir) == ledger_rows(ref), "the re-trained round gives the same selection"
    assert ckpt.read_bytes() == (ref / "checkpoints" / "round_000.pt").read_bytes()
