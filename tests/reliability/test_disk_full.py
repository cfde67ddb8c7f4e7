"""A full disk or a read-only run directory at any write point (ledger, checkpoint,
config.yaml): a one-line message, nothing half-written, and the run resumes afterwards."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest

from activedet.cli import main
from activedet.errors import RunDirError
from activedet.loop.ledger import Ledger
from tests.reliability.conftest import ledger_rows, shapes_config


def fail_fsync_of(monkeypatch, name: str, code: int) -> list[str]:
    """``os.fsync`` raises ``OSError(code)`` for files whose name contains ``name``, as
    the kernel reports a full disk or a read-only filesystem at write-back."""
    real = os.fsync
    hits: list[str] = []

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if name in Path(target).name:
            hits.append(target)
            raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return hits


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("target, code, shown", [
    ("round_001.pt", errno.ENOSPC, "No space left on device (ENOSPC)"),
    ("config.yaml", errno.EROFS, "Read-only file system (EROFS)"),
])
def test_file_write_failure(tmp_path: Path, capsys, monkeypatch, target: str, code: int, shown: str) -> None:
    cfg = shapes_config(tmp_path, cycles=1)
    run_dir = tmp_path / "run"
    hits = fail_fsync_of(monkeypatch, target, code)
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet"]) == 2
    assert hits
    msg = one_line(capsys.readouterr().err)
    assert shown in msg and target in msg and "--resume" in msg, msg
    leftovers = [p.name for p in run_dir.rglob("*") if ".tmp" in p.name or p.name == target]
    assert leftovers == [], "no partial or temporary file is left behind"
    rows = ledger_rows(run_dir)
    if target == "round_001.pt":  # round 0 complete, round 1 selected but not trained
        assert [r[0] for r in rows] == [0, 1] and rows[0][6] is not None and rows[1][5] is None
    else:
        assert rows == []
    monkeypatch.undo()
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--resume", "--quiet"]) == 0
    assert [r[0] for r in ledger_rows(run_dir)] == [0, 1]


def test_ledger_full_during_a_step(tmp_path: Path, capsys, monkeypatch) -> None:
    class FullDisk(sqlite3.Connection):
        def execute(self, sql: str, *args):  # type: ignore[override]
            if sql.startswith("UPDATE rounds SET metrics"):
                raise sqlite3.OperationalError("database or disk is full")
            return super().execute(sql, *args)

    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: real_connect(*a, factory=FullDisk, **k))
    cfg = shapes_config(tmp_path, cycles=1)
    run_dir = tmp_path / "run"
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet"]) == 2
    msg = one_line(capsys.readouterr().err)
    assert "cannot write the ledger" in msg and "database or disk is full" in msg and "--resume" in msg
    monkeypatch.undo()
    rows = ledger_rows(run_dir)
    assert [r[0] for r in rows] == [0] and rows[0][5] is not None and rows[0][6] is None  # trained, not evaluated
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--resume", "--quiet"]) == 0
    assert all(r[6] is not None for r in ledger_rows(run_dir))


def test_real_sqlite_full_rolls_the_step_back(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, create=True)
    ledger.add_round(0, [1, 2], 2, 3, {"select": 0.1}, None)
    pages = ledger.conn.execute("PRAGMA page_count").fetchone()[0]
    ledger.conn.execute(f"PRAGMA max_page_count = {pages}")  # the database cannot grow: SQLITE_FULL
    with pytest.raises(RunDirError, match="database or disk is full"):
        ledger.add_round(1, list(range(3, 40)), 39, 80, {"select": 0.1}, {i: 0.5 for i in range(5000)})
    assert [r["round"] for r in ledger.rounds()] == [0]
    ledger.close()
