"""Time and peak memory of core-set's k-center greedy at pool scale (issue 27, item 4).

For each N: seeded float32 features (N, D) as a model returns them, ``--centers`` of them
labeled, ``--picks`` greedy picks with :func:`activedet.strategies.diversity.k_center_greedy`.
Two ways side by side, each in a fresh subprocess (peak RSS from ``ru_maxrss``):

- ``float32``: the features handed over as they are (today: distances in float64, block by
  block; no copy of the matrix);
- ``float64 copy``: the features converted to float64 first, as k-center did before
  (a second, twice-as-large matrix held for the whole selection).

Both must return the same picks (checked here; the test suite checks the picks against a
brute-force greedy). One intra-op thread unless ``--threads``.

    .venv/bin/python benchmarks/kcenter_scale.py [--sizes 100000,1000000] [--dim 512] \\
        [--centers 1000] [--picks 50] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def child(n: int, dim: int, centers: int, picks: int, copy: bool) -> dict[str, Any]:
    import numpy as np

    from activedet.strategies.diversity import k_center_greedy

    rng = np.random.default_rng(0)
    x = np.empty((n, dim), dtype=np.float32)
    for i in range(0, n, 65536):  # filled in blocks: no float64 temporary of the whole matrix
        x[i:i + 65536] = rng.standard_normal((min(65536, n - i), dim), dtype=np.float32)
    labeled = np.zeros(n, dtype=bool)
    labeled[:centers] = True
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    feats = x.astype(np.float64) if copy else x
    chosen, gains = k_center_greedy(feats, labeled, picks, np.random.default_rng(0))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"n": n, "dim": dim, "centers": centers, "picks": picks, "copy": copy, "seconds": seconds,
            "peak_mib": peak / 1024, "features_mib": x.nbytes / 2**20, "before_mib": base / 1024,
            "chosen": chosen, "last_gain": gains[-1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--centers", type=int, default=1000, help="labeled rows (existing centers)")
    p.add_argument("--picks", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        n, dim, centers, picks, copy = (int(v) for v in args.child)
        import torch
        torch.set_num_threads(args.threads)
        print(json.dumps(child(n, dim, centers, picks, bool(copy))))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    print(f"{'N':>9} {'D':>4} {'way':>13} {'features MiB':>12} {'peak MiB':>9} {'+selection':>10} {'seconds':>8} {'s/pick':>7}")
    for n in (int(s) for s in args.sizes.split(",")):
        pair = []
        for copy in (0, 1):
            out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--child",
                                  str(n), str(args.dim), str(args.centers), str(args.picks), str(copy)],
                                 env=env, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            pair.append(r)
            rows.append(r)
            print(f"{n:>9} {args.dim:>4} {'float64 copy' if copy else 'float32':>13} {r['features_mib']:>12.0f} "
                  f"{r['peak_mib']:>9.0f} {r['peak_mib'] - r['before_mib']:>10.0f} {r['seconds']:>8.1f} {r['seconds'] / args.picks:>7.2f}")
        if pair[0]["chosen"] != pair[1]["chosen"]:
            raise SystemExit(f"N={n}: the two ways picked differently")
    print("same picks both ways at every N")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
