"""``activedet ingest``: merge what annotators produced into a project's labeled set.

The export is parsed and validated in full first (:mod:`activedet.labeling.parse`), then
the labels, the ledger's counts and the pending state change in one SQLite transaction:
all or nothing. Images already ingested with the same labels are skipped, so ingesting
the same file twice changes nothing. Labels may be corrected by a later export (the whole
Label Studio project exported every week is fine): a correction of the pending round
replaces its labels; a correction of an image of a closed round is applied and recorded
as a revision (``project_revisions``: before and after), the round's recorded history
stays as it was, and the next ``select`` retrains because the labeled set changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activedet.data.base import image_size
from activedet.errors import DatasetError, LabelingError
from activedet.labeling import store
from activedet.labeling.parse import Labeled, ProjectView, parse_export
from activedet.labeling.sources import display_name
from activedet.loop.ledger import Ledger
from activedet.loop.lock import run_lock


@dataclass
class IngestResult:
    round: int | None
    added: int
    updated: int
    unchanged: int
    boxes: int  # boxes in the added and updated images
    skipped: list[str] = field(default_factory=list)
    unannotated: list[str] = field(default_factory=list)
    remaining: int = 0  # images of the pending batch still unlabeled
    labeled_images: int = 0
    labeled_boxes: int = 0
    corrected: int = 0  # images of closed rounds whose labels changed (recorded as revisions)


def open_project(project_dir: Path) -> tuple[Ledger, dict[str, Any]]:
    if not (project_dir / Ledger.FILENAME).is_file():
        raise LabelingError(f"no labeling project at {project_dir} (start one with `activedet select CONFIG.yaml "
                            f"--project {project_dir} --budget N`)")
    ledger = Ledger(project_dir)
    meta = ledger.meta()
    if "project" not in meta:
        ledger.close()
        raise LabelingError(f"{project_dir} holds a simulate run, not a labeling project")
    store.ensure_schema(ledger.conn)
    return ledger, meta


def ingest(project_dir: str | Path, file: str | Path) -> IngestResult:
    """Merge a Label Studio JSON export or a COCO file into the labeled set (see
    :mod:`activedet.labeling.parse` for the rules). All-or-nothing; idempotent."""
    project_dir, file = Path(project_dir), Path(file)
    ledger, meta = open_project(project_dir)  # a clear error when it is not a project
    try:
        with run_lock(project_dir, "ingest"):  # one writer per project directory
            return _ingest(ledger, ledger.meta(), file)
    finally:
        ledger.close()


def _ingest(ledger: Ledger, meta: dict[str, Any], file: Path) -> IngestResult:
    conn, proj = ledger.conn, meta["project"]
    batches = store.batch(conn)
    view = _project_view(proj, batches, file)
    parsed = parse_export(file, view)
    pending = (meta.get("labeling") or {}).get("pending_round")
    in_pending = {b.image_id: b for b in batches if b.round == pending}
    existing = {row.image_id: row for row in store.labels(conn)}
    plan = _plan(parsed.items, existing, in_pending, pending, view, file)
    final = {**existing, **{w.image_id: w for w in plan.writes}}
    total_images = proj["base_images"] + len(final)
    total_boxes = proj["base_boxes"] + sum(len(row.boxes) if proj["task"] == "detection" else 1 for row in final.values())
    remaining = len([i for i in in_pending if i not in final])
    if plan.writes:
        sha = hashlib.sha256(file.read_bytes()).hexdigest()
        with conn:  # one transaction: labels, revisions, ledger counts and pending state together
            for row in plan.writes:
                store.put_label(conn, row)
            for old, row in plan.corrections:
                store.add_revision(conn, old, row)
            if pending is not None:
                store.set_labeled_counts(conn, pending, total_images, total_boxes)
            lab = dict(meta.get("labeling") or {})
            lab.update(labeled=len(in_pending) - remaining, pending_round=pending if remaining else None)
            ledger.put_meta(labeling=lab, pool_boxes=total_boxes)
            store.log_ingest(conn, str(file), sha, pending, plan.added, plan.updated, plan.boxes)
    return IngestResult(pending, plan.added, plan.updated, plan.unchanged, plan.boxes, parsed.skipped,
                        parsed.unannotated, remaining, total_images, total_boxes, len(plan.corrections))


def _project_view(proj: dict[str, Any], batches: list[store.BatchRow], file: Path) -> ProjectView:
    """What the parser may know of the project: its batches' images, their display names,
    and their sizes (each image's header read once, when first asked)."""
    paths = {b.image_id: b.path for b in batches}
    names = {i: display_name(p, proj["root"]) for i, p in paths.items()}
    sizes: dict[int, tuple[int, int]] = {}

    def size_of(image_id: int) -> tuple[int, int]:
        if image_id not in sizes:
            sizes[image_id] = image_size(Path(paths[image_id]), f"{file}: image {names[image_id]}")
        return sizes[image_id]

    return ProjectView(proj["uid"], proj["task"], list(proj["class_names"]), paths, names, size_of)


@dataclass
class _Plan:
    """The label rows an ingest writes, and how each parsed image counts."""

    writes: list[store.LabelRow] = field(default_factory=list)
    corrections: list[tuple[store.LabelRow, store.LabelRow]] = field(default_factory=list)  # (before, after)
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    boxes: int = 0  # boxes in the added and updated images


def _plan(items: list[Labeled], existing: dict[int, store.LabelRow], in_pending: dict[int, store.BatchRow],
          pending: int | None, view: ProjectView, file: Path) -> _Plan:
    """Sort the parsed images: unchanged, a closed round's correction, or a label of the
    pending batch (added or updated); an image outside the pending batch is a DatasetError."""
    plan = _Plan()
    for item in items:
        old = existing.get(item.image_id)
        if old is not None and (old.boxes, old.labels) == (item.boxes, item.labels):
            plan.unchanged += 1
            continue
        if old is not None and old.round != pending:  # a closed round's image, corrected
            row = store.LabelRow(old.image_id, old.round, old.rank, old.path, old.width, old.height, item.boxes,
                                 item.labels, str(file))
            plan.corrections.append((old, row))
            plan.writes.append(row)
            continue
        if item.image_id not in in_pending:
            where = f"round {pending}" if pending is not None else "no round is pending"
            raise DatasetError(f"{item.where}: image is not in the pending batch ({where})")
        b = in_pending[item.image_id]
        w, h = view.size_of(item.image_id)
        plan.writes.append(store.LabelRow(item.image_id, b.round, b.rank, b.path, w, h, item.boxes, item.labels,
                                          str(file)))
        plan.boxes += len(item.boxes)
        if old is None:
            plan.added += 1
        else:
            plan.updated += 1
    return plan
