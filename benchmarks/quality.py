"""Selection quality across seeds: strategies × seeds through ``activedet simulate``.

Every run is the CLI (``activedet simulate CONFIG --out RUN --quiet`` in a subprocess) on
a config written from BASE with the strategy, the seed and ``--set`` overrides filled in,
so a number here is what a user gets from the same YAML.

    python benchmarks/quality.py BASE.yaml --out DIR --seeds 0 1 2 \
        --strategy random --strategy isal --strategy 'isal+cb=isal:batch=class_balanced,scale=auto' \
        [--set dataset.options.n_train=500 --set train.epochs=10]

A strategy is ``NAME`` or ``LABEL=NAME:key=value,key=value`` (values read as YAML).
Prints, per strategy, the metric (top-1 for classification, AP50 for detection) of every
round as mean ± std over seeds, the mean over cycles 1..N (round 0 is the same random set
for every strategy of a seed) and the labeled boxes at which the mean curve first reaches
random's final value (when ``random`` is among the strategies), and the difference to random
paired by seed (the same seed draws the same round-0 set), averaged over rounds 1..N: at the
same round (per image) and against random's curve interpolated at the strategy's labeled
boxes (per box: what an annotator pays for). Writes ``DIR/summary.json``;
finished runs already in DIR are reused.

Every strategy must train as much as random: the labeled iterations at full and at decayed
lr (:func:`activedet.training.budget.labeled_budget`) at every round's labeled-set size
(:func:`~activedet.training.budget.protocol_sizes`; a set of sizes when the loop counts
boxes or fractions) are compared before anything runs, and a strategy whose counts differ
from random's is refused unless ``--allow-unequal-budgets``. The table prints each
strategy's full-lr iterations at the first and last of those sizes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

def parse_strategy(spec: str) -> tuple[str, dict[str, Any]]:
    """``LABEL=NAME:k=v,k=v`` | ``NAME:k=v`` | ``NAME`` -> (label, strategy mapping)."""
    label, _, rest = spec.partition("=") if "=" in spec.split(":", 1)[0] else ("", "", spec)
    name, _, kv = rest.partition(":")
    params: dict[str, Any] = {"name": name}
    for item in filter(None, kv.split(",")):
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--strategy {spec!r}: expected key=value, got {item!r}")
        params[key] = yaml.safe_load(raw)
    return label or spec, params


def override(data: dict[str, Any], assignment: str) -> None:
    """Set ``a.b.c=value`` (value read as YAML) in a raw config mapping
    (:func:`activedet.config.apply_overrides`)."""
    from activedet.config import apply_overrides
    from activedet.errors import ConfigError

    try:
        apply_overrides(data, [assignment])
    except ConfigError as e:
        raise SystemExit(f"--set: {e}") from None


def build(base: dict[str, Any], strategy: dict[str, Any], seed: int, sets: list[str]) -> dict[str, Any]:
    """The config of one (strategy, seed) run as a plain mapping: ``base`` with the seed and
    the strategy, then the ``--set`` overrides (``strategy.*`` ones included)."""
    data = json.loads(json.dumps(base))
    data["seed"] = seed
    data["strategy"] = dict(strategy)
    for s in sets:
        override(data, s)
    return data


def budgets(data: dict[str, Any], sizes: list[int]) -> list[dict[str, int]]:
    """Labeled-iteration budget of ``data``'s strategy at each labeled-set size."""
    from activedet.config import config_from_dict
    from activedet.loop.runner import resolve
    from activedet.training.budget import labeled_budget

    cfg = config_from_dict(data)
    strategy = resolve(cfg)
    return [labeled_budget(strategy.trainer, cfg.train, strategy.params, n).as_dict() for n in sizes]


