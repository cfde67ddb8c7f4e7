"""Two torchrun nodes of one process each (c10d rendezvous on 127.0.0.1) select what
`--nproc 2` on one host selects: a run's answers do not depend on how its processes are
spread over hosts (torchrun sets OMP_NUM_THREADS only for --nproc_per_node > 1; activedet
sets its threads from the config)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from activedet import distributed
from activedet.loop.ledger import Ledger
from tests.distributed.test_distributed import torchrun_env
from tests.loop.test_runner import write_config


def _env() -> dict[str, str]:
    env = torchrun_env()
    env.pop("OMP_NUM_THREADS")  # as on a fresh host: whatever torchrun sets, nothing else
    return env


def _selected(run_dir: Path) -> tuple[list[list[int]], dict]:
    with Ledger(run_dir) as ledger:
        return [r["selected"] for r in ledger.rounds(scores=False)], ledger.meta()


def test_two_nodes_of_one_process_select_as_one_node_of_two(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, cycles=1)
    one_host = tmp_path / "one_host"
    proc = subprocess.run([sys.executable, "-m", "activedet", "simulate", str(cfg), "--out", str(one_host),
                           "--nproc", "2", "--quiet"], env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    two_nodes = tmp_path / "two_nodes"
    port = distributed.free_port()
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
            "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=multinode-{os.getpid()}",
            "-m", "activedet", "simulate", str(cfg), "--out", str(two_nodes), "--quiet"]
    nodes = [subprocess.Popen(node, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in nodes]
    for p, (_, err) in zip(nodes, outs):
        assert p.returncode == 0, err[-3000:]

    a, meta_a = _selected(one_host)
    b, meta_b = _selected(two_nodes)
    assert len(a) == 2 and all(a)
    assert meta_a["world_size"] == meta_b["world_size"] == 2
    assert meta_a["threads"] == meta_b["threads"] == 1 == meta_a["config"]["threads"]
    assert a == b, "two nodes x 1 process selected differently from one node x 2 processes"
