"""Selection cost, side by side in one process: the ratios of issue 12 item 4.

Same process, same images, the timed functions alternated (their order rotated every
repeat), each ratio the median over repeats of the per-repeat ratio (the numerator and
denominator of a ratio are timed back to back, so slow phases of a shared machine hit
both). Models are randomly initialised (``pretrained: false``; timing only) on the built-in
``shapes`` data (3 classes, ``--size`` px, RetinaNet / FCOS + MobileNetV2, smallest
anchor 16 px as in ``configs/mial_cpu_shapes.yaml``).

1. ``mial select / infer``: one MIAL selection pass over the unlabeled pool
   (``MIALStrategy.select``: f1/f2 per-anchor discrepancies, top-k mean, ranking) over one
   plain inference pass (``adapter.infer(keep_anchors=False)``: detections only) of the
   same MIAL model over the same images, both at the MIAL scoring batch size.
   Target <= 1.10. Also shown: the same inference with a plain RetinaNet head
   (one classification tower instead of three), which tells what the MIAL head itself costs.
2. ``isal / infer`` (FCOS and RetinaNet): the per-image part of ISAL scoring (pseudo
   boxes from the model's detections, per-image gradients of ``gradient_parameters()``,
   dot product with ``s_test``), which grows with the pool, over one inference pass;
   batched (one forward pass gives the pseudo boxes and the gradients), the former two-pass
   batched path (inference, then a loss pass) and the per-image loop, with the largest
   score differences and the loop's rank correlation. Target <= 1.3 (the scoring ISAL runs: the
   gradients' dots with ``s_test``, ``_Model.image_dots``) and loop /
   batched >= 5. The once-per-round part (reference gradient + LiSSA) does not grow with
   the pool and is timed apart (``fixed s``). Pseudo boxes are the model's own detections,
   so the anchor that produced a box regresses it exactly: the box loss (FCOS GIoU,
   RetinaNet L1) sits on its kink there, and the 1e-6 differences between a batch's
   forward and an image's own forward pick different subgradients; the loop's scores
   then differ by more than rounding while the batched paths agree to the bit.
3. ``mial cycle / random cycle``: training one cycle plus the selection that ends it,
   MIAL (its trainer: label, max, min, label stages, MIAL head) vs random (plain trainer,
   plain RetinaNet, random selection), with the same labeled-pass budget: the plain
   trainer runs as many epochs as the MIAL schedule has labeled passes, and as many of its
   iterations at full lr (``lr_steps`` puts its decay where MIAL's last label stage at
   ``final_lr_scale`` begins). Labeled and unlabeled iterations are counted by wrapping
   ``adapter.load_batch``. Target <= 1.15 (the paper: 1.12-1.34).

4. ``steps`` (``--only steps``): seconds per plain / MIAL label / max / min step and per image
   of inference and MIAL selection (``--arch``, ``--backbone``, ``--size``), and the first cycle
   of ``configs/mial_voc.yaml`` composed from them. Target <= 1.15.

    .venv/bin/python benchmarks/selection_cost.py [--device cpu|cuda] [--json PATH]
        [--pool 72] [--labeled 8] [--label-epochs 4] [--repeat 2] [--repeats 3] [--size 96]
        [--threads 1] [--skip cycle,isal,mial]

The defaults keep the proportions of ``configs/mial_cpu_shapes.yaml``'s first selection round (40
labeled, 360 unlabeled, label_epochs 4, repeat 2: 20 labeled passes, 4 unlabeled) at a fifth of
its images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch
from scipy.stats import spearmanr

from activedet.config import ModelConfig, TrainConfig
from activedet.data.builtin import load_builtin
from activedet.data.pool import Pool
from activedet.influence import influence_scores
from activedet.models.detection_adapter import DetectionAdapter, detection_adapter
from activedet.strategies.isal import ISALStrategy, _chunks, _Model
from activedet.strategies.registry import build_strategy
from activedet.training.budget import labeled_budget
from activedet.training.mial import build_schedule, train_mial
from activedet.training.trainer import train_plain

TARGETS = {"mial_select": ("<=", 1.10), "isal": ("<=", 1.3), "isal_loop_speedup": (">=", 5.0),
           "cycle": ("<=", 1.15)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def alternate(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device,
              warmup: bool = True) -> dict[str, list[float]]:
    """Wall seconds of each function, ``repeats`` times, order rotated every repeat (after one
    warm-up call of each)."""
    names = list(fns)
    if warmup:
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            _sync(device)
            t0 = time.perf_counter()
            fns[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t0)
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over repeats of ``times[num][r] / times[den][r]``."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def _adapter(arch: str, variant: str, args: argparse.Namespace, device: torch.device, kwargs: dict | None = None,
             score_thresh: float = 0.05) -> DetectionAdapter:
    size = args.size
    cfg = ModelConfig(arch=arch, backbone=args.backbone, pretrained=False, image_size=size,
                      anchor_scale=16 if size < 300 else 32, score_thresh=score_thresh)
    ad = detection_adapter(cfg, 3, variant=variant, device=device, head_kwargs=kwargs)
    ad.reset(0)
    return ad


MIAL_SELECT = {"top_k": 175, "batch_size": 16}


def bench_mial(ds: Any, pool: Pool, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    st = build_strategy("mial", dict(MIAL_SELECT))
    st.progress = False
    ad = _adapter("retinanet", "mial", args, device, st.model_kwargs())
    plain = _adapter("retinanet", "plain", args, device)
    ids, bs = pool.unlabeled, int(st.params["batch_size"])
    budget = max(1, len(ids) // 4)
    fns = {
        "infer": lambda: sum(1 for _ in ad.infer(ds, ids, bs, keep_anchors=False)),
        "mial_select": lambda: st.select(ad, pool, budget, np.random.default_rng(0)),
        "infer_plain_head": lambda: sum(1 for _ in plain.infer(ds, ids, bs, keep_anchors=False)),
    }
    t = alternate(fns, args.repeats, device)
    st.select(ad, pool, budget, np.random.default_rng(0))
    scores = st.last_scores or {}
    return {"images": len(ids), "batch_size": bs, "times_s": t,
            "ratio": ratio(t, "mial_select", "infer"),
            "mial_head_infer_over_plain_head_infer": ratio(t, "infer", "infer_plain_head"),
            "score_digest": float(sum(scores.values())), "scored": len(scores)}


def bench_isal(arch: str, ds: Any, ref: Any, pool: Pool, args: argparse.Namespace,
               device: torch.device) -> dict[str, Any]:
    params = {"depth": 4, "repeats": 1, "pseudo_score_threshold": 0.05, "max_pseudo_boxes": 100,
              "batch_size": args.isal_batch, "check_inverse": False}
    if arch == "retinanet":  # an untrained RetinaNet scores its 0.01 prior everywhere
        params["pseudo_score_threshold"] = 0.005
    st = ISALStrategy(**params)
    ad = _adapter(arch, "plain", args, device, score_thresh=float(params["pseudo_score_threshold"]))
    names, prm = st._parameters(ad)
    m = _Model(ad, names, prm)
    s_test = [torch.randn(p.shape, generator=torch.Generator().manual_seed(k)).to(p.device)
              for k, p in enumerate(prm)]
    ids, bs = pool.unlabeled, int(st.params["batch_size"])

    def per_image(how: str) -> dict[int, float]:
        """``batched``: what ISAL runs (one forward for pseudo boxes and gradients); ``two_pass``:
        inference, then a batched loss pass over the images with pseudo boxes (before this
        benchmark); ``loop``: the per-image reference."""
        out: dict[int, float] = {}
        for chunk in _chunks(ids, bs):
            if how == "two_pass":
                kept, inputs, targets = m.pseudo_targets(ds, chunk, st.params)
                g = m.sample_grads(inputs, targets, len(kept), True) if kept else []
            elif how == "dots":  # what ISALStrategy.score runs: the gradients' dots, never formed
                kept, d = m.image_dots(ds, chunk, st.params, True, s_test)
                out.update(zip(kept, d.tolist()))
                continue
            else:
                kept, g = m.image_grads(ds, chunk, st.params, how == "batched")
            if kept:
                out.update(zip(kept, (-influence_scores(s_test, g)).tolist()))
        return out

    fns = {"infer": lambda: sum(1 for _ in ad.infer(ds, ids, bs, keep_anchors=False)),
           "isal_dots": lambda: per_image("dots"), "isal_batched": lambda: per_image("batched"), "isal_two_pass": lambda: per_image("two_pass"),
           "isal_loop": lambda: per_image("loop")}
    t = alternate(fns, args.repeats, device)
    sb, s2, sl, sd = per_image("batched"), per_image("two_pass"), per_image("loop"), per_image("dots")

    def dmax(a: dict[int, float], b: dict[int, float]) -> float:
        return max((abs(a[i] - b[i]) for i in a), default=0.0) if a.keys() == b.keys() else float("nan")

    fixed = ISALStrategy(**{**params, "pseudo_score_threshold": 1.0})  # no image scored: the fixed part only
    pool_fixed = Pool.from_dataset(ds)
    pool_fixed.reference = ref
    pool_fixed.add(pool.labeled, 0)
    _sync(device)
    t0 = time.perf_counter()
    fixed.score(ad, pool_fixed, ids[:1], np.random.default_rng(0))
    _sync(device)
    fixed_s = time.perf_counter() - t0
    return {"arch": arch, "images": len(ids), "scored": len(sb), "batch_size": bs,
            "gradient_params": int(sum(p.numel() for p in prm)), "times_s": t,
            "ratio_dots": ratio(t, "isal_dots", "infer"), "max_rel_diff_dots": dmax(sb, sd) / max(
                max((abs(v) for v in sb.values()), default=0.0), 1e-300),
            "ratio_batched": ratio(t, "isal_batched", "infer"), "ratio_two_pass": ratio(t, "isal_two_pass", "infer"),
            "ratio_loop": ratio(t, "isal_loop", "infer"), "loop_over_batched": ratio(t, "isal_loop", "isal_batched"),
            "max_abs_diff_two_pass": dmax(sb, s2), "max_abs_diff_loop": dmax(sb, sl),
            "max_abs_score": max((abs(v) for v in sl.values()), default=0.0),
            "spearman_loop": float(spearmanr([sb[i] for i in sb], [sl[i] for i in sb])[0]) if len(sb) > 1 else 1.0,
            "fixed_s": fixed_s, "fixed_depth": params["depth"], "reference_images": len(ref.ids)}


def bench_cycle(ds: Any, pool: Pool, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    mial_params = {**MIAL_SELECT, "label_epochs": args.label_epochs, "rounds": 1, "max_epochs": 1,
                   "min_epochs": 1, "repeat": args.repeat}
    st = build_strategy("mial", mial_params)
    st.progress = False
    rnd = build_strategy("random", {})
    s = st.settings
    stages = build_schedule(s)
    lab_passes = sum(x.epochs * s.repeat for x in stages)  # every stage iteration takes a labeled step
    full_lr = sum(x.epochs * s.repeat for x in stages if x.lr_scale == 1.0)
    cfg = TrainConfig(epochs=lab_passes, batch_size=4, lr=0.01, warmup_iters=0, grad_clip=10.0,
                      lr_steps=[full_lr / lab_passes], on_collapse="warn", eval_batch_size=16)
    labeled, unlabeled = list(pool.labeled), pool.unlabeled
    ours, theirs = (labeled_budget(t, cfg, st.params, len(labeled)) for t in ("mial", "plain"))
    assert (ours.full_lr, ours.warmup, ours.reduced_lr) == (theirs.full_lr, theirs.warmup, theirs.reduced_lr), "the MIAL and random cycles must train the same labeled iterations (training/budget.py)"
    budget = max(1, len(unlabeled) // 4)
    mial_ad = _adapter("retinanet", "mial", args, device, st.model_kwargs())
    plain_ad = _adapter("retinanet", "plain", args, device)
    counts = {"mial": [0, 0], "random": [0, 0]}  # [labeled, unlabeled] batches loaded for training
    lab = set(labeled)
    for name, ad in (("mial", mial_ad), ("random", plain_ad)):
        orig = ad.load_batch

        def counted(dataset: Any, ids: Any, augment: bool, generator: Any = None, decoded: Any = None,
                    _o=orig, _n=name) -> Any:
            counts[_n][0 if set(ids) <= lab else 1] += 1
            return _o(dataset, ids, augment, generator, decoded)
        ad.load_batch = counted  # type: ignore[method-assign]

    parts: dict[str, list[float]] = {"mial_train": [], "mial_select": [], "random_train": [], "random_select": []}

    def timed(key: str, fn: Callable[[], Any]) -> None:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        parts[key].append(time.perf_counter() - t0)

    def mial_cycle() -> None:
        mial_ad.reset(1)
        timed("mial_train", lambda: train_mial(mial_ad, ds, labeled, unlabeled, cfg, st.params, 1, False))
        timed("mial_select", lambda: st.select(mial_ad, pool, budget, np.random.default_rng(0)))

    def random_cycle() -> None:
        plain_ad.reset(1)
        timed("random_train", lambda: train_plain(plain_ad, ds, labeled, unlabeled, cfg, rnd.params, 1, False))
        timed("random_select", lambda: rnd.select(plain_ad, pool, budget, np.random.default_rng(0)))

    t = alternate({"mial_cycle": mial_cycle, "random_cycle": random_cycle}, args.repeats, device,
                  warmup=False)
    t.update(parts)
    runs = args.repeats
    per = {k: [v[0] // runs, v[1] // runs] for k, v in counts.items()}  # before the step below loads a batch
    # one labeled SGD step's forward + backward on the same batch: MIAL head vs plain RetinaNet head
    inputs, targets = plain_ad.load_batch(ds, labeled[:cfg.batch_size], False)

    def step(ad: DetectionAdapter) -> None:
        ad.model.zero_grad(set_to_none=True)
        sum(ad.train_loss(inputs, targets).values()).backward()

    t.update(alternate({"mial_step": lambda: step(mial_ad), "plain_step": lambda: step(plain_ad)},
                       max(5, args.repeats), device))
    return {"labeled": len(labeled), "pool": len(unlabeled), "batch_size": cfg.batch_size,
            "stages": [f"{x.kind}x{x.epochs * s.repeat}@{x.lr_scale:g}" for x in stages],
            "labeled_iters": {"mial": per["mial"][0], "random": per["random"][0]},
            "unlabeled_iters": {"mial": per["mial"][1], "random": per["random"][1]},
            "full_lr_labeled_passes": full_lr, "labeled_passes": lab_passes, "times_s": t,
            "ratio": ratio(t, "mial_cycle", "random_cycle"), "train_ratio": ratio(t, "mial_train", "random_train"),
            "select_share_of_mial_cycle": ratio(t, "mial_select", "mial_cycle"),
            "labeled_step_ratio": ratio(t, "mial_step", "plain_step")}


def bench_steps(ds: Any, pool: Pool, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Seconds per step of every part of a cycle, then the cycle of ``configs/mial_voc.yaml``
    (VOC07 trainval, 5 % labeled, batch 2, its MIAL schedule; random: 26 plain passes) composed
    from them: one plain labeled step (RetinaNet), one MIAL label / max / min step (a max or min
    step is a labeled step and an unlabeled step, as the trainer runs them), one MIAL selection
    pass and one plain inference pass per image."""
    from activedet.config import load_config
    from activedet.training.mial import DETECTION_STAGES, Stage, run_stage

    voc = load_config("configs/mial_voc.yaml")
    st = build_strategy("mial", dict(voc.strategy.params))
    st.progress = False
    cfg = TrainConfig(epochs=1, batch_size=2, lr=1e-4, warmup_iters=0, grad_clip=10.0, on_collapse="warn",
                      eval_batch_size=2)
    mial_ad = _adapter(args.arch, "mial", args, device, st.model_kwargs())
    plain_ad = _adapter(args.arch, "plain", args, device)
    k = args.step_batches
    labeled, unlabeled = list(pool.labeled)[:2 * k], pool.unlabeled[:2 * k]
    assert len(labeled) == 2 * k, f"--labeled must be >= {2 * k} for --step-batches {k}"
    s = st.settings
    gen = torch.Generator().manual_seed(0)

    def stage(kind: str) -> Callable[[], Any]:
        one = Stage(kind, 1, 1.0, 0)
        return lambda: run_stage(mial_ad, ds, one, labeled, unlabeled, cfg, dataclasses.replace(s, repeat=1), gen,
                                 ops=DETECTION_STAGES)

    ids = pool.unlabeled[:args.step_images]
    budget = max(1, len(ids) // 4)
    sub = Pool.from_dataset(ds)
    scored = set(ids)
    sub.add([i for i in ds.ids if i not in scored], 0)
    fns = {"plain_step": lambda: train_plain(plain_ad, ds, labeled, unlabeled, cfg, {}, 0, False),
           "mial_label_step": stage("label"), "mial_max_step": stage("max"), "mial_min_step": stage("min"),
           "plain_infer": lambda: sum(1 for _ in plain_ad.infer(ds, ids, 2, keep_anchors=False)),
           "mial_select": lambda: st.select(mial_ad, sub, budget, np.random.default_rng(0))}
    t = alternate(fns, args.repeats, device)
    per = {name: statistics.median(v) / (k if name.endswith("_step") else len(ids)) for name, v in t.items()}
    # the protocol: VOC07 trainval 5011 images, 5 % labeled in the first cycle; MIAL's own schedule
    n_train = 5011
    n_lab = int(voc.loop.initial * n_train)
    steps_per_pass = math.ceil(n_lab / voc.train.batch_size)
    mial_passes = {kind: sum(x.epochs * s.repeat for x in build_schedule(s) if x.kind == kind)
                   for kind in ("label", "max", "min")}
    plain_passes = voc.train.epochs
    mial_train = sum(mial_passes[kind] * steps_per_pass * per[f"mial_{kind}_step"] for kind in mial_passes)
    random_train = plain_passes * steps_per_pass * per["plain_step"]
    mial_sel = (n_train - n_lab) * per["mial_select"]
    return {"arch": args.arch, "backbone": args.backbone, "size": args.size, "times_s": t,
            "seconds_per_step_or_image": per, "protocol": {
                "config": "configs/mial_voc.yaml", "train_images": n_train, "labeled": n_lab,
                "batch_size": voc.train.batch_size, "steps_per_pass": steps_per_pass,
                "mial_passes": mial_passes, "plain_passes": plain_passes},
            "mial_train_s": mial_train, "random_train_s": random_train, "mial_select_s": mial_sel,
            "mial_cycle_over_random": (mial_train + mial_sel) / random_train,
            "mial_train_over_random": mial_train / random_train}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--pool", type=int, default=72, help="unlabeled images scored")
    ap.add_argument("--labeled", type=int, default=8, help="labeled images (cycle training, ISAL Hessian)")
    ap.add_argument("--label-epochs", type=int, default=4, help="MIAL label_epochs of the timed cycle")
    ap.add_argument("--repeat", type=int, default=2, help="MIAL repeat of the timed cycle")
    ap.add_argument("--size", type=int, default=96, help="image size (px)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--isal-batch", type=int, default=8, help="ISAL scoring batch size")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: mial,isal,cycle,steps")
    ap.add_argument("--only", default="", help="comma list of the sections to run (default: all)")
    ap.add_argument("--arch", default="retinanet", choices=["retinanet", "fcos"],
                    help="steps section: the detector whose cycle is composed")
    ap.add_argument("--backbone", default="mobilenet_v2", choices=["mobilenet_v2", "resnet50", "resnet18"])
    ap.add_argument("--step-batches", type=int, default=2, help="steps section: batches of 2 timed per step kind")
    ap.add_argument("--step-images", type=int, default=8, help="steps section: images per inference/selection")
    ap.add_argument("--json", default=None, help="also write every measurement as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    skip = set(filter(None, args.skip.split(",")))
    if args.only:
        skip |= {"mial", "isal", "cycle", "steps"} - set(args.only.split(","))
    opts = {"n_train": args.pool + args.labeled, "n_val": 8, "n_test": 4, "image_size": args.size,
            "num_classes": 3, "max_objects": 4}
    ds = load_builtin("shapes", "train", opts)
    ref = load_builtin("shapes", "val", opts)
    pool = Pool.from_dataset(ds)
    pool.add(ds.ids[:args.labeled], 0)

    res: dict[str, Any] = {}
    if "mial" not in skip:
        res["mial"] = bench_mial(ds, pool, args, device)
    if "isal" not in skip:
        res["isal"] = [bench_isal(a, ds, ref, pool, args, device) for a in ("fcos", "retinanet")]
    if "cycle" not in skip:
        res["cycle"] = bench_cycle(ds, pool, args, device)
    if "steps" not in skip:
        res["steps"] = bench_steps(ds, pool, args, device)

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()} CPU, {args.threads} thread(s)"
    print(f"selection cost ({dev}; {args.size} px shapes, {args.pool} unlabeled / {args.labeled} labeled "
          f"images, median of {args.repeats} alternated repeats)")
    print(f"{'ratio':<58} {'measured':>9} {'target':>8}  seconds (median)")

    def row(label: str, value: float, target: str, secs: str) -> None:
        print(f"{label:<58} {value:>9.2f} {target:>8}  {secs}")

    def med(t: dict[str, list[float]], k: str) -> float:
        return statistics.median(t[k])

    if "mial" in res:
        r = res["mial"]
        t = r["times_s"]
        row("mial selection pass / inference (same MIAL model)", r["ratio"], "<= 1.10",
            f"{med(t, 'mial_select'):.2f} / {med(t, 'infer'):.2f}")
        row("  MIAL-head inference / plain-RetinaNet inference", r["mial_head_infer_over_plain_head_infer"], "-",
            f"{med(t, 'infer'):.2f} / {med(t, 'infer_plain_head'):.2f}")
    for r in res.get("isal", []):
        t = r["times_s"]
        row(f"isal {r['arch']} scoring / inference (gradient dots; rel. diff {r['max_rel_diff_dots']:.0e})",
            r["ratio_dots"], "<= 1.3", f"{med(t, 'isal_dots'):.2f} / {med(t, 'infer'):.2f}")
        row(f"isal {r['arch']} batched gradients / inference ({r['gradient_params']} grad params)",
            r["ratio_batched"], "-", f"{med(t, 'isal_batched'):.2f} / {med(t, 'infer'):.2f}")
        row(f"isal {r['arch']} two-pass batched / inference (max |d| {r['max_abs_diff_two_pass']:.0e})",
            r["ratio_two_pass"], "-", f"{med(t, 'isal_two_pass'):.2f} / {med(t, 'infer'):.2f}")
        row(f"isal {r['arch']} loop / inference", r["ratio_loop"], "-",
            f"{med(t, 'isal_loop'):.2f} / {med(t, 'infer'):.2f}")
        row(f"isal {r['arch']} loop / batched (max |d| {r['max_abs_diff_loop']:.0e} of {r['max_abs_score']:.0e}, "
            f"rho {r['spearman_loop']:.3f})", r["loop_over_batched"], ">= 5",
            f"fixed part {r['fixed_s']:.2f} s (depth {r['fixed_depth']}); {r['scored']}/{r['images']} scored")
    if "cycle" in res:
        r = res["cycle"]
        t = r["times_s"]
        row(f"mial cycle / random cycle ({r['labeled_iters']['mial']} vs {r['labeled_iters']['random']} "
            f"labeled its)", r["ratio"], "<= 1.15", f"{med(t, 'mial_cycle'):.2f} / {med(t, 'random_cycle'):.2f}")
        row("  mial training / random training", r["train_ratio"], "-",
            f"{med(t, 'mial_train'):.2f} / {med(t, 'random_train'):.2f}")
        row("  one labeled step (fwd + bwd): MIAL head / plain head", r["labeled_step_ratio"], "-",
            f"{med(t, 'mial_step'):.3f} / {med(t, 'plain_step'):.3f}")
        row("  mial selection / whole mial cycle", r["select_share_of_mial_cycle"], "-",
            f"{med(t, 'mial_select'):.2f} / {med(t, 'mial_cycle'):.2f}")
        print(f"  MIAL stages {' '.join(r['stages'])} ({r['full_lr_labeled_passes']} of {r['labeled_passes']} "
              f"labeled passes at full lr, {r['unlabeled_iters']['mial']} unlabeled its); random: "
              f"{r['labeled_passes']} epochs, lr x0.1 after {r['full_lr_labeled_passes']}")
    if "steps" in res:
        r = res["steps"]
        per, pr = r["seconds_per_step_or_image"], r["protocol"]
        print(f"\ncycle of {pr['config']} composed from measured steps ({r['arch']} {r['backbone']}, "
              f"{r['size']} px; {pr['labeled']} labeled of {pr['train_images']}, batch {pr['batch_size']}, "
              f"{pr['steps_per_pass']} steps per pass)")
        for name, v in per.items():
            print(f"  {name:<18} {v:8.3f} s per {'step' if name.endswith('_step') else 'image'}")
        print(f"  MIAL passes {pr['mial_passes']}, random {pr['plain_passes']} plain passes")
        print(f"  mial training {r['mial_train_s']:.0f} s + selection {r['mial_select_s']:.0f} s; "
              f"random training {r['random_train_s']:.0f} s")
        row("mial cycle / random cycle (composed)", r["mial_cycle_over_random"], "<= 1.15", "")
        row("  mial training / random training (composed)", r["mial_train_over_random"], "-", "")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "args": vars(args), "targets": TARGETS, **res}, f, indent=2)


if __name__ == "__main__":
    main()
