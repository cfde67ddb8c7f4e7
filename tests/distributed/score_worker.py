"""Score a tiny pool with fixed checkpoints, in one process or under torchrun.

``python -m torch.distributed.run --nproc_per_node=2 tests/distributed/score_worker.py
SPEC.json OUT.json``: every rank scores its shard; rank 0 writes, per strategy, the
per-image scores and the selected ids. :func:`score_strategies` is the same work in the
calling process (the one-process answer the test compares with).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `tests.conftest` when run as a script
    sys.path.insert(0, str(ROOT))

from activedet import distributed  # noqa: E402
from activedet.data.pool import Pool  # noqa: E402
from activedet.loop.runner import load_checkpoint  # noqa: E402
from activedet.models.factory import build_adapter  # noqa: E402
from activedet.strategies.registry import build_strategy  # noqa: E402
from tests.conftest import make_detection_dataset, tiny_config  # noqa: E402


def score_strategies(spec: dict[str, Any]) -> dict[str, Any]:
    """For each ``spec["strategies"]`` entry (name, params, checkpoint): load the
    checkpoint, select ``spec["budget"]`` images from the pool with ``spec["seed"]``;
    returns name -> {"scores": {id: score}, "selected": [ids]} (the same on every rank)."""
    data = make_detection_dataset(n=int(spec["n"]), seed=int(spec["data_seed"]))
    out: dict[str, Any] = {}
    for entry in spec["strategies"]:
        strategy = build_strategy(entry["name"], dict(entry.get("params") or {}))
        strategy.progress = False
        cfg = tiny_config(**{"model.arch": entry.get("arch", "retinanet")})
        adapter = build_adapter(cfg, data.num_classes, strategy)
        load_checkpoint(adapter, Path(entry["checkpoint"]))
        pool = Pool.from_dataset(data)
        pool.add(list(spec["labeled"]), 0)
        rng = np.random.default_rng(int(spec["seed"]))
        chosen = distributed.broadcast_object(strategy.select(adapter, pool, int(spec["budget"]), rng))
        scores = strategy.last_scores or {}
        out[entry["name"]] = {"scores": {str(i): float(s) for i, s in scores.items()},
                              "selected": [int(i) for i in chosen]}
    return out


def train_check(spec: dict[str, Any]) -> dict[str, Any]:
    """Train a fresh tiny RetinaNet with the plain schedule (under DDP when distributed);
    returns every rank's weight digest and images seen, and the (shared) loss history."""
    from activedet.training.trainer import train_plain

    data = make_detection_dataset(n=int(spec["n"]), seed=int(spec["data_seed"]))
    cfg = tiny_config(**{"train.epochs": 2, "train.batch_size": 2})
    adapter = build_adapter(cfg, data.num_classes, None)
    adapter.reset(3)
    before = adapter.state_dict()
    result = train_plain(adapter, data, data.ids[:int(spec["train_images"])], [], cfg.train, {}, 7,
                         False)
    after = adapter.state_dict()
    flat = torch.cat([v.flatten().double() for k, v in sorted(after.items()) if v.is_floating_point()])
    changed = any(not torch.equal(before[k], after[k]) for k in after)
    return {"digests": distributed.all_gather_object(flat.sum().item() + flat.abs().sum().item()),
            "images": distributed.all_gather_object(result.images), "history": result.history,
            "changed": changed,
            # rank 0 alone inside on_main: it behaves as one process (no collective would return)
            "alone": distributed.on_main(lambda: [distributed.active(), distributed.shard([1, 2, 3])]),
            "outside": [distributed.active(), distributed.shard([1, 2, 3], of=None)]}


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    spec = json.loads(Path(argv[0]).read_text())
    distributed.init("cpu")
    try:
        result = train_check(spec) if spec.get("train_images") else score_strategies(spec)
        result["_world"] = distributed.world()
        if distributed.is_main():
            Path(argv[1]).write_text(json.dumps(result))
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
