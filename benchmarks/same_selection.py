"""Every shipped config's strategy (its name and keys, configs/*.yaml) on one fixed pool with a
fixed untrained model: the batch ``select`` picks and the per-image scores, as JSON.

Run it on two checkouts and compare the files (issue 38: the strategy redesign must pick the
same batch with the same scores):

    PYTHONPATH=OLD/src:OLD python benchmarks/same_selection.py --configs configs [--wrappers] > old.json
    PYTHONPATH=NEW/src:NEW python benchmarks/same_selection.py --configs configs [--wrappers] > new.json
    python benchmarks/same_selection.py --compare old.json new.json

Works on both sides of the redesign: ``select`` returning ids (scores in ``last_scores``) or
a ``Selection``. The model is the config's arch at 64 px (32 px classifiers), seeded, not
trained; the pool: 14 images, 4 labeled; budget 3, then a full ranking with a batch of 3
(what ``loop.unit: boxes`` asks for). ISAL's LiSSA runs at depth 2, 1 repeat (both sides).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml


#: ISAL keys replaced on both sides (the comparison needs equal settings, not the paper's)
SMALL_ISAL = {"depth": 2, "repeats": 1, "power_iters": 3, "power_images": 4}


def _pool_and_adapter(raw: dict[str, Any], strategy: Any) -> tuple[Any, Any]:
    from activedet.data.pool import Pool
    from activedet.models.factory import build_adapter
    from tests.conftest import make_detection_dataset, tiny_config
    from tests.strategies.test_contract import _classification_dataset

    task = raw.get("task", "detection")
    arch = raw.get("model", {}).get("arch", "retinanet")
    if task == "detection":
        data = make_detection_dataset(n=14, size=64, num_classes=2, seed=3)
        ref = make_detection_dataset(n=4, size=64, num_classes=2, seed=4, start_id=101)
        cfg = tiny_config(**{"model.arch": arch})
    else:
        data, ref = _classification_dataset(14), _classification_dataset(4, seed=1)
        cfg = tiny_config(task="classification", **{"model.arch": arch, "model.image_size": 32,
                                                    "model.pretrained": False})
    adapter = build_adapter(cfg, data.num_classes, strategy)
    adapter.reset(0)
    pool = Pool.from_dataset(data)
    pool.reference = ref
    pool.add(pool.ids[:4], 0)
    return pool, adapter


def _picked(strategy: Any, adapter: Any, pool: Any, n: int, batch: int | None) -> dict[str, Any]:
    got = strategy.select(adapter, pool, n, np.random.default_rng(7), batch=batch)
    ids, scores = (got.ids, got.scores) if hasattr(got, "ids") else (got, strategy.last_scores)
    return {"ids": [int(i) for i in ids],
            "scores": {str(k): float(v) for k, v in sorted((scores or {}).items())}}


#: the ranking wrappers on detectors (no shipped config sets them): name -> raw config
WRAPPERS = {f"wrapper:{arch}:{name}:{tag}": {"task": "detection", "model": {"arch": arch},
                                             "strategy": {"name": name, "min_score": 0.0, **keys}}
            for arch in ("retinanet", "faster_rcnn") for name in ("entropy", "margin")
            # an untrained RetinaNet scores ~0.01 (its prior): every detection counts, boxes from 0.009
            for tag, keys in (("cost_aware", {"cost_aware": True, "cost_min_score": 0.009}),
                              ("class_balanced", {"batch": "class_balanced", "preselect": 2.0}),
                              ("kcenter", {"batch": "kcenter", "preselect": 2.0}),
                              ("cost_aware+kmeanspp", {"cost_aware": True, "cost_min_score": 0.009,
                                                       "batch": "kmeanspp", "preselect": 2.0}))}


def run(configs: Path, wrappers: bool = False) -> dict[str, Any]:
    from activedet.strategies.registry import build_strategy

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    cases = [(p.name, yaml.safe_load(p.read_text())) for p in sorted(configs.glob("*.yaml"))]
    for key, raw in cases + (list(WRAPPERS.items()) if wrappers else []):
        spec = dict(raw.get("strategy") or {"name": "random"})
        name = spec.pop("name")
        params = {k: v for k, v in spec.items() if k not in ("batch_size",)}
        if name in ("isal", "grad_similarity"):  # the same on both sides, minutes instead of hours on CPU
            params.update({k: v for k, v in SMALL_ISAL.items() if k in params or k in ("depth", "repeats")})
        try:
            strategy = build_strategy(name, {**params, "batch_size": 4} if "batch_size" in spec else params)
            strategy.progress = False
            pool, adapter = _pool_and_adapter(raw, strategy)
            row = {"strategy": name, "budget3": _picked(strategy, adapter, pool, 3, None)}
            row["ranking"] = _picked(strategy, adapter, pool, len(pool.unlabeled), 3)
        except Exception as e:  # noqa: BLE001 - recorded, compared like a result
            row = {"strategy": name, "error": f"{type(e).__name__}: {e}"}
        out[key] = row
        print(key, name, "error" if "error" in row else row["budget3"]["ids"], file=sys.stderr)
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
    bad = 0
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if x is None or y is None:
            print(f"{key}: only in {'new' if x is None else 'old'}")
            continue
        for part in ("budget3", "ranking"):
            if "error" in x or "error" in y:
                same = x.get("error") == y.get("error")
                print(f"{key}: {'same error' if same else 'DIFFERENT'}: {x.get('error')} | {y.get('error')}")
                bad += not same
                break
            px, py = x[part], y[part]
            ids_same = px["ids"] == py["ids"]
            worst = max([abs(px["scores"][k] - py["scores"].get(k, math.inf)) for k in px["scores"]] + [0.0])
            keys_same = set(px["scores"]) == set(py["scores"])
            print(f"{key} {x['strategy']} {part}: ids {'same' if ids_same else 'DIFFERENT'}, "
                  f"{len(px['scores'])} scores, keys {'same' if keys_same else 'DIFFERENT'}, "
                  f"max |difference| {worst:.3g}")
            bad += not (ids_same and keys_same and worst <= 1e-9)
    print(f"{bad} differences")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=Path)
    ap.add_argument("--compare", nargs=2, type=Path)
    ap.add_argument("--wrappers", action="store_true", help="also entropy / margin with cost_aware and the "
                                                             "batch modes on RetinaNet and Faster R-CNN")
    args = ap.parse_args()
    if args.compare:
        return compare(*(json.loads(p.read_text()) for p in args.compare))
    json.dump(run(args.configs, args.wrappers), sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
