"""Scoring throughput with 1 vs N processes (torchrun; gloo on CPU, NCCL on CUDA).

For each process count the same command runs under ``torch.distributed.run``: every rank
loads the ``shapes`` pool, builds the same randomly initialised model (timing only) and
runs one selection (``strategy.select``) over the unlabeled pool; each rank scores its
shard (:mod:`activedet.distributed`), scores are gathered, rank 0's choice is broadcast.
Rank 0 reports the wall time of the selection (between two barriers), images scored per
second, and a digest of the scores and selection: the table shows the speed-up over 1
process and whether every process count gave the same selection and scores.

    .venv/bin/python benchmarks/scoring_scaling.py [--nproc 1,2] [--images 96] \\
        [--strategy entropy] [--arch retinanet] [--device cpu|cuda] [--json PATH]

On a GPU host use ``--device cuda`` (one GPU per process). On a machine shared with other
work, or with fewer cores than processes × threads, the speed-up is bounded by the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from activedet import distributed
from activedet.config import ModelConfig
from activedet.data.builtin import load_builtin
from activedet.data.pool import Pool
from activedet.models.detection_adapter import DetectionAdapter, detection_adapter
from activedet.strategies.registry import build_strategy

STRATEGY_PARAMS: dict[str, dict[str, Any]] = {
    "entropy": {"min_score": 0.0},
    "mial": {},
    "coreset": {},
    "isal": {"reference": "labeled", "depth": 4, "repeats": 1, "pseudo_score_threshold": 0.05,
             "max_pseudo_boxes": 20},
}


def worker(args: argparse.Namespace) -> None:
    """One rank: score the pool once (after a warm-up batch), rank 0 writes the result."""
    torch.set_num_threads(args.threads)
    distributed.init(args.device)
    try:
        data = load_builtin("shapes", "train", {"n_train": args.images + args.labeled, "image_size": args.size})
        strategy = build_strategy(args.strategy, {**STRATEGY_PARAMS.get(args.strategy, {}),
                                                  "batch_size": args.batch_size})
        strategy.progress = False
        device = f"cuda:{distributed.local_rank()}" if args.device == "cuda" else "cpu"
        adapter = detection_adapter(ModelConfig(arch=args.arch, backbone="mobilenet_v2", pretrained=False,
                                               image_size=args.size), data.num_classes,
                                   strategy.model_variant, device, strategy.model_kwargs())
        adapter.reset(0)
        pool = Pool.from_dataset(data)
        pool.add(data.ids[:args.labeled], 0)
        list(adapter.infer(data, data.ids[:args.batch_size], args.batch_size))  # warm-up
        distributed.barrier()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        chosen = distributed.broadcast_object(strategy.select(adapter, pool, args.budget,
                                                              np.random.default_rng(0)))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        distributed.barrier()
        seconds = time.perf_counter() - t0
        scores = strategy.last_scores or {}
        if distributed.is_main():
            Path(args.out).write_text(json.dumps({
                "world": distributed.world(), "seconds": seconds, "images": len(pool.unlabeled),
                "selected": [int(i) for i in chosen],
                "scores": {str(k): float(v) for k, v in sorted(scores.items())}}))
    finally:
        distributed.shutdown()


def launch(args: argparse.Namespace, nproc: int, out: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={distributed.free_port()}", __file__, "--worker",
           "--out", str(out), *[f"--{k.replace('_', '-')}={v}" for k, v in _passed(args).items()]]
    subprocess.run(cmd, env=env, check=True)
    return json.loads(out.read_text())


def _passed(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("images", "labeled", "budget", "size", "batch_size", "strategy", "arch", "device", "threads")
    return {k: getattr(args, k) for k in keys}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", default="1,2", help="process counts to compare, comma-separated")
    p.add_argument("--images", type=int, default=96, help="unlabeled images scored")
    p.add_argument("--labeled", type=int, default=8)
    p.add_argument("--budget", type=int, default=8)
    p.add_argument("--size", type=int, default=96, help="image side (px)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--strategy", default="entropy", choices=sorted(STRATEGY_PARAMS))
    p.add_argument("--arch", default="retinanet", choices=["retinanet", "fcos"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.strategy == "mial" and args.arch != "retinanet":
        p.error("mial scores RetinaNet only")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in args.nproc.split(",")]:
            results.append(launch(args, n, Path(tmp) / f"n{n}.json"))
    base = results[0]
    print(f"{args.strategy} on {args.arch} {args.size}px, {base['images']} unlabeled images, device "
          f"{args.device}, {args.threads} thread(s)/process, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    print(f"{'processes':>9}  {'seconds':>8}  {'img/s':>7}  {'speed-up':>8}  same selection  max |Δscore|")
    rows = []
    for r in results:
        common = [k for k in base["scores"] if k in r["scores"]]
        diff = max((abs(base["scores"][k] - r["scores"][k]) for k in common), default=0.0)
        same = r["selected"] == base["selected"] and r["scores"].keys() == base["scores"].keys()
        row = {"processes": r["world"], "seconds": r["seconds"], "images_per_second": r["images"] / r["seconds"],
               "speedup": base["seconds"] / r["seconds"], "same_selection": same, "max_abs_score_diff": diff}
        rows.append(row)
        print(f"{row['processes']:>9}  {row['seconds']:>8.2f}  {row['images_per_second']:>7.1f}  "
              f"{row['speedup']:>7.2f}x  {str(same):>14}  {diff:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": _passed(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
