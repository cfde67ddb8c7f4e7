"""ISAL scoring cost per unlabeled image, relative to one plain inference pass.

For each model (a classifier and FCOS) on the same images:

- ``inference``: ``adapter.infer`` over the images (eval mode, batched), seconds per image;
- ``isal batched`` / ``isal loop``: the per-image part of ISAL scoring (UUIC pseudo labels,
  the per-image expected gradient of the chosen parameters, the dot product with
  ``s_test``), with the batched path (for FCOS one forward pass gives both the pseudo boxes
  and the gradients' dots with s_test, ``_Model.image_dots``; the classifier takes an inference pass,
  then a gradient pass) and with the per-sample loop; seconds per image and the ratio to
  ``inference``;
- ``fixed``: the once-per-round part (reference gradient + LiSSA), reported separately with
  its depth and repeats, since it does not grow with the pool.

Models are randomly initialised (timing only). FCOS keeps every detection with score ≥ 0.05
as a pseudo box (an untrained FCOS scores ≈ 0.07 everywhere), so each image carries the
maximum 100 pseudo boxes: the most expensive case for the loss.

    .venv/bin/python benchmarks/isal_scoring.py [--device cpu|cuda] [--images N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import numpy as np
import torch

from activedet.config import ModelConfig
from activedet.data.builtin import load_builtin
from activedet.data.pool import Pool
from activedet.models.classifier import ClassificationAdapter
from activedet.models.detection_adapter import DetectionAdapter, detection_adapter
from activedet.strategies.isal import ISALStrategy, _chunks, _Model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Any, device: torch.device, repeat: int = 2) -> float:
    """Best of ``repeat`` wall times (seconds) after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _case(name: str, adapter: Any, dataset: Any, reference: Any, params: dict[str, Any],
          n_images: int, batch_size: int, labeled: int) -> dict[str, Any]:
    ids = dataset.ids[labeled:labeled + n_images]
    device = adapter.device
    st = ISALStrategy(batch_size=batch_size, **params)
    names, prm = st._parameters(adapter)
    m = _Model(adapter, names, prm)
    s_test = [torch.randn_like(p) for p in prm]

    def infer() -> None:
        for _ in adapter.infer(dataset, ids, batch_size):
            pass

    def per_image(batched: bool) -> int:
        scored = 0
        for chunk in _chunks(ids, batch_size):
            kept, _ = m.image_dots(dataset, chunk, st.params, batched, s_test)  # what ISALStrategy.score runs
            scored += len(kept)
        return scored

    scored = per_image(True)
    t_inf = _timed(infer, device) / len(ids)
    t_b = _timed(lambda: per_image(True), device) / len(ids)
    t_l = _timed(lambda: per_image(False), device, repeat=1) / len(ids)

    pool = Pool.from_dataset(dataset)
    pool.reference = reference
    pool.add(dataset.ids[:labeled], 0)
    fixed_st = ISALStrategy(batch_size=batch_size, **params)
    fixed_st.params["pseudo_score_threshold"] = 1.0  # nothing scored: time only the fixed part
    _sync(device)
    t0 = time.perf_counter()
    fixed_st.score(adapter, pool, ids[:1], np.random.default_rng(0))
    _sync(device)
    t_fixed = time.perf_counter() - t0
    return {
        "model": name, "images": len(ids), "scored": scored,
        "gradient_params": int(sum(p.numel() for p in prm)),
        "inference_s_per_image": t_inf,
        "isal_batched_s_per_image": t_b, "isal_loop_s_per_image": t_l,
        "ratio_batched": t_b / t_inf, "ratio_loop": t_l / t_inf,
        "fixed_s": t_fixed, "fixed_depth": fixed_st.depth(adapter.task, labeled),
        "fixed_repeats": int(params.get("repeats", 4)), "reference_images": len(reference.ids),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=32, help="unlabeled images timed per model")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []

    fm_opts = {"n_train": 200, "n_test": 40}
    fm = load_builtin("fashion_mnist", "train", fm_opts)
    fm_ref = load_builtin("fashion_mnist", "test", fm_opts)
    for arch, size in (("small_cnn", 28), ("resnet18", 32)):
        ad = ClassificationAdapter(ModelConfig(arch=arch, image_size=size), 10, device=device)
        rows.append(_case(f"{arch} {size}px (all >=2-dim weights)", ad, fm, fm_ref,
                          {"depth": 20, "repeats": 1}, args.images, 16, 40))

    sh_opts = {"n_train": 120, "n_val": 20, "n_test": 10, "image_size": 96}
    shapes = load_builtin("shapes", "train", sh_opts)
    shapes_ref = load_builtin("shapes", "val", sh_opts)
    cfg = ModelConfig(arch="fcos", backbone="mobilenet_v2", pretrained=False, image_size=96,
                      score_thresh=0.05)
    ad = detection_adapter(cfg, shapes.num_classes, device=device)
    ad.reset(0)
    rows.append(_case("fcos mobilenet_v2 96px (final cls/reg/ctr convs)", ad, shapes, shapes_ref,
                      {"depth": 10, "repeats": 1, "pseudo_score_threshold": 0.05}, args.images, 8, 40))

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()} CPU, {args.threads} thread(s)"
    print(f"ISAL scoring cost per unlabeled image vs one inference pass ({dev})")
    print(f"{'model':<50} {'infer ms/img':>12} {'batched ms':>11} {'x infer':>8} "
          f"{'loop ms':>9} {'x infer':>8} {'fixed s (depth x rep)':>22}")
    for r in rows:
        print(f"{r['model']:<50} {1e3 * r['inference_s_per_image']:>12.2f} "
              f"{1e3 * r['isal_batched_s_per_image']:>11.2f} {r['ratio_batched']:>8.1f} "
              f"{1e3 * r['isal_loop_s_per_image']:>9.2f} {r['ratio_loop']:>8.1f} "
              f"{r['fixed_s']:>12.2f} ({r['fixed_depth']} x {r['fixed_repeats']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
