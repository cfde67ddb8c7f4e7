"""``activedet compare CONFIG --strategies random,entropy,... --seeds N --out DIR``.

Replays the config's protocol on the user's labeled data for every strategy × seed, each
cell an ordinary, resumable ``simulate`` run directory ``DIR/runs/<strategy>-seed<k>/``
(its config next to it, ``<cell>.yaml``; re-running continues, a cell whose config changed
is refused, naming it), with equal labeled-training budgets
(:func:`activedet.training.budget.labeled_budget`: refused otherwise). Then, from the
ledgers alone (``--only`` runs one cell for a job array; a plain ``compare`` runs what is
missing and aggregates):

- per round, mean ± std of the metric per strategy;
- differences to random paired by seed (the same seed draws the same round-0 set): per
  image (the same round) and per box (random's curve interpolated at the strategy's
  labeled boxes), and the **boxes saved**: the labeled boxes each strategy needs to reach
  random's final metric against the boxes random needs (linear between rounds; a seed
  that never reaches it counts its last round's boxes, a bound that favours random);
- per strategy a verdict from the paired 95% confidence interval over seeds (Student t)
  and one recommendation.

Writes ``DIR/compare.json`` and ``DIR/report/index.html`` (the run report with seed bands
against images and boxes, plus the verdicts). Strategy items are ``NAME`` or
``[LABEL=]NAME:key=value;key=value`` (values read as YAML), e.g. ``entropy:batch=kcenter``;
a dotted key sets that config key for the item's cells, e.g.
``typical=random:loop.initial_strategy=typical`` (random, with a TypiClust round 0).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from activedet.config import ExperimentConfig, config_from_dict, differences, with_defaults
from activedet.errors import ConfigError, RunDirError

log = logging.getLogger(__name__)


# ============================================================================ the grid
@dataclass(frozen=True)
class Cell:
    label: str  # the strategy item as given
    strategy: dict[str, Any]  # {"name": ..., settings...}
    seed: int

    @property
    def name(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in self.label)
        return f"{safe}-seed{self.seed}"


def parse_strategy(item: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` | ``NAME:k=v;k=v`` | ``LABEL=NAME:k=v;k=v`` -> (label, {"name": NAME, k: v})."""
    head = item.split(":", 1)[0]
    label, _, rest = item.partition("=") if "=" in head else ("", "", item)
    name, _, kv = rest.partition(":")
    if not name:
        raise ConfigError(f"--strategies item {item!r} has no strategy name")
    params: dict[str, Any] = {"name": name}
    for pair in filter(None, kv.replace(",", ";").split(";")):
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"--strategies item {item!r}: expected key=value, got {pair!r}")
        params[key] = yaml.safe_load(raw)
    return label or item, params


def cell_config(base: dict[str, Any], cell: Cell, unit: str | None) -> dict[str, Any]:
    """The config of one cell: ``base`` with the cell's seed and strategy (the base's own
    settings when it names the same strategy, else the strategy's defaults)."""
    data = json.loads(json.dumps(base))
    data["seed"] = cell.seed
    strategy = {k: v for k, v in cell.strategy.items() if "." not in k}
    for key, value in cell.strategy.items():  # a dotted key is a config key of this cell
        if "." in key:
            *path, last = key.split(".")
            node = data
            for part in path:
                node = node.setdefault(part, {}) if isinstance(node.get(part), dict) or part not in node \
                    else node[part]
            node[last] = value
    own = data.get("strategy") or {}
    if own.get("name") == strategy["name"]:
        strategy = {**own, **strategy}
    data["strategy"] = strategy
    if unit is not None:
        data.setdefault("loop", {})["unit"] = unit
    return data


