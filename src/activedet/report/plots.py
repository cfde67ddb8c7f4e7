"""Learning curves and timing bars for run status dicts (matplotlib, Agg backend).

Runs sharing a strategy name are drawn as one mean line with a shaded spread band
(±1 sample std for 3+ seeds, min–max for 2 seeds), labelled ``"strategy (n seeds)"``.
Rounds are matched across seeds by their ``round`` number; the x position of a point
is the mean over seeds (box counts differ from seed to seed).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from activedet.errors import ActivedetError  # noqa: E402
from activedet.training.health import training_curve  # noqa: E402
from activedet.report.tables import (  # noqa: E402
    check_runs,
    group_by_strategy,
    metric_label,
    metric_scale,
    metric_value,
    primary_metric,
)

__all__ = ["FIGSIZE", "DPI", "X_AXES", "STAGES", "strategy_colors", "plot_curves", "plot_seconds"]

FIGSIZE: tuple[float, float] = (7.0, 4.5)  # inches
DPI: int = 120
#: Allowed x axes of :func:`plot_curves` and their axis labels.
X_AXES: dict[str, str] = {
    "labeled_images": "Labeled images (count)",
    "labeled_boxes": "Labeled boxes (count, annotation cost)",
    "labeled_seconds": "Annotator seconds (with pre-annotations, docs/cost.md)",
}
#: Loop stages in the order they run; other keys found in ``seconds`` follow.
STAGES: tuple[str, ...] = ("train", "evaluate", "score", "select")


def strategy_colors(names: Sequence[str]) -> dict[str, Any]:
    """A stable color per strategy name (tab10 order over the given names)."""
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _save(fig: Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def _curve(
    group: Sequence[Mapping[str, Any]], x: str, metric: str, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Mean x, mean y, band low, band high per evaluated round; and the max seeds per round."""
    points: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for run in group:
        for r in run["rounds"]:
            y = metric_value(r, metric)
            xv = r.get(x)
            if y is None or not isinstance(xv, (int, float)) or isinstance(xv, bool):
                continue
            points[int(r["round"])].append((float(xv), y * scale))
    xs, ys, lo, hi = [], [], [], []
    for number in sorted(points):
        arr = np.asarray(points[number])  # (n_seeds, 2)
        xs.append(arr[:, 0].mean())
        mean = arr[:, 1].mean()
        ys.append(mean)
        if len(arr) >= 3:
            std = arr[:, 1].std(ddof=1)
            lo.append(mean - std)
            hi.append(mean + std)
        else:  # one seed: no band; two seeds: min–max
            lo.append(arr[:, 1].min())
            hi.append(arr[:, 1].max())
    n = max((len(p) for p in points.values()), default=0)
    return np.asarray(xs), np.asarray(ys), np.asarray(lo), np.asarray(hi), n


