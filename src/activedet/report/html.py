"""The run report: curves, timing bars, tables, aggregate JSON and a self-contained HTML page.

``write_report(runs, out_dir)`` writes into ``out_dir``::

    ap_vs_images.png   primary metric vs labeled images
    ap_vs_boxes.png    primary metric vs labeled boxes (detection only)
    seconds.png        mean seconds per loop stage and strategy
    table.md           the tables in markdown
    report.json        aggregated numbers (per strategy, per round mean/std)
    index.html         everything above, images referenced relatively, no external assets

Other modules add content through ``extra_sections`` (title, HTML fragment) and
``extra_images`` (copied into ``out_dir/extra/``).
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from activedet.errors import ActivedetError
from activedet.report.plots import plot_curves, plot_seconds, plot_training
from activedet.report.tables import (
    Table,
    aggregate,
    boxes_table,
    check_runs,
    group_by_strategy,
    metric_label,
    metric_table,
    primary_metric,
)

__all__ = ["write_report"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 980px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.6em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
td { text-align: right; font-variant-numeric: tabular-nums; }
thead th { background: #f2f2f2; } tbody th { text-align: left; font-weight: 600; }
caption { caption-side: top; text-align: left; color: #555; padding-bottom: 0.3em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
.yes { color: #1a7f37; } .no { color: #b35900; } .muted { color: #666; }
"""


def _copy_extra_images(paths: Sequence[str | Path], out_dir: Path) -> list[str]:
    """Copy extra images into ``out_dir/extra`` (unless already inside out_dir).

    Returns their paths relative to ``out_dir``. Raises ActivedetError for a missing file.
    """
    rel: list[str] = []
    extra_dir = out_dir / "extra"
    for index, raw in enumerate(paths):
        path = Path(raw)
        if not path.is_file():
            raise ActivedetError(f"extra image not found: {path}")
        try:
            rel.append(path.resolve().relative_to(out_dir.resolve()).as_posix())
            continue
        except ValueError:
            pass
        extra_dir.mkdir(exist_ok=True)
        target = extra_dir / path.name
        if target.exists():
            target = extra_dir / f"{index}_{path.name}"
        shutil.copyfile(path, target)
        rel.append(target.relative_to(out_dir).as_posix())
    return rel


def _runs_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """HTML table naming every run: dir, strategy, seed, rounds, pool, completeness."""
    head = ["Run directory", "Strategy", "Seed", "Rounds", "Evaluated", "Pool images",
            "Pool boxes", "Complete"]
    rows = []
    for group in group_by_strategy(runs).values():
        for run in group:
            rounds = run["rounds"]
            evaluated = sum(1 for r in rounds if isinstance(r.get("metrics"), Mapping))
            complete = bool(run.get("complete", False))
            cells = [str(run.get("run_dir", "")), str(run["strategy"]), str(run.get("seed", "")),
                     str(len(rounds)), str(evaluated), str(run["pool_size"]),
                     str(run.get("pool_boxes", ""))]
            row = f"<th>{html.escape(cells[0])}</th>" + "".join(
                f"<td>{html.escape(c)}</td>" for c in cells[1:])
            status = '<span class="yes">yes</span>' if complete else '<span class="no">no (in progress or stopped)</span>'
            rows.append(f"<tr>{row}<td>{status}</td></tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return (f'<table class="runs"><thead><tr>{header}</tr></thead><tbody>'
            + "\n".join(rows) + "</tbody></table>")


def _health_summary(runs: Sequence[Mapping[str, Any]]) -> str:
    """One line per unhealthy or retried round, or a sentence saying there were none."""
    items = []
    for run in runs:
        for r in run["rounds"]:
            health = r.get("health") or {}
            tries = len(health.get("attempts") or [])
            if health.get("unhealthy") or tries > 1:
                what = "unhealthy" if health.get("unhealthy") else f"recovered after {tries - 1} retr{'y' if tries == 2 else 'ies'}"
                reasons = "; ".join(a["reason"] for a in health.get("attempts", []) if a.get("reason"))
                items.append(f"<li>{html.escape(str(run.get('strategy')))} seed {html.escape(str(run.get('seed')))} "
                             f"round {r['round']}: {what} ({html.escape(reasons)})</li>")
    if not items:
        return "<p>Every round trained healthily (no dead branch, loss fell in every round).</p>"
    return "<ul>" + "".join(items) + "</ul>"


