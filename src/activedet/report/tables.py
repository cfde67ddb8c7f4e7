"""Aggregation of run status dicts and the papers-style result tables.

A *run* is the dict ``activedet status RUN_DIR --json`` prints::

    {"run_dir", "strategy", "complete", "task", "seed", "pool_size", "pool_boxes",
     "rounds": [{"round", "selected", "labeled_images", "labeled_boxes",
                 "metrics": {...} | None, "seconds": {...}}]}

Runs sharing a strategy name (different seeds) are aggregated: tables show
``mean ± std`` (sample std, ddof=1) over seeds, metrics in percent.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from activedet.errors import ActivedetError

__all__ = [
    "PRIMARY_METRICS",
    "Table",
    "primary_metric",
    "check_runs",
    "group_by_strategy",
    "metric_value",
    "metric_scale",
    "metric_label",
    "aggregate",
    "metric_table",
    "boxes_table",
    "markdown_table",
    "markdown_boxes_table",
]

#: The metric curves and tables show by default, per task.
PRIMARY_METRICS: dict[str, str] = {"detection": "AP50", "classification": "top1"}

_METRIC_LABELS = {"top1": "Top-1 accuracy"}


def primary_metric(task: str) -> str:
    """The headline metric of a task: ``"AP50"`` for detection, ``"top1"`` for classification."""
    try:
        return PRIMARY_METRICS[task]
    except KeyError:
        raise ActivedetError(
            f"unknown task {task!r}; expected one of {sorted(PRIMARY_METRICS)}"
        ) from None


def metric_label(metric: str) -> str:
    """Human-readable name of a metric key (``top1`` -> ``Top-1 accuracy``)."""
    return _METRIC_LABELS.get(metric, metric)


def _run_name(run: Mapping[str, Any], index: int) -> str:
    return str(run.get("run_dir") or f"run #{index}")


def check_runs(runs: Sequence[Mapping[str, Any]]) -> str:
    """Validate status dicts and return their common task.

    Raises:
        ActivedetError: no runs, a run missing ``strategy``/``rounds``/``pool_size``,
            a non-positive pool size, or runs of different tasks (names the run).
    """
    if not runs:
        raise ActivedetError("no runs to report on")
    tasks: dict[str, str] = {}
    for index, run in enumerate(runs):
        name = _run_name(run, index)
        if not isinstance(run, Mapping):
            raise ActivedetError(f"run #{index} is not a status dict: {type(run).__name__}")
        for key in ("strategy", "rounds", "pool_size"):
            if key not in run:
                raise ActivedetError(f"run {name}: status has no '{key}' key")
        if not isinstance(run["rounds"], list):
            raise ActivedetError(f"run {name}: 'rounds' must be a list")
        pool = run["pool_size"]
        if not isinstance(pool, (int, float)) or isinstance(pool, bool) or pool <= 0:
            raise ActivedetError(f"run {name}: pool_size must be a positive number, got {pool!r}")
        for r in run["rounds"]:
            for key in ("round", "labeled_images"):
                if not isinstance(r, Mapping) or key not in r:
                    raise ActivedetError(f"run {name}: a round has no '{key}' key: {r!r}")
                if not isinstance(r[key], (int, float)) or isinstance(r[key], bool):
                    raise ActivedetError(f"run {name}: round {key} must be a number, got {r[key]!r}")
        task = str(run.get("task", "detection"))
        primary_metric(task)
        tasks[name] = task
    if len(set(tasks.values())) > 1:
        raise ActivedetError(f"runs mix tasks, cannot report them together: {tasks}")
    return next(iter(tasks.values()))


def group_by_strategy(runs: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Runs grouped by strategy name; strategies sorted by name, runs by seed."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[str(run["strategy"])].append(run)
    return {
        name: sorted(groups[name], key=lambda r: (str(r.get("seed")), str(r.get("run_dir"))))
        for name in sorted(groups)
    }


def metric_value(round_: Mapping[str, Any], metric: str) -> float | None:
    """The round's metric as a float, or None when not evaluated / undefined (< 0, NaN)."""
    metrics = round_.get("metrics")
    if not isinstance(metrics, Mapping):
        return None
    value = metrics.get(metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    value = float(value)
    if not math.isfinite(value) or value < 0:
        return None
    return value


def metric_scale(runs: Sequence[Mapping[str, Any]], metric: str) -> float:
    """Factor turning the recorded metric into percent: 100 for fractions, 1 if already %.

    Metrics are recorded as fractions in [0, 1]; a recorded value above 1 means the
    producer already wrote percent.
    """
    values = [metric_value(r, metric) for run in runs for r in run["rounds"]]
    present = [v for v in values if v is not None]
    return 1.0 if present and max(present) > 1.0 else 100.0


def _stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, sample std (0 for one value), min, max of ``values`` (Nones if empty)."""
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def _round_number(value: Any) -> int:
    return int(value)


def aggregate(runs: Sequence[Mapping[str, Any]], metric: str | None = None) -> dict[str, Any]:
    """JSON-ready aggregate: per strategy, per round, stats of metric, images and boxes.

    Metric values stay in the recorded unit (fractions for COCO AP). Rounds are
    matched by their ``round`` number across seeds.
    """
    task = check_runs(runs)
    metric = metric or primary_metric(task)
    out: dict[str, Any] = {"task": task, "metric": metric, "strategies": {}}
    for name, group in group_by_strategy(runs).items():
        by_round: dict[Any, list[tuple[Mapping[str, Any], Mapping[str, Any]]]] = defaultdict(list)
        for run in group:
            for r in run["rounds"]:
                by_round[_round_number(r["round"])].append((run, r))
        rounds = []
        for number in sorted(by_round):
            pairs = by_round[number]
            values = [v for v in (metric_value(r, metric) for _, r in pairs) if v is not None]
            images = [float(r["labeled_images"]) for _, r in pairs]
            boxes = [float(r["labeled_boxes"]) for _, r in pairs if r.get("labeled_boxes") is not None]
            fractions = [100.0 * float(r["labeled_images"]) / float(run["pool_size"]) for run, r in pairs]
            rounds.append(
                {
                    "round": number,
                    "n_runs": len(pairs),
                    "labeled_images": _stats(images),
                    "labeled_boxes": _stats(boxes),
                    "labeled_fraction_pct": _stats(fractions)["mean"],
                    "metric": _stats(values),
                }
            )
        out["strategies"][name] = {
            "runs": [str(run.get("run_dir")) for run in group],
            "seeds": [run.get("seed") for run in group],
            "complete": [bool(run.get("complete", False)) for run in group],
            "rounds": rounds,
        }
    return out


@dataclass
class Table:
    """A rendered-agnostic table: header cells and rows of string cells."""

    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""

    def to_markdown(self) -> str:
        """GitHub-flavoured markdown (first column left-aligned, others right)."""
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        align = ["---"] + ["---:"] * (len(self.header) - 1)
        return "\n".join([line(self.header), line(align)] + [line(row) for row in self.rows])

    def to_html(self) -> str:
        """An HTML ``<table>`` with escaped cells and the caption as ``<caption>``."""
        parts = ['<table class="results">']
        if self.caption:
            parts.append(f"<caption>{html.escape(self.caption)}</caption>")
        parts.append("<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
                     + "</tr></thead>")
        parts.append("<tbody>")
        for row in self.rows:
            cells = [f"<th>{html.escape(row[0])}</th>"] + [f"<td>{html.escape(c)}</td>" for c in row[1:]]
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</tbody></table>")
        return "\n".join(parts)


def _cell(values: Sequence[float], digits: int) -> str:
    """'mean ± std' for several values, 'value' for one, '' for none."""
    if not values:
        return ""
    stats = _stats(values)
    if stats["n"] == 1:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _by_fraction(
    runs: Sequence[Mapping[str, Any]], value_of: Any
) -> tuple[list[float], dict[str, dict[float, list[float]]], dict[str, int]]:
    """Per strategy, values keyed by labeled fraction of the pool (%, 1 decimal)."""
    cells: dict[str, dict[float, list[float]]] = {}
    counts: dict[str, int] = {}
    columns: set[float] = set()
    for name, group in group_by_strategy(runs).items():
        cells[name] = defaultdict(list)
        counts[name] = len(group)
        for run in group:
            for r in run["rounds"]:
                value = value_of(r)
                if value is None:
                    continue
                frac = round(100.0 * float(r["labeled_images"]) / float(run["pool_size"]), 1)
                cells[name][frac].append(value)
                columns.add(frac)
    return sorted(columns), cells, counts


def _fraction_table(runs: Sequence[Mapping[str, Any]], value_of: Any, digits: int,
                    caption: str) -> Table:
    columns, cells, counts = _by_fraction(runs, value_of)
    table = Table(["Strategy", "Seeds"] + [f"{c:.1f}%" for c in columns], caption=caption)
    for name in cells:
        table.rows.append([name, str(counts[name])]
                          + [_cell(cells[name].get(c, []), digits) for c in columns])
    return table


def metric_table(runs: Sequence[Mapping[str, Any]], metric: str | None = None) -> Table:
    """Rows = strategies, columns = labeled fraction of the pool (%); cells = metric in %.

    Cells are ``mean ± std`` over the strategy's runs that reached that fraction with a
    recorded metric; a fraction some strategy never reached is left blank.
    """
    task = check_runs(runs)
    metric = metric or primary_metric(task)
    scale = metric_scale(runs, metric)

    def value_of(r: Mapping[str, Any]) -> float | None:
        v = metric_value(r, metric)
        return None if v is None else v * scale

    caption = (f"{metric_label(metric)} (%) by labeled fraction of the pool "
               "(mean ± std over seeds)")
    return _fraction_table(runs, value_of, 1, caption)


def boxes_table(runs: Sequence[Mapping[str, Any]]) -> Table:
    """Rows = strategies, columns = labeled fraction of the pool (%); cells = labeled boxes."""
    check_runs(runs)

    def value_of(r: Mapping[str, Any]) -> float | None:
        v = r.get("labeled_boxes")
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    caption = "Labeled boxes (annotation cost) by labeled fraction of the pool (mean ± std over seeds)"
    return _fraction_table(runs, value_of, 0, caption)


def markdown_table(runs: Sequence[Mapping[str, Any]], metric: str | None = None) -> str:
    """:func:`metric_table` as markdown (metric defaults to the task's primary metric)."""
    return metric_table(runs, metric).to_markdown()


def markdown_boxes_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """:func:`boxes_table` as markdown."""
    return boxes_table(runs).to_markdown()
