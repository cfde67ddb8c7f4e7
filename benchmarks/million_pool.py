"""`activedet select` on a pool of a million images, for real (issue 27, item 4).

The pool is ``--images`` files under one folder: 16 distinct tiny PNGs (digits, 16 px)
hard-linked under a million names (so writing it costs directory entries, not image
bytes). The labeled set is 10 digits per class. The command is the product's own
(``activedet.cli.main(["select", ...])``) in a fresh child process, twice:

1. ``first``: a new project: list and register the pool, decode every image
   (verification), train on the labeled set, score every pool image (``entropy`` on a
   ``small_cnn`` classifier: a real per-image score from a model), rank, write the round's
   scores to the ledger and the batch files;
2. ``again``: the same command with ``--replace``, as after a crash or to select again:
   the project reopened, verification from its cache, the model reused by fingerprint,
   the pool scored and ranked again, the round rewritten.

Each run prints its peak resident memory (``ru_maxrss``) and seconds per stage, timed by
wrapping the product's own functions (project open, pool verification, the labeled
set and pool, training, scoring, ranking, batch description, batch files, the ledger's
round and batch rows). Classification, so scoring is cheap enough for 1M images on two
cores; a detector's scoring rate per image is in ``benchmarks/pool_memory.py``.

    .venv/bin/python benchmarks/million_pool.py [--images 1000000] [--budget 1000] \\
        [--dir /tmp/million_pool] [--json PATH]

The folder is kept (re-running reuses the images; pass a fresh ``--dir`` or delete it to
start over; the project is always made anew). One intra-op thread.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable


def make_data(root: Path, n: int) -> None:
    """``root/labeled`` (10 digits per class, ImageFolder) and ``root/pool`` (n hard links)."""
    import numpy as np
    from PIL import Image

    from activedet.data.builtin import load_builtin
    from activedet.data.classification import export_classification

    digits = load_builtin("digits", "train", {"size": 16})
    by_class: dict[int, list[int]] = {}
    for i in digits.ids:
        by_class.setdefault(digits.label(i), []).append(i)
    if not (root / "labeled").is_dir():
        export_classification(digits, root / "labeled", [i for c in sorted(by_class) for i in by_class[c][:10]])
    pool = root / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    sources = []
    for k, i in enumerate(by_class[c][10] for c in sorted(by_class) for _ in range(2)):
        src = root / f"source{k:02d}.png"
        if not src.exists():
            arr = np.ascontiguousarray(digits.load_array(i))
            Image.fromarray(np.roll(arr, k % 3, axis=1)).save(src)  # 16 files, a few shifted
        sources.append(src)
    have = sum(1 for _ in os.scandir(pool))
    for j in range(have, n):
        os.link(sources[j % len(sources)], pool / f"{j:07d}.png")


def _timed(owner: Any, name: str, stage: str, seconds: dict[str, float]) -> None:
    """Replace ``owner.name`` by a wrapper adding its wall time to ``seconds[stage]``."""
    fn: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - t0

    setattr(owner, name, wrapper)


def child(cfg: str, project: str, budget: int, replace: bool) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from activedet import cli
    from activedet.labeling import project as proj_mod
    from activedet.labeling import store
    from activedet.loop.engine import RoundModels
    from activedet.loop.ledger import Ledger
    from activedet.strategies.base import Strategy

    seconds: dict[str, float] = {}
    for owner, name, stage in [
            (proj_mod, "_open", "open project (list, register)"), (proj_mod, "_verify_pool", "verify (decode)"),
            (proj_mod, "_labeled_pool", "labeled set + pool"), (RoundModels, "hold", "train or reuse"),
            (Strategy, "score_all", "score"), (Strategy, "rank", "rank"),
            (proj_mod, "describe_batch", "describe batch"), (proj_mod, "write_round", "batch files"),
            (Ledger, "insert_round", "ledger: round + scores"), (store, "insert_batch", "ledger: batch rows")]:
        _timed(owner, name, stage, seconds)
    argv = ["select", cfg, "--project", project, "--budget", str(budget), "--quiet", "--json"]
    t0 = time.perf_counter()
    rc = cli.main(argv + (["--replace"] if replace else []))
    total = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"select returned {rc}")
    with Ledger(project) as ledger:
        row = max(ledger.rounds(scores=False), key=lambda r: r["round"])
        scored = ledger.conn.execute("SELECT COUNT(*) FROM scores WHERE round = ?", (row["round"],)).fetchone()[0]
    return {"seconds": seconds, "total": total, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "round": row["round"], "scored": scored}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1_000_000)
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--dir", default="/tmp/million_pool")
    p.add_argument("--json")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        cfg, project, budget, replace = args.child
        print(json.dumps(child(cfg, project, int(budget), replace == "1")))
        return
    import yaml

    root = Path(args.dir)
    t0 = time.perf_counter()
    make_data(root, args.images)
    n = sum(1 for _ in os.scandir(root / "pool"))
    print(f"pool: {n} files under {root / 'pool'} ({time.perf_counter() - t0:.0f} s to make or check)", flush=True)
    project = root / "project"
    shutil.rmtree(project, ignore_errors=True)
    shutil.rmtree(root / "cache", ignore_errors=True)
    cfg = root / "select.yaml"
    cfg.write_text(yaml.safe_dump({
        "task": "classification", "device": "cpu", "seed": 0,
        "dataset": {"train": str(root / "labeled"), "unlabeled": str(root / "pool")},
        "model": {"arch": "small_cnn", "image_size": 16},
        "train": {"epochs": 2, "batch_size": 32, "eval_batch_size": 1024, "hflip": False},
        "strategy": {"name": "entropy"}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACTIVEDET_CACHE_DIR": str(root / "cache")}
    results = {}
    for label, replace in (("first", "0"), ("again", "1")):
        out = subprocess.run([sys.executable, __file__, "--child", str(cfg), str(project), str(args.budget), replace],
                             env=env, check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results[label] = r
        print(f"\n{label}: round {r['round']}, {r['scored']} scores in the ledger, peak {r['peak_mib']:.0f} MiB, "
              f"{r['total']:.0f} s in all")
        for stage, s in r["seconds"].items():
            print(f"  {stage:<32} {s:>8.1f} s")
        post = sum(r["seconds"].get(k, 0.0) for k in ("rank", "describe batch", "batch files",
                                                      "ledger: round + scores", "ledger: batch rows"))
        print(f"  {'ledger + ranking + batch writing':<32} {post:>8.1f} s")
    results["images"] = n
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
