"""A labeling project's tables, kept in the run ledger's SQLite file.

Keeping them next to the ``rounds`` table means one transaction changes the labeled set
and the ledger together: an ingest either lands entirely or not at all.

- ``project_images``: path -> image id of every pool image ever listed (ids stay stable
  when images are added to the pool folder later);
- ``project_batch``: each round's selected images, in rank order, with score and predicted
  box count;
- ``project_labels``: the labels of every ingested image (pixel ``x1, y1, x2, y2`` boxes
  and labels ``1..C``; classification: one class index ``0..C-1``);
- ``project_models``: which labeled set (a fingerprint) each round's checkpoint was
  trained on, so ``select`` reuses a checkpoint only when nothing changed;
- ``project_ingests``: one row per ingested file (what it added);
- ``project_revisions``: every correction of an image of a closed round (its labels
  before and after, and the file that changed them): ``project_labels`` holds the labels
  now, this table what they were.

None of these functions commits: callers group them in ``with conn:``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS project_images (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS project_batch (
    round INTEGER NOT NULL, rank INTEGER NOT NULL, image_id INTEGER NOT NULL, path TEXT NOT NULL,
    score REAL, predicted_boxes INTEGER, PRIMARY KEY (round, image_id));
CREATE TABLE IF NOT EXISTS project_labels (
    image_id INTEGER PRIMARY KEY, round INTEGER NOT NULL, rank INTEGER NOT NULL, path TEXT NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL, boxes TEXT NOT NULL, labels TEXT NOT NULL,
    source TEXT NOT NULL, ingested_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS project_models (round INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS project_ingests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, file TEXT NOT NULL, sha256 TEXT NOT NULL, round INTEGER,
    added INTEGER NOT NULL, updated INTEGER NOT NULL, boxes INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS project_revisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, image_id INTEGER NOT NULL, round INTEGER NOT NULL,
    old_boxes TEXT NOT NULL, old_labels TEXT NOT NULL, boxes TEXT NOT NULL, labels TEXT NOT NULL,
    source TEXT NOT NULL, at REAL NOT NULL);
"""


@dataclass
class BatchRow:
    round: int
    rank: int
    image_id: int
    path: str
    score: float | None
    predicted_boxes: int | None


@dataclass
class LabelRow:
    """One ingested image. boxes: list of [x1, y1, x2, y2] pixels; labels: 1..C per box
    (detection) or ``[class index]`` (classification)."""

    image_id: int
    round: int
    rank: int
    path: str
    width: int
    height: int
    boxes: list[list[float]]
    labels: list[int]
    source: str = ""


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def image_ids(conn: sqlite3.Connection) -> dict[str, int]:
    return {p: i for i, p in conn.execute("SELECT id, path FROM project_images")}


def image_paths(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, str]:
    """id -> path of the project images among ``ids`` (unknown ids left out)."""
    ids = sorted({int(i) for i in ids})
    out: dict[int, str] = {}
    for k in range(0, len(ids), 500):  # SQLite's bound-parameter limit
        part = ids[k:k + 500]
        out.update(conn.execute(f"SELECT id, path FROM project_images WHERE id IN ({','.join('?' * len(part))})",
                                part).fetchall())
    return out


def add_images(conn: sqlite3.Connection, mapping: dict[str, int]) -> None:
    conn.executemany("INSERT INTO project_images (id, path) VALUES (?, ?)",
                     [(i, p) for p, i in mapping.items()])


def batch(conn: sqlite3.Connection, round_: int | None = None) -> list[BatchRow]:
    sql = "SELECT round, rank, image_id, path, score, predicted_boxes FROM project_batch"
    args: tuple[Any, ...] = ()
    if round_ is not None:
        sql += " WHERE round = ?"
        args = (round_,)
    return [BatchRow(*r) for r in conn.execute(sql + " ORDER BY round, rank", args)]


def insert_batch(conn: sqlite3.Connection, rows: Iterable[BatchRow]) -> None:
    conn.executemany("INSERT INTO project_batch VALUES (?, ?, ?, ?, ?, ?)",
                     [(r.round, r.rank, r.image_id, r.path, r.score, r.predicted_boxes) for r in rows])


def delete_round(conn: sqlite3.Connection, round_: int) -> None:
    """Forget an un-ingested selection: its batch rows and its ledger row."""
    conn.execute("DELETE FROM project_batch WHERE round = ?", (round_,))
    conn.execute("DELETE FROM rounds WHERE round = ?", (round_,))


def labels(conn: sqlite3.Connection) -> list[LabelRow]:
    """Every ingested image, in training order (round, then batch rank)."""
    cur = conn.execute("SELECT image_id, round, rank, path, width, height, boxes, labels, source "
                       "FROM project_labels ORDER BY round, rank")
    return [LabelRow(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), json.loads(r[7]), r[8]) for r in cur]


def put_label(conn: sqlite3.Connection, row: LabelRow) -> None:
    conn.execute("INSERT OR REPLACE INTO project_labels VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (row.image_id, row.round, row.rank, row.path, row.width, row.height,
                  json.dumps(row.boxes), json.dumps(row.labels), row.source, time.time()))


def add_revision(conn: sqlite3.Connection, old: LabelRow, new: LabelRow) -> None:
    """Record that ``old`` (an image of a closed round) was corrected to ``new``."""
    conn.execute("INSERT INTO project_revisions (image_id, round, old_boxes, old_labels, boxes, labels, source, at) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (old.image_id, old.round, json.dumps(old.boxes),
                                                    json.dumps(old.labels), json.dumps(new.boxes),
                                                    json.dumps(new.labels), new.source, time.time()))


def revisions(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every correction of a closed round's labels, oldest first."""
    cur = conn.execute("SELECT image_id, round, old_boxes, old_labels, boxes, labels, source, at "
                       "FROM project_revisions ORDER BY id")
    return [{"image_id": r[0], "round": r[1], "old_boxes": json.loads(r[2]), "old_labels": json.loads(r[3]),
             "boxes": json.loads(r[4]), "labels": json.loads(r[5]), "source": r[6], "at": r[7]} for r in cur]


def set_labeled_counts(conn: sqlite3.Connection, round_: int, images: int, boxes: int) -> None:
    conn.execute("UPDATE rounds SET labeled_images = ?, labeled_boxes = ? WHERE round = ?",
                 (images, boxes, round_))


def fingerprint(conn: sqlite3.Connection, round_: int) -> str | None:
    row = conn.execute("SELECT fingerprint FROM project_models WHERE round = ?", (round_,)).fetchone()
    return None if row is None else row[0]


def set_fingerprint(conn: sqlite3.Connection, round_: int, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO project_models VALUES (?, ?)", (round_, value))


def log_ingest(conn: sqlite3.Connection, file: str, sha256: str, round_: int | None, added: int,
               updated: int, boxes: int) -> None:
    conn.execute("INSERT INTO project_ingests (file, sha256, round, added, updated, boxes, at) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)", (file, sha256, round_, added, updated, boxes, time.time()))