def check_budgets(base: dict[str, Any], cells: Sequence[Cell], unit: str | None) -> dict[str, Any]:
    """Every strategy trains as much as random at each labeled-set size of the protocol
    (full and decayed-lr iterations), or :class:`ConfigError` naming the difference."""
    from activedet.loop.runner import resolve
    from activedet.training.budget import labeled_budget, protocol_sizes

    def its(data: dict[str, Any]) -> list[tuple[int, int]]:
        cfg = config_from_dict(data)
        strategy = resolve(cfg)
        return [(b.full_lr, b.reduced_lr) for b in (labeled_budget(strategy.trainer, cfg.train, strategy.params, n)
                                                    for n in sizes)]

    first = cells[0]
    sizes = protocol_sizes(config_from_dict(cell_config(base, first, unit)).loop)
    reference = its(cell_config(base, Cell("random", {"name": "random"}, first.seed), unit))
    out = {}
    for cell in {c.label: c for c in cells}.values():
        got = its(cell_config(base, cell, unit))
        if got != reference:
            raise ConfigError(f"{cell.label}: (full-lr, decayed-lr) labeled iterations {got} at {sizes} images, "
                              f"random's {reference}: budgets must be equal for a fair comparison (see "
                              f"activedet.training.budget); pass --allow-unequal-budgets to run it anyway")
        out[cell.label] = got
    return {"sizes": sizes, "iterations": out}


def _same_config(path: Path, data: dict[str, Any], cell: Cell) -> None:
    if not path.is_file():
        return
    old = yaml.safe_load(path.read_text())
    new = with_defaults(data)
    if isinstance(old, dict):
        old = with_defaults(old)  # a cell written before a release added a key
    if old != new:
        keys = differences(old, new) if isinstance(old, dict) else ["(unreadable)"]
        raise RunDirError(f"cell {cell.name}: its config ({path}) differs from this compare's in "
                          f"{', '.join(keys) or 'its layout'}; use a new --out, or delete {path.with_suffix('')} "
                          f"and {path} to run it again")


def run_cell(out: Path, base: dict[str, Any], cell: Cell, unit: str | None, threads: int, nproc: int | None,
             quiet: bool = True) -> tuple[Path, bool]:
    """Run (or continue) one cell through ``activedet simulate`` in a subprocess; (its run
    dir, whether anything ran: False for a cell already complete)."""
    from activedet.loop.ledger import Ledger

    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir, path = runs / cell.name, runs / f"{cell.name}.yaml"
    data = cell_config(base, cell, unit)
    _same_config(path, data, cell)
    if (run_dir / Ledger.FILENAME).is_file():
        with Ledger(run_dir) as ledger:
            if ledger.meta().get("complete"):
                return run_dir, False
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    argv = [sys.executable, "-m", "activedet.cli", "simulate", str(path), "--out", str(run_dir)]
    argv += ["--resume"] if (run_dir / Ledger.FILENAME).is_file() else []
    argv += ["--quiet"] if quiet else []
    argv += ["--round0-cache", str(out / "round0")]  # one round 0 per seed for the strategies that train alike
    argv += ["--nproc", str(nproc)] if nproc else []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RunDirError(f"cell {cell.name} failed (exit {proc.returncode}): {tail}; its run directory "
                          f"{run_dir} continues where it stopped when compare runs again")
    return run_dir, True


def run_grid(out: Path, base: dict[str, Any], cells: Sequence[Cell], unit: str | None, jobs: int,
             nproc: int | None, progress: bool = True) -> list[Path]:
    """Every cell, ``jobs`` at a time with the cores split between them; a line per cell done."""
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(1, jobs))
    t0 = time.time()
    done = ran = 0
    lock = threading.Lock()

    def one(cell: Cell) -> Path:
        nonlocal done, ran
        run_dir, worked = run_cell(out, base, cell, unit, threads, nproc)
        with lock:
            done, ran = done + 1, ran + worked
        if progress:
            spent = time.time() - t0
            left = f"~{spent / ran * (len(cells) - done) / 60:.1f} min left" if ran else "time left unknown yet"
            print(f"compare: {done}/{len(cells)} cells done ({cell.name}{'' if worked else ', already complete'}); "
                  f"{spent / 60:.1f} min, {left}", file=sys.stderr, flush=True)
        return run_dir

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, cells))


