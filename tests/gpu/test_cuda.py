"""Checks that need a CUDA device (marker ``gpu``: not part of ``make test``; run by
``benchmarks/gpu.sh``, which first says in one line when there is no CUDA device)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from activedet.loop.ledger import Ledger
from tests.loop.test_runner import write_config

pytestmark = pytest.mark.gpu


def _cuda_config(tmp_path: Path, **train) -> Path:
    path = write_config(tmp_path, cycles=1)
    cfg = yaml.safe_load(path.read_text())
    cfg["device"] = "cuda"
    cfg["train"].update(train)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _finite_losses(run_dir: Path) -> list[float]:
    with Ledger(run_dir) as ledger:
        rounds = ledger.rounds(scores=False)
    losses = [v for r in rounds for step in (r["train_log"] or []) for k, v in step.items()
              if "loss" in k and isinstance(v, (int, float))]
    assert losses, "no training loss was logged"
    return losses


def test_cuda_is_there() -> None:
    assert torch.cuda.is_available(), "tests marked gpu need a CUDA device (benchmarks/gpu.sh checks first)"


def test_an_amp_round_trains_with_finite_losses(tmp_path: Path) -> None:
    cfg = _cuda_config(tmp_path, amp=True)
    proc = subprocess.run([sys.executable, "-m", "activedet", "simulate", str(cfg), "--out", str(tmp_path / "run"),
                           "--quiet", "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status["complete"]
    assert all(math.isfinite(v) for v in _finite_losses(tmp_path / "run"))


def test_nccl_with_world_size_one() -> None:
    """activedet's collectives over a one-process NCCL group (``distributed.init`` joins no
    group for WORLD_SIZE 1, so the group is made here as torchrun would)."""
    import torch.distributed as dist

    from activedet import distributed

    store = dist.TCPStore("127.0.0.1", distributed.free_port(), 1, is_master=True)
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1)
    try:
        assert dist.get_backend() == "nccl" and dist.get_world_size() == 1
        t = torch.arange(4.0, device="cuda")
        dist.all_reduce(t)  # the NCCL kernels run on this device
        gathered: list = [None]
        dist.all_gather_object(gathered, {"rank": 0})
        assert t.tolist() == [0.0, 1.0, 2.0, 3.0] and gathered == [{"rank": 0}]
        assert not distributed.active() and distributed.world() == 1  # one process: activedet's helpers pass through
        assert distributed.gather_scores({3: 0.5, 1: 0.25}) == {3: 0.5, 1: 0.25}
        assert distributed.broadcast_object({"picked": [3]}) == {"picked": [3]}
        (total,) = distributed.all_reduce_sum([torch.ones(4, device="cuda")])
        assert total.sum().item() == 4.0
        assert distributed.all_true(True)
    finally:
        dist.destroy_process_group()
