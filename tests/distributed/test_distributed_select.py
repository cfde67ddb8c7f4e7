"""`activedet select --nproc 2` (torchrun, gloo on CPU) on real photos (built-in trees):
with the same checkpoint it writes the batch one process writes; from scratch (training
under DDP) it completes with rank 0 alone writing the project."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from activedet.cli import main
from activedet.labeling import store
from activedet.loop.ledger import Ledger
from tests.distributed.test_distributed import torchrun_env
from tests.labeling.conftest import gt, make_project_config, trees_files  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow


def select_nproc(cfg: Path, project: Path, budget: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "activedet", "select", str(cfg), "--project", str(project), "--budget",
           str(budget), "--quiet", "--json", "--nproc", "2", *extra]
    return subprocess.run(cmd, env=torchrun_env(), capture_output=True, text=True, timeout=600)


def batch_rows(project: Path, r: int) -> list[dict]:
    return list(csv.DictReader((project / "rounds" / f"{r:03d}" / "batch.csv").open()))


def test_two_process_select_writes_the_one_process_batch(tmp_path: Path, trees_files: Path, capsys) -> None:
    ids = [im["id"] for im in gt(trees_files)["images"]]
    cfg = make_project_config(tmp_path, trees_files, ids[:8])
    one = tmp_path / "one"
    capsys.readouterr()
    assert main(["select", str(cfg), "--project", str(one), "--budget", "6", "--quiet", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["round"] == 1 and first["trained"]

    # the same project and checkpoint, selected again with 2 processes: scoring is sharded
    # (16 pool images per rank), rank 0 chooses and alone writes the round
    two = tmp_path / "two"
    shutil.copytree(one, two)
    proc = select_nproc(cfg, two, 6, "--replace")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # rank 0 alone prints
    again = json.loads(lines[0])
    assert again["round"] == 1 and not again["trained"] and again["dropped"] == 6  # checkpoint reused
    assert [r["image_id"] for r in again["batch"]] == [r["image_id"] for r in first["batch"]]
    np.testing.assert_allclose([r["score"] for r in again["batch"]], [r["score"] for r in first["batch"]],
                               rtol=1e-5, atol=1e-7)
    assert [r["image_id"] for r in batch_rows(two, 1)] == [str(r["image_id"]) for r in first["batch"]]
    with Ledger(two) as ledger:
        assert store.batch(ledger.conn, 1) and [b.image_id for b in store.batch(ledger.conn, 1)] == \
            [r["image_id"] for r in first["batch"]]
        scores = ledger.rounds()[1]["scores"]
    assert scores is not None and len(scores) == 32  # every pool image scored once (by one of the ranks)

    # from scratch with 2 processes: the model trains under DDP, rank 0 writes checkpoint and batch
    fresh = tmp_path / "fresh"
    proc = select_nproc(cfg, fresh, 6)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["round"] == 1 and res["trained"] and len(res["batch"]) == 6
    assert sorted(p.name for p in (fresh / "checkpoints").iterdir()) == ["round_000.pt"]
    assert len(batch_rows(fresh, 1)) == 6
    # a pending round refuses a second select with one message (rank 0's, not repeated)
    proc = select_nproc(cfg, fresh, 6)
    assert proc.returncode == 2
    assert proc.stderr.count("is pending") == 1, proc.stderr[-2000:]