# ============================================================================ statistics
def metric_of(rounds: list[dict[str, Any]]) -> str:
    first = next((r["metrics"] for r in rounds if r.get("metrics")), {}) or {}
    return "top1" if "top1" in first else "AP50"


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def interval(xs: Sequence[float], level: float = 0.95) -> tuple[float, float, float] | None:
    """(mean, low, high): the Student-t confidence interval of the mean; None below 2 values."""
    from scipy import stats

    if len(xs) < 2:
        return None
    m, sd = mean_std(xs)
    half = float(stats.t.ppf(0.5 + level / 2, len(xs) - 1)) * sd / math.sqrt(len(xs))
    return m, m - half, m + half


def interp(x: float, xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Linear interpolation of the curve (xs increasing) at x; None outside [xs[0], xs[-1]]."""
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def boxes_to_reach(target: float, boxes: Sequence[float], curve: Sequence[float]) -> float | None:
    """The labeled boxes at which ``curve`` first reaches ``target`` (linear between
    rounds); None when it never does."""
    for k, (b, m) in enumerate(zip(boxes, curve)):
        if m >= target:
            if k == 0:
                return b
            b0, m0 = boxes[k - 1], curve[k - 1]
            return b0 + (b - b0) * (target - m0) / (m - m0) if m > m0 else b
    return None


def area_mean(xs: Sequence[float], ys: Sequence[float], lo: float, hi: float) -> float:
    """The mean of the piecewise-linear curve through (xs, ys) (xs increasing) over [lo, hi]
    (inside [xs[0], xs[-1]]): its area there divided by hi - lo; its value at lo when hi == lo."""
    pts = [lo] + [x for x in xs if lo < x < hi] + [hi]
    vals = [interp(x, xs, ys) for x in pts]
    if hi <= lo:
        return float(vals[0])  # type: ignore[arg-type]
    area = sum((x1 - x0) * (v0 + v1) / 2 for x0, x1, v0, v1 in zip(pts, pts[1:], vals, vals[1:]))  # type: ignore[operator]
    return area / (hi - lo)


def area_differences(pairs: dict[int, tuple[Sequence[float], Sequence[float], Sequence[float], Sequence[float]]]
                     ) -> tuple[float, float, dict[int, float]] | None:
    """Per seed, the strategy's mean metric minus random's over the cost range every seed
    covers: ``pairs`` seed -> (costs, metric, random's costs, random's metric). Returns
    (low, high, {seed: difference}); None when the seeds share no range of positive width."""
    lo = max(max(c[0], rc[0]) for c, _, rc, _ in pairs.values())
    hi = min(min(c[-1], rc[-1]) for c, _, rc, _ in pairs.values())
    if not hi > lo:
        return None
    return lo, hi, {seed: area_mean(c, m, lo, hi) - area_mean(rc, rm, lo, hi) for seed, (c, m, rc, rm) in pairs.items()}


def paired(curve: Sequence[float], boxes: Sequence[float], rand: Sequence[float],
           rand_boxes: Sequence[float]) -> dict[str, Any]:
    """One seed of a strategy against random's run of the same seed, rounds 1..N:
    ``per_image`` (mean difference at the same round), ``per_box`` (against random's curve
    at the strategy's labeled boxes; rounds outside random's range left out; None if none
    is left), ``saved`` (1 - boxes to reach random's final metric / random's boxes for it;
    a strategy that never reaches it is charged its last round's boxes) and ``reached``."""
    n = min(len(curve), len(rand))
    per_image = statistics.fmean(curve[k] - rand[k] for k in range(1, n)) if n > 1 else None
    diffs = [curve[k] - r for k in range(1, len(curve)) if (r := interp(boxes[k], rand_boxes, rand)) is not None]
    target = rand[-1]
    theirs = boxes_to_reach(target, rand_boxes, rand)
    mine = boxes_to_reach(target, boxes, curve)
    reached = mine is not None
    mine = boxes[-1] if mine is None else mine
    saved = None if not theirs else 1.0 - mine / theirs
    if not reached and saved is not None:
        saved = min(saved, 0.0)  # it did not get there: no saving claimed
    return {"per_image": per_image, "per_box": statistics.fmean(diffs) if diffs else None, "saved": saved,
            "reached": reached}


def fewer_more(saved: float, cost: str) -> str:
    """A saving in words: 0.14 -> '14% fewer boxes', -0.2 -> '20% more boxes'."""
    return f"{abs(saved):.0%} {'fewer' if saved >= 0 else 'more'} {cost}"


def higher_lower(points: float) -> str:
    """A metric difference in words: 2.0 -> '2.0 points higher', -6.7 -> '6.7 points lower'."""
    return f"{abs(points):.1f} points {'higher' if points >= 0 else 'lower'}"


def seeds_to_decide(xs: Sequence[float], level: float = 0.95, most: int = 1000) -> int | None:
    """The fewest seeds whose Student-t interval would exclude zero if the seeds' mean and
    spread stayed as observed in ``xs``: the smallest n >= 2 with
    t(0.5 + level / 2, n - 1) * sd / sqrt(n) < |mean|. None when the mean is zero, fewer
    than 2 values, or more than ``most`` seeds would be needed."""
    from scipy import stats

    if len(xs) < 2:
        return None
    m, sd = mean_std(xs)
    if m == 0:
        return None
    if sd == 0:
        return 2
    for n in range(2, most + 1):
        if float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n) < abs(m):
            return n
    return None


def verdict(saved: Sequence[float], per_box: Sequence[float], scale: float, cost: str = "boxes") -> str:
    """One line from the seeds' savings in ``cost`` (boxes; labels for classification) and
    the metric at equal cost, in words ("fewer", "more", "higher", "lower"); when the
    interval includes zero, how many seeds the observed spread would need to decide."""
    ci = interval(saved)
    if ci is None:
        return f"{len(saved)} seed: too few for a verdict (run --seeds 2 or more)"
    m, lo, hi = ci
    seeds = f"{len(saved)} seeds, {sum(s > 0 for s in saved)} ahead"
    if lo > 0:
        return f"saves {m:.0%} of {cost} (95% CI {lo:.0%} to {hi:.0%}, {seeds})"
    if hi < 0:
        return f"costs more: {-m:.0%} more {cost} (95% CI {-hi:.0%} to {-lo:.0%}, {seeds})"
    box = interval(per_box)
    at_boxes = "" if box is None else f"; at equal {cost} {higher_lower(box[0] * scale)} (95% CI " \
                                      f"{higher_lower(box[1] * scale)} to {higher_lower(box[2] * scale)})"
    need = seeds_to_decide(saved)
    decide = (f"; at this mean and spread {need} seeds would decide" if need is not None
              else "; no number of seeds would decide at this mean and spread")
    return (f"no difference beyond noise ({fewer_more(m, cost)} on average, 95% CI {fewer_more(lo, cost)} to "
            f"{fewer_more(hi, cost)}, {seeds}){at_boxes}{decide}")


def summarise(results: dict[str, dict[int, list[dict[str, Any]]]], cost: str = "boxes") -> dict[str, Any]:
    """label -> seed -> ledger rounds  =>  the comparison (see the module docstring);
    ``cost``: what a label costs (boxes; labels for classification)."""
    first = next(iter(next(iter(results.values())).values()))
    metric = metric_of(first)
    values = [r["metrics"][metric] for by in results.values() for rs in by.values() for r in rs
              if (r.get("metrics") or {}).get(metric) is not None]
    scale = 100.0 if values and max(values) <= 1.0 else 1.0
    out: dict[str, Any] = {"metric": metric, "scale": scale, "cost": cost, "strategies": {}}

    def curves(by_seed: dict[int, list[dict]]) -> dict[int, tuple[list[float], list[float], list[float], list]]:
        got = {}
        for seed, rounds in by_seed.items():
            rs = [r for r in rounds if (r.get("metrics") or {}).get(metric) is not None]
            got[seed] = ([r["metrics"][metric] for r in rs], [float(r["labeled_boxes"]) for r in rs],
                         [float(r["labeled_images"]) for r in rs], [r.get("labeled_seconds") for r in rs])
        return got

    rand = curves(results["random"]) if "random" in results else None
    for label, by_seed in results.items():
        cs = curves(by_seed)
        n = min(len(c[0]) for c in cs.values())
        st: dict[str, Any] = {
            "seeds": sorted(cs),
            "per_round": [mean_std([c[0][k] for c in cs.values()]) for k in range(n)],
            "boxes": [statistics.fmean(c[1][k] for c in cs.values()) for k in range(n)],
            "images": [statistics.fmean(c[2][k] for c in cs.values()) for k in range(n)],
            "seconds": [None if any(c[3][k] is None for c in cs.values()) else statistics.fmean(c[3][k] for c in cs.values())
                        for k in range(n)]}
        if rand is not None and label != "random":
            axes = _axes(cost, cs, rand)  # the first is ``cost``'s own: boxes, or labels
            st["by_cost"] = {axis: by_cost(cs, rand, axis, scale) for axis in axes}
            per_seed = st["by_cost"][axes[0]].pop("per_seed")
            for other in axes[1:]:
                st["by_cost"][other].pop("per_seed")
            st["vs_random"] = per_seed
            saved = [p["saved"] for p in per_seed.values() if p["saved"] is not None]
            per_box = [p["per_box"] for p in per_seed.values() if p["per_box"] is not None]
            per_image = [p["per_image"] for p in per_seed.values() if p["per_image"] is not None]
            # (mean, low, high) over seeds; None below 2 seeds (each seed's value is in vs_random)
            st["saved"], st["per_box"], st["per_image"] = interval(saved), interval(per_box), interval(per_image)
            st["ahead_per_box"] = sum(x > 0 for x in per_box)
            st["ahead_per_image"] = sum(x > 0 for x in per_image)
            st["reached"] = sum(bool(p["reached"]) for p in per_seed.values())
            n_r = min([len(c[0]) for c in cs.values()] + [len(rand[seed][0]) for seed in per_seed])
            diffs = [[cs[seed][0][k] - rand[seed][0][k] for seed in per_seed] for k in range(n_r)]
            st["per_round_diff"] = [interval(d) or (d[0], None, None) for d in diffs]  # (mean, lo, hi); 1 seed: no CI
            st["verdict"] = verdict(saved, per_box, scale, cost) if saved else "random never reaches a final metric"
        out["strategies"][label] = st
    out["recommendation"] = recommend(out)
    return out


#: cost axes: position of the costs in a seed's curve tuple, and the word for one unit
_AXIS = {"images": (2, "images"), "labels": (2, "labels"), "boxes": (1, "boxes"), "seconds": (3, "annotator seconds")}


def _axes(cost: str, cs: dict, rand: dict) -> list[str]:
    """The cost axes every seed of both strategies has: labels (classification), else boxes,
    and annotator seconds where every round recorded them."""
    if cost != "boxes":
        return ["labels"]
    known = all(x is not None for by in (cs, rand) for c in by.values() for x in c[3])
    return ["boxes", "seconds"] if known else ["boxes"]


def by_cost(cs: dict, rand: dict, axis: str, scale: float) -> dict[str, Any]:
    """Against random on one cost axis, paired by seed: the saving to reach random's final
    metric, the metric at equal cost, and the difference in area under the metric-vs-cost
    curve over the range every seed covers, each a (mean, low, high) 95% interval with, when
    it includes zero, the seeds its spread would need to decide."""
    k, word = _AXIS[axis]
    per_seed = {seed: paired(c[0], c[k], rand[seed][0], rand[seed][k]) for seed, c in cs.items() if seed in rand}
    saved = [p["saved"] for p in per_seed.values() if p["saved"] is not None]
    at_cost = [p["per_box"] for p in per_seed.values() if p["per_box"] is not None]
    area = area_differences({seed: (c[k], c[0], rand[seed][k], rand[seed][0]) for seed, c in cs.items() if seed in rand})
    diffs = list(area[2].values()) if area else []
    out: dict[str, Any] = {"unit": word, "per_seed": per_seed, "saved": interval(saved), "at_equal_cost": interval(at_cost),
                           "area": interval(diffs), "area_range": None if area is None else [area[0], area[1]],
                           "area_per_seed": {} if area is None else area[2]}
    ci = out["area"]
    if ci is None:
        out["area_verdict"] = "too few seeds for an area verdict (run --seeds 2 or more)" if area else \
            "the seeds share no cost range"
    else:
        m, lo, hi = (x * scale for x in ci)
        line = (f"over {area[0]:.0f}-{area[1]:.0f} {word} the mean metric is {higher_lower(m)} than random's "  # type: ignore[index]
                f"(95% CI {higher_lower(lo)} to {higher_lower(hi)}, {len(diffs)} seeds, {sum(d > 0 for d in diffs)} ahead)")
        need = seeds_to_decide(diffs)
        if lo <= 0 <= hi:
            line += (f"; at this mean and spread {need} seeds would decide" if need is not None
                     else "; no number of seeds would decide at this mean and spread")
        out["area_verdict"] = line
    return out


def recommend(summary: dict[str, Any]) -> str:
    """The one strategy the evidence supports (saves boxes beyond noise, largest lower
    bound), else random."""
    best, best_lo = None, 0.0
    for label, st in summary["strategies"].items():
        saved = st.get("saved")
        if saved is not None and saved[1] > best_lo:
            best, best_lo = label, saved[1]
    if "random" not in summary["strategies"]:
        return "no recommendation: include random in --strategies to measure savings against it"
    if best is None:
        return "random: nothing beat it beyond noise here"
    m, lo, hi = summary["strategies"][best]["saved"]
    return f"{best}: saves {m:.0%} of {summary.get('cost', 'boxes')} against random (95% CI {lo:.0%} to {hi:.0%})"


def table(summary: dict[str, Any]) -> str:
    """The comparison as text: per-round mean ± std, then one verdict line per strategy."""
    scale, metric = summary["scale"], summary["metric"]
    lines = []
    n = max(len(s["per_round"]) for s in summary["strategies"].values())
    lines.append(f"{'strategy':<28} " + " ".join(f"{'round ' + str(k):>13}" for k in range(n))
                 + f"   ({metric}, mean ± std over seeds; then the mean labeled {summary.get('cost', 'boxes')})")
    for label, s in summary["strategies"].items():
        cells = " ".join(f"{m * scale:6.1f} ± {sd * scale:4.1f}" for m, sd in s["per_round"])
        boxes = " ".join(f"{b:>13.0f}" for b in s["boxes"])
        lines.append(f"{label:<28} {cells}")
        lines.append(f"{'  images':<28} " + " ".join(f"{b:>13.0f}" for b in s["images"]))
        lines.append(f"{'  ' + summary.get('cost', 'boxes'):<28} {boxes}")
        if s.get("seconds") and all(x is not None for x in s["seconds"]):
            lines.append(f"{'  annotator seconds':<28} " + " ".join(f"{x:>13.0f}" for x in s["seconds"]))
    lines.append("")
    for label, s in summary["strategies"].items():
        if "per_round_diff" in s:
            diffs = " ".join(f"{m * scale:+6.1f} " + ("[n/a]" if lo is None else f"[{lo * scale:+.1f},{hi * scale:+.1f}]")
                             for m, lo, hi in s["per_round_diff"])
            lines.append(f"{label + ' - random':<28} {diffs}   (paired by seed, 95% CI)")
    lines.append("")
    for label, s in summary["strategies"].items():
        if "verdict" in s:
            img = s.get("per_image")
            per_image = "" if img is None else \
                f" [per image {higher_lower(img[0] * scale)}, {s['ahead_per_image']} of {len(s['seeds'])} seeds ahead]"
            reached = "" if "reached" not in s else \
                f" ({s['reached']} of {len(s['seeds'])} seeds reach random's final {metric})"
            lines.append(f"{label}: {s['verdict']}{per_image}{reached}")
            for axis, b in (s.get("by_cost") or {}).items():
                if axis == "seconds" and b["saved"] is not None:
                    m, lo, hi = b["saved"]
                    lines.append(f"  in annotator seconds: {fewer_more(m, 'seconds')} to reach random's final metric "
                                 f"(95% CI {fewer_more(lo, 'seconds')} to {fewer_more(hi, 'seconds')})")
                lines.append(f"  area, {b['unit']}: {b['area_verdict']}")
    lines.append(f"recommendation: {summary['recommendation']}")
    return "\n".join(lines)


def markdown(summary: dict[str, Any]) -> str:
    """The comparison as a Markdown table (``OUT/compare.md``): per strategy the final metric,
    the paired differences to random and the savings, each with its 95% interval."""
    scale, metric = summary["scale"], summary["metric"]

    def ci(v: Any, fmt: str = "{:+.1f}", k: float = scale) -> str:
        return "–" if v is None else (fmt.format(v[0] * k) + " (" + fmt.format(v[1] * k) + " to "
                                      + fmt.format(v[2] * k) + ")")

    def saved(v: Any) -> str:
        words = lambda x: fewer_more(x, "").strip()  # noqa: E731
        return "–" if v is None else f"{words(v[0])} (95% CI {words(v[1])} to {words(v[2])})"

    rows = [f"| strategy | seeds | final {metric} | Δ per image | Δ at equal boxes | boxes to reach random's final "
            f"| annotator seconds to reach it | Δ area over boxes |", "|---|---|---|---|---|---|---|---|"]
    for label, st in summary["strategies"].items():
        m, sd = st["per_round"][-1]
        by = st.get("by_cost") or {}
        rows.append(f"| {label} | {len(st['seeds'])} | {m * scale:.1f} ± {sd * scale:.1f} | {ci(st.get('per_image'))} | "
                    f"{ci(st.get('per_box'))} | {saved(st.get('saved'))} | "
                    f"{saved((by.get('seconds') or {}).get('saved'))} | {ci((by.get('boxes') or {}).get('area'))} |")
    return "\n".join(rows) + "\n"


# ============================================================================ the command
def compare(config: str | Path, strategies: Sequence[str], seeds: int, out: str | Path, jobs: int = 1,
            unit: str | None = None, only: str | None = None, nproc: int | None = None,
            project: str | Path | None = None, allow_unequal: bool = False,
            overrides: Sequence[str] = (), progress: bool = True) -> dict[str, Any]:
    """Run the grid (or one cell, ``only="STRATEGY:SEED"``) and aggregate; see the module
    docstring. Returns the summary ({"cell": run dir} with ``only``)."""
    from activedet.config import load_config
    from activedet.loop.ledger import Ledger

    out = Path(out)
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if unit not in (None, "images", "boxes", "seconds"):
        raise ConfigError(f"--unit {unit!r} is not one of images, boxes, seconds")
    cfg = load_config(config, overrides)
    if project is not None:
        cfg = _project_data(cfg, Path(project), out)
    if unit is None and cfg.task == "detection":
        unit = "seconds" if cfg.loop.unit == "seconds" else "boxes"
    if unit is not None and unit != cfg.loop.unit:
        _convert_budget(cfg, unit, progress)
    base = cfg.to_dict()
    specs = [parse_strategy(s) for s in strategies]
    if not specs:
        raise ConfigError("--strategies names no strategy (e.g. --strategies random,entropy)")
    labels = [label for label, _ in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--strategies names a strategy twice: {labels}")
    cells = [Cell(label, params, seed) for label, params in specs for seed in range(seeds)]
    budget = None if allow_unequal else check_budgets(base, cells, unit)
    if only is not None:
        label, _, seed = only.rpartition(":")
        match = [c for c in cells if c.label == label and str(c.seed) == seed]
        if not match:
            raise ConfigError(f"--only {only!r} is not a cell of this grid (STRATEGY:SEED, strategies "
                              f"{labels}, seeds 0..{seeds - 1})")
        run_dir, _ = run_cell(out, base, match[0], unit, os.cpu_count() or 1, nproc)
        return {"cell": str(run_dir)}
    run_dirs = run_grid(out, base, cells, unit, jobs, nproc, progress)
    results: dict[str, dict[int, list[dict]]] = {}
    statuses = []
    for cell, run_dir in zip(cells, run_dirs):
        with Ledger(run_dir) as ledger:
            status = ledger.status()
        status["strategy"] = cell.label
        statuses.append(status)
        results.setdefault(cell.label, {})[cell.seed] = status["rounds"]
    summary = summarise(results, "boxes" if cfg.task == "detection" else "labels")
    summary.update(config=str(config), seeds=seeds, unit=unit or cfg.loop.unit, budget=budget,
                   cells={c.name: str(d) for c, d in zip(cells, run_dirs)})
    (out / "compare.json").write_text(json.dumps(summary, indent=2))
    (out / "compare.md").write_text(markdown(summary))
    _report(statuses, summary, out / "report")
    return summary


def _convert_budget(cfg: ExperimentConfig, unit: str, say: bool = True) -> None:
    """Set ``cfg.loop.unit`` to ``unit``, converting counts (fractions stay fractions of the
    pool) at the train split's mean cost per image: boxes, or seconds from scratch."""
    from activedet.data.pool import Pool
    from activedet.loop.engine import load_split
    from activedet.loop.runner import pool_total

    if unit != "images" and cfg.task != "detection":
        raise ConfigError(f"--unit {unit} counts boxes: use it for detection (classification: images)")
    pool = Pool.from_dataset(load_split(cfg, "train"))
    old = cfg.loop.unit
    per_old = pool_total(cfg.loop, pool, cfg.annotator) / max(1, len(pool.ids))
    cfg.loop.unit = unit
    per_new = pool_total(cfg.loop, pool, cfg.annotator) / max(1, len(pool.ids))
    for key in ("initial", "per_cycle"):
        value = getattr(cfg.loop, key)
        if isinstance(value, int):
            setattr(cfg.loop, key, max(1, int(round(value / per_old * per_new))))
    if say:
        print(f"compare: budgets in {unit}: loop.initial {cfg.loop.initial}, loop.per_cycle {cfg.loop.per_cycle} "
              f"(converted from the config's {old}: one counts {per_new / per_old:.2f} {unit} in this pool on average)",
              file=sys.stderr, flush=True)


def _project_data(cfg: ExperimentConfig, project: Path, out: Path) -> ExperimentConfig:
    """``compare --project DIR``: replay on the labels a ``select`` project holds (its
    whole labeled set, exported as one COCO file under ``OUT/data/``)."""
    from activedet.labeling.export import export_project

    path = out / "data" / "labeled.json"
    export_project(project, path)
    cfg.dataset.train, cfg.dataset.images, cfg.dataset.train_images, cfg.dataset.unlabeled = \
        str(path.resolve()), None, None, None
    return cfg


def _report(statuses: list[dict[str, Any]], summary: dict[str, Any], out: Path) -> Path:
    import html

    from activedet.report import write_report

    pre = f"<pre>{html.escape(table(summary))}</pre>"
    return write_report(statuses, out, extra_sections=[("Does it beat random? (paired by seed)", pre)])


__all__ = ["Cell", "compare", "interval", "interp", "paired", "parse_strategy", "recommend", "summarise", "table",
           "verdict"]
