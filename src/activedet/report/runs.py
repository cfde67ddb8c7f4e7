"""``activedet report RUN_DIR ...``: which runs make one report (each run once, one dataset,
pool and budget schedule), their curve labels, and the report's "Setup" section."""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from activedet.errors import ActivedetError
from activedet.files import writing
from activedet.loop.ledger import Ledger, check_out_dir
from activedet.report.html import write_report


def report_runs(run_dirs: Sequence[str], out: str | Path) -> tuple[Path, list[str], list[dict[str, Any]]]:
    """Write the report of ``run_dirs`` into ``out``: (its index.html, the distinct run
    directories, their statuses, labelled). Runs that do not compare are refused first."""
    check_out_dir(out)
    run_dirs = distinct_runs(run_dirs)
    runs, settings, configs = [], [], []
    for d in run_dirs:
        with Ledger(d) as ledger:
            runs.append(ledger.status())
            configs.append(ledger.meta().get("config") or {})
            strategy = dict(configs[-1].get("strategy") or {})
            strategy.pop("name", None)
            settings.append(strategy)
    check_comparable(run_dirs, runs, configs)
    for run, label in zip(runs, run_labels([r["strategy"] for r in runs], settings)):
        run["strategy"] = label
    with writing("report", out):
        index = write_report(runs, out, extra_sections=[("Setup", setup_html(runs, configs))])
    return Path(index), run_dirs, runs


def run_labels(names: Sequence[str], settings: Sequence[dict[str, Any]]) -> list[str]:
    """One curve per label: the strategy name, plus the settings in which runs of the same
    strategy differ (an ablation such as ``isal top_k=10``); seeds share a label."""
    labels = []
    for name, own in zip(names, settings):
        peers = [s for n, s in zip(names, settings) if n == name]
        keys = sorted({k for s in peers for k in s if any(p.get(k) != s.get(k) for p in peers)})
        labels.append(" ".join([name] + [f"{k}={own.get(k)}" for k in keys]))
    return labels


def distinct_runs(run_dirs: Sequence[str]) -> list[str]:
    """Each run once: a run directory given twice (under any spelling) is not two seeds."""
    seen: dict[Path, str] = {}
    for d in run_dirs:
        key = Path(d).resolve()
        if key in seen:
            print(f"activedet report: {d} is the same run as {seen[key]}; counted once", file=sys.stderr)
        else:
            seen[key] = d
    return list(seen.values())


#: what runs must share to be one table: the data, the pool and the budget schedule
_COMPARED = (("dataset", "train"), ("dataset", "test"), ("dataset", "options"), ("loop", "unit"),
             ("loop", "initial"), ("loop", "per_cycle"))


def check_comparable(run_dirs: Sequence[str], runs: Sequence[dict[str, Any]],
                     configs: Sequence[dict[str, Any]]) -> None:
    """Refuse runs over different datasets, pools or budgets: one table would compare
    numbers that do not measure the same thing."""
    def value(i: int, key: tuple[str, ...]) -> Any:
        if key == ("pool_size",):
            return runs[i].get("pool_size")
        return (configs[i].get(key[0]) or {}).get(key[1])

    for key in _COMPARED + (("pool_size",),):
        values = [value(i, key) for i in range(len(runs))]
        if any(v != values[0] for v in values):
            shown = "; ".join(f"{d}: {v!r}" for d, v in zip(run_dirs, values))
            raise ActivedetError(f"runs differ in {'.'.join(key)} ({shown}); report runs of one dataset, "
                                 f"pool and budget together (one report per setup)")


#: what the report's "Setup" section shows: dotted config keys
_SETUP = ("dataset.train", "dataset.test", "model.arch", "model.backbone", "model.pretrained",
          "model.image_size", "train.epochs", "train.batch_size", "train.lr", "loop.initial",
          "loop.per_cycle", "loop.cycles", "loop.unit")


def setup_html(runs: Sequence[dict[str, Any]], configs: Sequence[dict[str, Any]]) -> str:
    """The setup the report's numbers come from: each key with its value (every distinct
    value when runs differ), plus the pool size."""
    rows = [("pool", f"{runs[0]['pool_size']} images")]
    for key in _SETUP:
        section, name = key.split(".")
        values = list(dict.fromkeys(json.dumps((c.get(section) or {}).get(name)) for c in configs))
        rows.append((key, " | ".join(values)))
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table><tbody>{cells}</tbody></table>"
