"""Peak memory of one scoring pass as the pool grows (issue 12: pools that do not fit in memory).

For each pool size N the script writes N tiny PNG images and a COCO json (one box per
image) to a temporary directory, then runs one scoring pass in a fresh subprocess (so
runs do not share a heap): load the json, verify every image (the decode check of
:mod:`activedet.data.verify`, with a fresh cache), build the pool, score it with
``entropy`` on a randomly initialised detector at the images' size, and record the
per-image scores in a ledger (:class:`activedet.loop.ledger.Ledger`). The child reports
its peak resident memory (``ru_maxrss``), its resident memory after each step, and the
wall time; the table gives the ratio of each size's peak to the first one's. With
``--workers N`` the images are decoded in N loader processes; "worker MiB" is the peak of
the largest of them (0: none ran).

The last line extrapolates to a pool of 1M images from what grows per image: the resident
memory held after the pool is built (records: ids, paths, sizes, boxes) and after scoring
(scores), per image, measured as the difference between the largest and smallest N.

    .venv/bin/python benchmarks/pool_memory.py [--sizes 2000,20000] [--side 32] \\
        [--arch fcos] [--workers 0] [--batch-size 16] [--json PATH]

Weights are random (this measures memory, not quality); one intra-op thread per process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def rss_kb() -> int:
    """Current resident set size (kB) from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def peak_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # kB on Linux


def write_pool(root: Path, n: int, side: int, seed: int = 0) -> Path:
    """N ``side`` x ``side`` RGB PNGs under ``root/images`` and ``root/train.json``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    # a few distinct textures, saved once each and copied: writing is not what is measured
    textures = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(16)]
    blobs = []
    for k, im in enumerate(textures):
        p = images_dir / f"texture{k}.png"
        im.save(p)
        blobs.append(p.read_bytes())
        p.unlink()
    images, anns = [], []
    for i in range(1, n + 1):
        name = f"images/{i:07d}.png"
        (root / name).write_bytes(blobs[i % len(blobs)])
        images.append({"id": i, "file_name": name, "width": side, "height": side})
        anns.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "iscrowd": 0,
                     "bbox": [side / 4, side / 4, side / 2, side / 2], "area": side * side / 4})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    path = root / "train.json"
    path.write_text(json.dumps(coco))
    return path


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One scoring pass; returns resident memory (kB) after each step and the peak."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    os.environ["ACTIVEDET_CACHE_DIR"] = args.cache
    from activedet.config import ModelConfig
    from activedet.data.loading import load_dataset
    from activedet.data.pool import Pool
    from activedet.data.verify import verify_images
    from activedet.loop.ledger import Ledger
    from activedet.models.detection_adapter import detection_adapter
    from activedet.strategies.registry import build_strategy

    steps: dict[str, int] = {}
    t0 = time.perf_counter()
    strategy = build_strategy("entropy", {"min_score": 0.0, "batch_size": args.batch_size})
    strategy.progress = False
    adapter = detection_adapter(ModelConfig(arch=args.arch, backbone="mobilenet_v2", pretrained=False,
                                           image_size=args.side), 2, "plain", "cpu")
    adapter.reset(0)
    if args.workers is not None:
        adapter.workers = args.workers
    steps["model"] = rss_kb()
    data = load_dataset(args.data, "train")
    steps["loaded"] = rss_kb()
    verify_images(data, "train", "error", progress=False)
    steps["verified"] = rss_kb()
    pool = Pool.from_dataset(data)
    labeled = pool.ids[:args.budget]
    pool.add(labeled, 0)
    steps["pool"] = rss_kb()
    t1 = time.perf_counter()
    chosen = strategy.select(adapter, pool, args.budget, np.random.default_rng(0))
    t2 = time.perf_counter()
    steps["scored"] = rss_kb()
    with Ledger(args.run, create=True) as ledger:
        ledger.set_meta(strategy="entropy")
        ledger.add_round(0, labeled, len(labeled), pool.cost(labeled), {}, None)
        pool.add(chosen, 1)
        ledger.add_round(1, chosen, len(pool.labeled), pool.labeled_boxes, {"score": t2 - t1},
                         strategy.last_scores)
    steps["ledger"] = rss_kb()
    scores = strategy.last_scores or {}
    return {"n": len(data), "scored": len(scores), "peak_kb": peak_kb(), "steps_kb": steps,
            "worker_peak_kb": int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss),
            "seconds": time.perf_counter() - t0, "score_seconds": t2 - t1,
            "digest": float(sum(scores.values())), "selected": [int(i) for i in chosen]}


def measure(args: argparse.Namespace, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pool_memory_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        data = write_pool(root / "data", n, args.side)
        made = time.perf_counter() - t0
        out = root / "result.json"
        cmd = [sys.executable, __file__, "--child", "--data", str(data), "--cache", str(root / "cache"),
               "--run", str(root / "run"), "--out", str(out), "--side", str(args.side),
               "--arch", args.arch, "--batch-size", str(args.batch_size), "--budget", str(args.budget)]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, env=env, check=True)
        result = json.loads(out.read_text())
        result["write_seconds"] = made
        return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2000,20000", help="pool sizes, comma-separated")
    p.add_argument("--side", type=int, default=32, help="image side (px)")
    p.add_argument("--arch", default="fcos", choices=["fcos", "retinanet"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--budget", type=int, default=10)
    p.add_argument("--workers", type=int, default=None,
                   help="image-loading worker processes while scoring (default: the adapter's)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("data", "cache", "run", "out"):
        p.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        Path(args.out).write_text(json.dumps(child(args)))
        return
    results = [measure(args, int(n)) for n in args.sizes.split(",")]
    base = results[0]
    print(f"{'images':>8} {'peak MiB':>9} {'ratio':>6} {'worker MiB':>10} {'scoring s':>10} {'img/s':>7}   "
          f"resident MiB after: " + ", ".join(base["steps_kb"]))
    for r in results:
        steps = " ".join(f"{v / 1024:.0f}" for v in r["steps_kb"].values())
        print(f"{r['n']:>8} {r['peak_kb'] / 1024:>9.1f} {r['peak_kb'] / base['peak_kb']:>6.3f} "
              f"{r['worker_peak_kb'] / 1024:>10.1f} "
              f"{r['score_seconds']:>10.1f} {r['n'] / r['score_seconds']:>7.0f}   {steps}")
    big = results[-1]
    if big["n"] > base["n"]:
        dn = big["n"] - base["n"]
        per_pool = (big["steps_kb"]["pool"] - big["steps_kb"]["model"]
                    - base["steps_kb"]["pool"] + base["steps_kb"]["model"]) * 1024 / dn
        per_all = (big["steps_kb"]["ledger"] - base["steps_kb"]["ledger"]) * 1024 / dn
        peak = (big["peak_kb"] - base["peak_kb"]) * 1024 / dn
        million = 1_000_000
        print(f"per image: {per_pool:.0f} B held by the pool (records), {per_all:.0f} B held after "
              f"scoring + ledger, {peak:.0f} B of peak; 1M images: peak ≈ "
              f"{(base['peak_kb'] * 1024 + peak * (million - base['n'])) / 2**30:.2f} GiB "
              f"(first size's peak + {peak:.0f} B x images)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