def plot_curves(
    runs: Sequence[Mapping[str, Any]],
    x: str = "labeled_images",
    metric: str | None = None,
    out_png: str | Path = "curves.png",
) -> Path:
    """Plot the metric (in %) against labeled images or boxes, one line per strategy.

    Args:
        runs: status dicts (see :mod:`activedet.report.tables`).
        x: ``"labeled_images"`` or ``"labeled_boxes"``.
        metric: metric key; defaults to the task's primary metric (AP50 / top1).
        out_png: output file; parent folders are created.

    Returns:
        The written PNG path. Rounds whose metrics are null are skipped.

    Raises:
        ActivedetError: unknown ``x``, or invalid runs.
    """
    if x not in X_AXES:
        raise ActivedetError(f"unknown x axis {x!r}; expected one of {sorted(X_AXES)}")
    task = check_runs(runs)
    metric = metric or primary_metric(task)
    scale = metric_scale(runs, metric)
    groups = group_by_strategy(runs)
    colors = strategy_colors(list(groups))

    fig, ax = plt.subplots(figsize=FIGSIZE)
    drawn = 0
    spread_kinds: set[str] = set()
    for name, group in groups.items():
        xs, ys, lo, hi, n = _curve(group, x, metric, scale)
        if xs.size == 0:
            continue
        drawn += 1
        color = colors[name]
        if len(group) > 1:
            label = f"{name} ({len(group)} seeds)"
            ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)
            spread_kinds.add("min–max" if n == 2 else "std")
        else:
            seed = group[0].get("seed")
            label = name if seed is None else f"{name} (seed {seed})"
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.8, color=color, label=label)

    ylabel = f"{metric_label(metric)} (%)"
    title = f"{metric_label(metric)} vs {X_AXES[x].split(' (')[0].lower()}"
    if spread_kinds == {"min–max"}:
        title += "\n(line: mean over seeds; band: min–max)"
    elif spread_kinds:
        title += "\n(line: mean over seeds; band: ±1 std, min–max where 2 seeds)"
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.35)
    if drawn:
        ax.legend(loc="best", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no evaluated rounds yet", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    pools = {float(run["pool_size"]) for run in runs}
    if x == "labeled_images" and len(pools) == 1 and drawn:
        pool = pools.pop()
        top = ax.secondary_xaxis("top", functions=(lambda v: 100.0 * v / pool,
                                                   lambda p: p * pool / 100.0))
        top.set_xlabel("Labeled fraction of the pool (%)", fontsize=9)
    return _save(fig, out_png)


def _stage_means(group: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean seconds per round of every stage, over all rounds of all runs in ``group``."""
    values: dict[str, list[float]] = defaultdict(list)
    for run in group:
        for r in run["rounds"]:
            seconds = r.get("seconds")
            if not isinstance(seconds, Mapping):
                continue
            for stage, v in seconds.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
                    values[str(stage)].append(float(v))
    return {stage: float(np.mean(v)) for stage, v in values.items()}


def plot_seconds(runs: Sequence[Mapping[str, Any]], out_png: str | Path) -> Path:
    """Grouped bars: mean seconds per round of each loop stage, per strategy.

    Means are over every round of every run (seed) of the strategy; each bar is
    annotated with its value. Returns the written PNG path.
    """
    check_runs(runs)
    groups = group_by_strategy(runs)
    means = {name: _stage_means(group) for name, group in groups.items()}
    found = {stage for m in means.values() for stage in m}
    stages = [s for s in STAGES if s in found] + sorted(found - set(STAGES))

    fig, ax = plt.subplots(figsize=FIGSIZE)
    names = list(groups)
    if stages:
        width = 0.8 / len(stages)
        cmap = plt.get_cmap("Set2")
        positions = np.arange(len(names))
        for i, stage in enumerate(stages):
            heights = [means[name].get(stage, 0.0) for name in names]
            bars = ax.bar(positions + (i - (len(stages) - 1) / 2) * width, heights, width,
                          label=stage, color=cmap(i % 8))
            ax.bar_label(bars, labels=[_short(h) for h in heights], fontsize=7, padding=1)
        ax.set_xticks(positions, names)
        ax.legend(title="stage", fontsize=9, title_fontsize=9)
        ax.margins(y=0.12)
    else:
        ax.text(0.5, 0.5, "no timings recorded", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    ax.set_xlabel("Strategy")
    ax.set_ylabel("Seconds per round (mean over rounds and seeds)")
    ax.set_title("Time per loop stage", fontsize=11)
    ax.grid(True, axis="y", alpha=0.35)
    return _save(fig, out_png)


def _short(seconds: float) -> str:
    """Compact bar label: 1234 -> '1234', 12.3 -> '12.3', 0.012 -> '0.012'."""
    if seconds >= 100:
        return f"{seconds:.0f}"
    if seconds >= 1:
        return f"{seconds:.1f}"
    return f"{seconds:.2g}"


def plot_training(runs: Sequence[Mapping[str, Any]], out_png: str | Path, max_runs: int = 12) -> Path:
    """Per-round training curves: total labeled-set loss against epoch, one panel per run,
    one line per round (its last attempt); a round whose training was judged unhealthy is
    drawn dashed in red and named in the legend, a retried one says how often."""
    shown = list(runs)[:max_runs]
    cols = min(3, max(1, len(shown)))
    rows_n = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.0 * rows_n), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax, run in zip(axes.flat, shown):
        cmap = plt.get_cmap("viridis")
        n = max(1, len(run["rounds"]))
        for k, r in enumerate(run["rounds"]):
            log = r.get("train_log") or []
            curve = training_curve(log)
            if not curve:
                continue
            last = max((row.get("attempt", 0) for row in log), default=0)
            health = r.get("health") or {}
            label = f"round {r['round']}"
            if last:
                label += f" (retried {last}×)"
            style: dict[str, Any] = {"color": cmap(k / n), "marker": "o", "markersize": 2}
            if health.get("unhealthy"):
                label += " UNHEALTHY"
                style.update(color="red", linestyle="--")
            ax.plot(range(1, len(curve) + 1), curve, label=label, **style)
        ax.set_title(f"{run.get('strategy', '')} seed {run.get('seed')}", fontsize=9)
        ax.set_xlabel("labeled-set epoch")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6)
    return _save(fig, out_png)
