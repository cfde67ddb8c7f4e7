"""Train one config's detector on another run's labeled sets: the detector's part of a
difference, without its selection.

``activedet compare`` compares strategies each with its own model. When two strategies train
different models (MIAL's head has two classifiers and a MIL branch; random's is a plain
FCOS head), part of a difference in AP is the model's. This replays the labeled set of
every round of ``--labeled-from`` (a finished run, e.g. random's) through ``CONFIG``'s
model and trainer, with ``CONFIG``'s seeds, and prints the per-round metric next to the
run's own. With the run's own config it reproduces the run (a check of the replay)::

    python benchmarks/replay.py MIAL.yaml --labeled-from RANDOM_RUN [--set key=value ...]

Training gets no unlabeled images: a strategy that trains on them (MIAL's joint stages)
trains on the labeled sets only, and a separate MIAL scorer is not trained (nothing is
selected here).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="experiment YAML whose model and trainer are replayed")
    ap.add_argument("--labeled-from", required=True, help="a finished run directory whose labeled sets are used")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override key.path=value")
    ap.add_argument("--json", help="write the per-round metrics here")
    args = ap.parse_args(argv)

    from activedet.config import load_config
    from activedet.evaluation import headline
    from activedet.loop.ledger import Ledger
    from activedet.loop.runner import prepare, train_model
    from activedet.models.factory import build_adapter

    cfg = load_config(args.config, args.sets)
    with Ledger(args.labeled_from) as ledger:
        rounds = ledger.rounds(scores=False)
    exp = prepare(cfg)
    adapter = build_adapter(cfg, exp.train.num_classes, exp.strategy)
    pool = exp.pool
    metric = "top1" if cfg.task == "classification" else "AP50"
    out = []
    print(f"{'round':>5} {'images':>7} {'boxes':>6}  {metric + ' (replayed)':>16}  {metric + ' (the run)':>14}")
    for r in rounds:
        if r.get("metrics") is None:
            break
        k = r["round"]
        pool.add(r["selected"], k)
        labeled = [i for i in pool.labeled if pool.round_of[i] <= k]
        train_model(cfg, exp.strategy, adapter, exp.train, pool, k, cfg.loop.reinit or k == 0, False,
                    labeled, [])
        m = adapter.evaluate(exp.test, batch_size=cfg.train.eval_batch_size)
        out.append({"round": k, "images": len(labeled), "boxes": pool.cost(labeled), "replayed": m.get(metric),
                    "run": r["metrics"].get(metric)})
        print(f"{k:>5} {len(labeled):>7} {pool.cost(labeled):>6}  {m.get(metric, -1):>16.4f}  "
              f"{r['metrics'].get(metric, -1):>14.4f}   ({headline(m, ('AP', 'AP50', 'top1'), ', ')})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
