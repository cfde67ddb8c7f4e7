"""Training health across seeds: how often a round's training collapses, and how much AP50
varies between seeds, for the shipped CPU detection configs.

Each (config, seed) is replayed with ``activedet simulate``'s own code path (``runner.run``),
strategy forced to ``random`` unless ``--keep-strategy``, so every round is a detector
re-initialised and trained on a random labeled set of the protocol's size. Health is the trainer's
verdict recorded in the ledger (each attempt judged by
:func:`activedet.training.health.assess`); for ledgers without one, the same check is
applied to the recorded per-epoch log.

    python benchmarks/training_health.py configs/demo_shapes_random.yaml --seeds 10 \
        --out /tmp/health [--set model.box_prior=null] [--keep-strategy] [--existing]

Prints, per seed, AP50 per round (``!``: unhealthy, ``r``: one retry), then per config and
round: labeled images, rounds flagged unhealthy, rounds that needed a retry, AP50 mean ±
std and min across seeds; writes ``OUT/summary.json``. Runs already in OUT are resumed;
``--existing`` only summarises them.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from activedet.config import load_config
from activedet.loop.ledger import Ledger
from activedet.loop.runner import run
from activedet.training.health import assess


def run_one(config: Path, seed: int, out: Path, sets: list[str], keep_strategy: bool,
            existing: bool = False) -> dict[str, Any]:
    """Run (or resume) one seed; ``existing``: only read the run already in ``out``."""
    cfg = load_config(config, [f"seed={seed}", *([] if keep_strategy else ["strategy.name=random"]), *sets])
    run_dir = out / f"{config.stem}-seed{seed}"
    t0 = time.perf_counter()
    if not existing:
        run(cfg, run_dir, resume=(run_dir / Ledger.FILENAME).exists(), progress=False)
    with Ledger(run_dir) as ledger:
        rounds = ledger.rounds(scores=False)
    rows = []
    for r in rounds:
        # the trainer's own verdict when the ledger has one (it judged each attempt alone),
        # else the same check applied to the recorded log (ledgers from older versions)
        recorded = r.get("health")
        verdict = assess(r["train_log"] or [])
        unhealthy = recorded["unhealthy"] if recorded else verdict.unhealthy
        attempts = (recorded or {}).get("attempts") or [{"reason": verdict.reason}]
        rows.append({"round": r["round"], "images": r["labeled_images"], "boxes": r["labeled_boxes"],
                     "AP50": (r["metrics"] or {}).get("AP50"), "unhealthy": unhealthy,
                     "why": [a.get("reason") for a in attempts], "retries": len(attempts) - 1})
    seconds = None if existing else time.perf_counter() - t0  # reading a finished run is not its time
    return {"config": config.name, "seed": seed, "seconds": seconds, "rounds": rows}


def summarise(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for config in sorted({r["config"] for r in results}):
        runs = [r for r in results if r["config"] == config]
        lines.append(f"\n{config}: {len(runs)} seeds")
        lines.append("round  images  unhealthy  retried  AP50 mean ± std   min")
        n_rounds = min(len(r["rounds"]) for r in runs)
        total_bad = 0
        for i in range(n_rounds):
            rows = [r["rounds"][i] for r in runs]
            aps = [x["AP50"] for x in rows if x["AP50"] is not None]
            bad = sum(x["unhealthy"] for x in rows)
            total_bad += bad
            retried = sum(x["retries"] > 0 for x in rows)
            sd = statistics.stdev(aps) if len(aps) > 1 else 0.0
            lines.append(f"{i:5d}  {rows[0]['images']:6d}  {bad:4d}/{len(rows):<4d} {retried:4d}     "
                         f"{100 * statistics.mean(aps):5.1f} ± {100 * sd:4.1f}   {100 * min(aps):5.1f}")
        lines.append(f"unhealthy rounds: {total_bad}/{n_rounds * len(runs)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+", type=Path)
    ap.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the runs and summary.json")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set train.warmup=0 (repeatable)")
    ap.add_argument("--keep-strategy", action="store_true", help="keep the config's strategy (default: random)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--existing", action="store_true",
                    help="train nothing: summarise the runs already in --out (seeds that are missing are skipped)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for config in args.configs:
        for seed in range(args.seeds):
            if args.existing and not (args.out / f"{config.stem}-seed{seed}" / Ledger.FILENAME).exists():
                continue
            res = run_one(config, seed, args.out, args.set, args.keep_strategy, args.existing)
            results.append(res)
            aps = " ".join(f"{100 * (x['AP50'] or 0):.1f}{'!' if x['unhealthy'] else ''}{'r' * x['retries']}"
                           for x in res["rounds"])
            took = "" if res["seconds"] is None else f"  ({res['seconds']:.0f} s)"
            print(f"{config.name} seed {seed}: AP50 {aps}{took}", flush=True)
    (args.out / "summary.json").write_text(json.dumps({"sets": args.set, "results": results}, indent=1))
    print("\n".join(summarise(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
