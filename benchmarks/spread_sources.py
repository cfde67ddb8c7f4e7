"""Where one strategy's seed-to-seed spread comes from (issue 40).

    python benchmarks/spread_sources.py CONFIG RUN_DIR --repeats 4 [--set train.average_last=0.25] --out F.json

On the final labeled set of RUN_DIR (a finished ``simulate`` run, e.g. a ``compare`` cell),
trains the round's model ``--repeats`` times varying only the initialisation seed (the data
order fixed), then only the data-order seed (the initialisation fixed), and evaluates each
on the test split; then bootstraps the test images of the first model's detections
(resampled with replacement, ``--bootstraps`` times). Prints and writes the AP50 standard
deviation of each source. The labeled set's own contribution is what the across-seed
spread of ``compare`` has beyond these (it varies all three at once).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from activedet.config import load_config
from activedet.evaluation.detection import coco_metrics
from activedet.loop.ledger import Ledger
from activedet.loop.runner import prepare
from activedet.models.factory import build_adapter
from activedet.training.trainer import train_plain


def bootstrap_ap50(gt: dict, dets: list[dict], n: int, seed: int = 0) -> list[float]:
    """AP50 on ``n`` resamples of the test images with replacement (a drawn image's copies
    get new ids, with their boxes and detections)."""
    rng = np.random.default_rng(seed)
    images = gt["images"]
    anns_of: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        anns_of.setdefault(a["image_id"], []).append(a)
    dets_of: dict[int, list[dict]] = {}
    for d in dets:
        dets_of.setdefault(d["image_id"], []).append(d)
    out = []
    for _ in range(n):
        pick = rng.integers(0, len(images), size=len(images))
        new_images, new_anns, new_dets = [], [], []
        for new_id, k in enumerate(pick, start=1):
            img = images[int(k)]
            new_images.append({**img, "id": new_id})
            new_anns += [{**a, "id": len(new_anns) + j + 1, "image_id": new_id}
                         for j, a in enumerate(anns_of.get(img["id"], []))]
            new_dets += [{**d, "image_id": new_id} for d in dets_of.get(img["id"], [])]
        sample = {**gt, "images": new_images, "annotations": new_anns}
        out.append(coco_metrics(sample, new_dets)["AP50"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("run_dir")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--bootstraps", type=int, default=200)
    ap.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    with Ledger(args.run_dir) as ledger:
        rounds = ledger.rounds(scores=False)
        seed = ledger.meta()["seed"]
    cfg.seed = seed
    labeled = [i for r in rounds for i in r["selected"]]
    exp = prepare(cfg)
    adapter = build_adapter(cfg, exp.train.num_classes, exp.strategy)
    t0 = time.time()

    def train_eval(init_seed: int, order_seed: int) -> tuple[float, object]:
        adapter.reset(init_seed)
        train_plain(adapter, exp.train, labeled, [], cfg.train, {}, order_seed, progress=False)
        ap50 = adapter.evaluate(exp.test, batch_size=cfg.train.eval_batch_size)["AP50"]
        print(f"  init {init_seed} order {order_seed}: AP50 {100 * ap50:.1f} ({time.time() - t0:.0f} s)",
              file=sys.stderr, flush=True)
        return ap50, adapter

    init = [train_eval(1000 + k, 0)[0] for k in range(args.repeats)]
    order = [train_eval(1000, 2000 + k)[0] for k in range(args.repeats)]
    train_eval(1000, 0)
    dets = adapter.predict_coco(exp.test, exp.test.ids, cfg.train.eval_batch_size)
    boot = bootstrap_ap50(exp.test.to_coco(exp.test.ids), dets, args.bootstraps)
    sd = lambda xs: 100 * statistics.stdev(xs)
    result = {"config": args.config, "overrides": args.set, "run_dir": args.run_dir, "labeled_images": len(labeled),
              "ap50_init": init, "ap50_order": order, "sd_init": sd(init), "sd_order": sd(order),
              "sd_test_bootstrap": sd(boot), "seconds": time.time() - t0}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"AP50 sd over {args.repeats} initialisations: {result['sd_init']:.1f}; over {args.repeats} data orders: "
          f"{result['sd_order']:.1f}; test-image bootstrap ({args.bootstraps}): {result['sd_test_bootstrap']:.1f} "
          f"points ({len(labeled)} labeled images, {result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
