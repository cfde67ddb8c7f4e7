"""``activedet status`` as text: a run's rounds, training health and metrics, or a
labeling project's rounds and its Label Studio binding."""

from __future__ import annotations

from typing import Any


def status_text(status: dict[str, Any]) -> str:
    from activedet.evaluation import headline

    lab = status.get("labeling")
    if lab is not None:
        return project_status_text(status, lab)
    boxes = status.get("task", "detection") == "detection"  # classification has no boxes
    lines = [f"run {status['run_dir']}: strategy {status['strategy']}, "
             f"{'complete' if status['complete'] else 'incomplete'}, pool {status['pool_size']} images"
             + (f" / {status['pool_boxes']} boxes" if boxes else "")]
    seconds = boxes and any(r.get("labeled_seconds") is not None for r in status["rounds"])
    lines.append(f"{'round':>5} {'added':>6} {'images':>7}" + (f" {'boxes':>7}" if boxes else "")
                 + (f" {'ann. s':>7}" if seconds else "") + f"  {'training':<26} metrics")
    notes = []
    for r in status["rounds"]:
        m = r["metrics"] or {}
        shown = headline(m) or (
            "(no test split)" if r["metrics"] == {} else "(pending)")
        train, note = training_cell(r)
        if note:
            notes.append(f"round {r['round']}: {note}")
        lines.append(f"{r['round']:>5} {len(r['selected']):>6} {r['labeled_images']:>7}"
                     + (f" {r['labeled_boxes']:>7}" if boxes else "")
                     + (f" {_seconds(r.get('labeled_seconds')):>7}" if seconds else "") + f"  {train:<26} {shown}")
    quarantined = status.get("quarantined") or {}
    if quarantined:
        lines.append(f"quarantined {len(quarantined)} unreadable pool image(s) (dataset.bad_images: skip), "
                     f"image id: {', '.join(sorted(quarantined, key=int))}")
    if seconds:
        lines.append("ann. s: cumulative annotator seconds with the previous round's pre-annotations "
                     "(docs/cost.md; - where not recorded)")
    return "\n".join(lines + notes)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def training_cell(round_: dict[str, Any]) -> tuple[str, str | None]:
    """(``loss 1.92→0.41 ok`` style cell, a note for an unhealthy or retried round)."""
    from activedet.training.health import training_curve

    log = round_.get("train_log") or []
    if not log:
        return "-", None
    last = max(row.get("attempt", 0) for row in log)
    totals = training_curve(log)
    curve = f"loss {totals[0]:.2f}→{totals[-1]:.2f}" if totals else "loss -"
    health = round_.get("health") or {}
    reasons = [a["reason"] for a in health.get("attempts", []) if a.get("reason")]
    if health.get("unhealthy"):
        return f"{curve} UNHEALTHY", "training unhealthy: " + "; ".join(reasons)
    if last:
        return f"{curve} retried {last}x", f"retried {last}x after: " + "; ".join(reasons)
    return f"{curve} ok", None


# ------------------------------------------------------------------ labeling projects
def project_status_text(status: dict[str, Any], lab: dict[str, Any]) -> str:
    from activedet.evaluation import headline

    pending = lab.get("pending_round")
    lines = [f"project {status['run_dir']}: {status['pool_size']} images (labeled and unlabeled), "
             f"last strategy {status['strategy']}"]
    lines.append(f"{'round':>5} {'batch':>6} {'images':>7} {'boxes':>7}  state / metrics")
    for r in status["rounds"]:
        m = r["metrics"] or {}
        shown = headline(m)
        if r["round"] == pending:
            shown = f"PENDING: {lab.get('labeled', 0)} of {lab.get('batch')} labeled"
        lines.append(f"{r['round']:>5} {len(r['selected']):>6} {r['labeled_images']:>7} {r['labeled_boxes']:>7}  "
                     f"{shown or '-'}")
    ls = status.get("label_studio")
    if ls:
        where = f"Label Studio {ls['url']} project {ls['project']}"
        if "error" in ls:
            lines.append(f"{where}: cannot be asked now: {ls['error']}")
        elif "tasks" in ls:
            lines.append(f"{where}: {ls['labeled']} of {ls['tasks']} tasks of round {ls['round']} labeled there"
                         + (f", {ls['skipped']} skipped" if ls["skipped"] else ""))
        else:
            lines.append(f"{where} (last round imported: {ls.get('pushed_round')})")
    if pending is not None and ls:
        lines.append(f"round {pending} is pending: label it in Label Studio, then `activedet ingest --project "
                     f"{status['run_dir']} --label-studio {ls['url']}`")
    elif pending is not None:
        lines.append(f"round {pending} is pending: label {lab.get('dir')}, then `activedet ingest --project "
                     f"{status['run_dir']} EXPORT.json`")
    return "\n".join(lines)


__all__ = ["project_status_text", "status_text", "training_cell"]