def _figure(src: str, caption: str) -> str:
    return (f'<figure><img src="{html.escape(src, quote=True)}" alt="{html.escape(caption, quote=True)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _markdown(tables: Sequence[Table]) -> str:
    parts = ["# activedet results", ""]
    for table in tables:
        parts += [f"**{table.caption}**", "", table.to_markdown(), ""]
    return "\n".join(parts)


def write_report(
    runs: list[dict],
    out_dir: str | Path,
    extra_sections: Sequence[tuple[str, str]] | None = None,
    extra_images: Sequence[str | Path] | None = None,
) -> Path:
    """Write plots, tables, ``report.json`` and ``index.html`` for ``runs`` into ``out_dir``.

    Args:
        runs: status dicts as printed by ``activedet status RUN_DIR --json``; all of one task.
        out_dir: output folder (created).
        extra_sections: ``(title, html_fragment)`` pairs appended to the page; the
            fragment is inserted verbatim, the title escaped.
        extra_images: image files to show (copied into ``out_dir/extra/``).

    Returns:
        Path of ``index.html``.

    Raises:
        ActivedetError: no runs, malformed/mixed-task runs, or a missing extra image.
    """
    task = check_runs(runs)
    metric = primary_metric(task)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    detection = task == "detection"

    figures = [("ap_vs_images.png", f"{metric_label(metric)} vs labeled images")]
    plot_curves(runs, "labeled_images", metric, out / "ap_vs_images.png")
    if detection:
        plot_curves(runs, "labeled_boxes", metric, out / "ap_vs_boxes.png")
        figures.append(("ap_vs_boxes.png", f"{metric_label(metric)} vs labeled boxes (annotation cost)"))
        if all(r.get("labeled_seconds") is not None for run in runs for r in run["rounds"]):
            plot_curves(runs, "labeled_seconds", metric, out / "ap_vs_seconds.png")
            figures.append(("ap_vs_seconds.png", f"{metric_label(metric)} vs annotator seconds (with the previous "
                                                 "round's pre-annotations)"))
    plot_training(runs, out / "training.png")
    figures.append(("training.png", "Training loss per round (dashed red: training judged unhealthy)"))
    plot_seconds(runs, out / "seconds.png")
    figures.append(("seconds.png", "Mean seconds per round of each loop stage"))

    tables = [metric_table(runs, metric)]
    if detection:
        tables.append(boxes_table(runs))
    (out / "table.md").write_text(_markdown(tables), encoding="utf-8")

    summary = aggregate(runs, metric)
    summary["runs"] = [
        {"run_dir": run.get("run_dir"), "strategy": run["strategy"], "seed": run.get("seed"),
         "complete": bool(run.get("complete", False)), "rounds": len(run["rounds"]),
         "pool_size": run["pool_size"], "pool_boxes": run.get("pool_boxes")}
        for run in runs
    ]
    (out / "report.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")

    extras = _copy_extra_images(extra_images or [], out)
    groups = group_by_strategy(runs)
    strategies = ", ".join(
        f"<b>{html.escape(name)}</b> (seeds {html.escape(', '.join(str(r.get('seed')) for r in g))})"
        for name, g in groups.items())
    n_complete = sum(bool(run.get("complete", False)) for run in runs)
    body = [
        "<h1>activedet report</h1>",
        f'<p class="muted">Task: {html.escape(task)} · metric: {html.escape(metric_label(metric))} '
        f"(%) · {len(runs)} run(s), {n_complete} complete</p>",
        f"<p>Strategies: {strategies}</p>",
        "<h2>Runs</h2>", _runs_table(runs),
        "<h2>Learning curves</h2>",
        *[_figure(src, cap) for src, cap in figures[:-2]],
        "<h2>Training health</h2>", _health_summary(runs), _figure(*figures[-2]),
        "<h2>Results</h2>",
        *[t.to_html() for t in tables],
        "<h2>Timing</h2>", _figure(*figures[-1]),
    ]
    if extras:
        body.append("<h2>Additional figures</h2>")
        body += [_figure(src, Path(src).name) for src in extras]
    for title, fragment in extra_sections or []:
        body += [f"<h2>{html.escape(str(title))}</h2>", str(fragment)]
    body.append('<p class="muted">Files: <a href="table.md">table.md</a> · '
                '<a href="report.json">report.json</a></p>')
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>activedet report — {html.escape(', '.join(groups))}</title>\n"
            f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