def run_one(base: dict[str, Any], strategy: dict[str, Any], seed: int, run_dir: Path, sets: list[str]) -> list[dict]:
    """Simulate one (strategy, seed) through the CLI unless already complete; its rounds."""
    from activedet.loop.ledger import Ledger

    data = build(base, strategy, seed, sets)
    cfg = run_dir.parent / f"{run_dir.name}.yaml"
    done = False
    if (run_dir / Ledger.FILENAME).exists():
        with Ledger(run_dir) as ledger:
            done = bool(ledger.meta().get("complete"))
        if done and (not cfg.exists() or yaml.safe_load(cfg.read_text()) != data):
            raise SystemExit(f"{run_dir} is a finished run of another config than this one ({cfg}); "
                             "use a new --out")
    if not done:  # an unfinished run is resumed; `simulate --resume` names keys that differ
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.write_text(yaml.safe_dump(data, sort_keys=False))
        resume = ["--resume"] if (run_dir / Ledger.FILENAME).exists() else []
        proc = subprocess.run([sys.executable, "-m", "activedet", "simulate", str(cfg), "--out", str(run_dir),
                               "--quiet", *resume], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{run_dir.name}: activedet simulate failed:\n{proc.stderr[-2000:]}")
    with Ledger(run_dir) as ledger:
        return ledger.rounds()


def metric_of(rounds: list[dict]) -> str:
    return "top1" if "top1" in (rounds[0].get("metrics") or {}) else "AP50"


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def interp(x: float, xs: list[float], ys: list[float]) -> float | None:
    """Linear interpolation of the curve (xs increasing, ys) at x; None outside [xs[0], xs[-1]]."""
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def paired(curves: dict[int, list[float]], boxes: dict[int, list[float]], rand_curves: dict[int, list[float]],
           rand_boxes: dict[int, list[float]]) -> dict[str, Any]:
    """Differences to random paired by seed (same seed = same round-0 set), rounds 1..N averaged
    per seed, then mean ± std over seeds: ``per_image`` at the same round, ``per_box`` against
    random's curve interpolated at this strategy's labeled boxes (rounds outside random's box
    range are left out; a seed with none left out of the box mean)."""
    per_image, per_box = [], []
    for seed, c in curves.items():
        if seed not in rand_curves:
            continue
        per_image.append(statistics.fmean(c[k] - rand_curves[seed][k] for k in range(1, len(c))))
        diffs = [c[k] - r for k in range(1, len(c))
                 if (r := interp(boxes[seed][k], rand_boxes[seed], rand_curves[seed])) is not None]
        if diffs:
            per_box.append(statistics.fmean(diffs))
    return {"per_image": mean_std(per_image) if per_image else None,
            "per_box": mean_std(per_box) if per_box else None, "per_box_seeds": len(per_box)}


def summarise(results: dict[str, dict[int, list[dict]]]) -> dict[str, Any]:
    """label -> seed -> rounds  =>  per label: per-round mean/std, mean over cycles, boxes."""
    first = next(iter(next(iter(results.values())).values()))
    metric = metric_of(first)
    out: dict[str, Any] = {"metric": metric, "strategies": {}}
    for label, by_seed in results.items():
        curves = [[r["metrics"][metric] for r in rounds] for rounds in by_seed.values()]
        boxes = [[r["labeled_boxes"] for r in rounds] for rounds in by_seed.values()]
        per_round = [mean_std([c[k] for c in curves]) for k in range(len(curves[0]))]
        cycles = mean_std([statistics.fmean(c[1:]) for c in curves])
        out["strategies"][label] = {"per_round": per_round, "mean_over_cycles": cycles,
                                    "boxes": [statistics.fmean(b[k] for b in boxes) for k in range(len(boxes[0]))],
                                    "seeds": sorted(by_seed)}
    rand = out["strategies"].get("random")
    if rand is not None:
        metric_of_seed = {label: {seed: [r["metrics"][metric] for r in rounds] for seed, rounds in by_seed.items()}
                          for label, by_seed in results.items()}
        boxes_of_seed = {label: {seed: [float(r["labeled_boxes"]) for r in rounds] for seed, rounds in by_seed.items()}
                         for label, by_seed in results.items()}
        for label, st in out["strategies"].items():
            st["vs_random"] = paired(metric_of_seed[label], boxes_of_seed[label], metric_of_seed["random"],
                                     boxes_of_seed["random"])
        target = rand["per_round"][-1][0]
        for s in out["strategies"].values():
            hit = [b for (m, _), b in zip(s["per_round"], s["boxes"]) if m >= target]
            s["boxes_to_random_final"] = hit[0] if hit else None
    return out


def table(summary: dict[str, Any]) -> str:
    metric = summary["metric"]
    rows = []
    for label, s in summary["strategies"].items():
        rounds = "  ".join(f"{m:.3f}±{sd:.3f}" for m, sd in s["per_round"])
        mc, sc = s["mean_over_cycles"]
        reach = s.get("boxes_to_random_final")
        reach_txt = "-" if reach is None else f"{reach:.0f}"
        its = "/".join(str(b["full_lr"]) for b in s.get("budget", []))
        vs = s.get("vs_random") or {}
        d_img = "-" if not vs.get("per_image") else "{:+.4f}±{:.4f}".format(*vs["per_image"])
        d_box = "-" if not vs.get("per_box") else "{:+.4f}±{:.4f}".format(*vs["per_box"])
        rows.append(f"{label:<28} {rounds}   {mc:.4f}±{sc:.4f}   {d_img:<16} {d_box:<16} {reach_txt:<23} {its}")
    n = len(next(iter(summary["strategies"].values()))["per_round"])
    head = f"{'strategy':<28} " + "  ".join(f"{'round ' + str(k):<11}" for k in range(n)) + \
        f"   {metric} mean r1..{n - 1}   Δ/image (paired) Δ at equal boxes boxes to random's final " \
        "full-lr its (first/last round)"
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", type=Path, help="base experiment YAML")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--strategy", action="append", required=True, help="NAME or LABEL=NAME:key=value,...")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override key.path=value")
    ap.add_argument("--allow-unequal-budgets", action="store_true",
                    help="run strategies whose full-lr labeled iterations differ from random's")
    args = ap.parse_args(argv)
    from activedet.config import config_from_dict, load_config
    from activedet.training.budget import protocol_sizes

    base = load_config(args.base).to_dict()  # relative dataset paths resolved from BASE's folder
    specs = [parse_strategy(spec) for spec in args.strategy]
    sizes = protocol_sizes(config_from_dict(build(base, {"name": "random"}, 0, args.sets)).loop)
    reference = budgets(build(base, {"name": "random"}, 0, args.sets), sizes)
    budget_of = {label: budgets(build(base, strategy, 0, args.sets), sizes) for label, strategy in specs}
    def its(b: list[dict[str, int]]) -> list[tuple[int, int]]:
        return [(x["full_lr"], x["reduced_lr"]) for x in b]

    for label, b in budget_of.items():
        if its(b) != its(reference) and not args.allow_unequal_budgets:
            raise SystemExit(f"{label}: (full-lr, decayed) labeled iterations {its(b)} at {sizes} images, "
                             f"random {its(reference)}; make them equal (tests/training/test_budget.py) "
                             "or pass --allow-unequal-budgets")
    results: dict[str, dict[int, list[dict]]] = {}
    for label, strategy in specs:
        for seed in args.seeds:
            run_dir = args.out / f"{label.replace('/', '_')}-seed{seed}"
            results.setdefault(label, {})[seed] = run_one(base, strategy, seed, run_dir, args.sets)
            print(f"done {label} seed {seed}", file=sys.stderr, flush=True)
    summary = summarise(results)
    for label, s in summary["strategies"].items():
        s["budget"] = budget_of[label]
    summary["budget_sizes"] = sizes
    summary.update(base=str(args.base), sets=args.sets, strategies_spec=args.strategy)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
