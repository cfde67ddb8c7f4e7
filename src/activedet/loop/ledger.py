"""The run ledger: SQLite (WAL) in the run directory.

Every round's selection, costs, metrics, timings, per-image scores and training losses,
plus the resolved config. Each step is one transaction, so a run killed at any point
leaves a consistent ledger that ``--resume`` continues from.

Round 0 is the initial random set; round r >= 1 was chosen by the strategy with the model
trained on rounds 0..r-1. A round is *selected* when its row exists, *trained* when its
checkpoint is recorded, and *done* when its metrics are recorded.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from activedet.errors import ResumeError, RunDirError
from activedet.loop.lock import LOCK_NAME
from activedet.training.health import assess

F = TypeVar("F", bound=Callable[..., Any])

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    selected TEXT NOT NULL,          -- json list of image ids added this round
    labeled_images INTEGER NOT NULL, -- cumulative
    labeled_boxes INTEGER NOT NULL,  -- cumulative
    seconds TEXT NOT NULL,           -- json {stage: seconds}
    scores TEXT,                     -- json {image id: score}: ledgers written before the scores table
    checkpoint TEXT,                 -- model trained on rounds 0..round
    train_log TEXT,                  -- json list of per-epoch/stage loss rows
    health TEXT,                     -- json {unhealthy, reason, attempts} of the round's training
    metrics TEXT,                    -- json metrics on the test split
    selected_at REAL NOT NULL,
    done_at REAL,
    scored INTEGER                   -- number of rows of this round in `scores` (NULL: none recorded)
);
-- per-image scores of a round, written in chunks before the round's row: rows of a round
-- without a row in `rounds` are leftovers of an interrupted step, never read
CREATE TABLE IF NOT EXISTS scores (
    round INTEGER NOT NULL,
    image_id INTEGER NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (round, image_id)
) WITHOUT ROWID;
-- what each labeled image cost an annotator: its boxes, and the seconds to turn the round
-- model's pre-annotations into them (:mod:`activedet.evaluation.annotation_time`), with the
-- edits behind them. Ledgers written before this table have no rows: their seconds are unknown
CREATE TABLE IF NOT EXISTS costs (
    round INTEGER NOT NULL,
    image_id INTEGER NOT NULL,
    boxes INTEGER NOT NULL,
    seconds REAL NOT NULL,
    edits TEXT NOT NULL,             -- json {right, off, false, missed}
    PRIMARY KEY (round, image_id)
) WITHOUT ROWID;
-- what the strategy said about its selection (``Selection.info``: ISAL's reference set and
-- LiSSA verdict, PPAL's candidates and class qualities), written with the round's row;
-- rounds without a row here had none (or a ledger written before this table)
CREATE TABLE IF NOT EXISTS selection_info (
    round INTEGER PRIMARY KEY,
    info TEXT NOT NULL               -- json object
);
"""

#: per-image scores written per transaction by :meth:`Ledger.add_round`
SCORE_CHUNK = 10_000


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def _plain(obj: Any) -> Any:
    """JSON for what a strategy's ``info`` may hold besides plain values: arrays and tensors
    (and their scalars) as lists or numbers, anything else as its text."""
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)


def _writes(method: F) -> F:
    """A full disk or a read-only run directory (``sqlite3.OperationalError``, ``OSError``)
    becomes a one-line :class:`RunDirError`; the transaction has rolled back, so the ledger
    still ends at the last recorded step."""

    @functools.wraps(method)
    def guarded(self: "Ledger", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.OperationalError, OSError) as e:
            reason = " ".join((getattr(e, "strerror", None) or str(e)).split())
            raise RunDirError(f"cannot write the ledger {self.path}: {reason}; the step was not recorded "
                              f"(the ledger ends at the last complete step): free space or make the run "
                              f"directory writable, then continue with --resume") from None

    return guarded  # type: ignore[return-value]


class Ledger:
    """Read/write access to ``RUN_DIR/ledger.sqlite``."""

    FILENAME = "ledger.sqlite"

    def __init__(self, run_dir: str | Path, create: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / self.FILENAME
        if not create and not self.path.is_file():
            raise ResumeError(f"no ledger at {self.path}")
        try:
            self._open()
            empty = not create and not self.meta()
        except sqlite3.DatabaseError as e:  # not a disk error (those are RunDirError): not SQLite at all
            raise ResumeError(f"{self.path} is not an activedet ledger (SQLite: {e})") from None
        if empty:
            self.close()
            raise ResumeError(f"{self.path} is empty: it records no run (a run stopped before its first "
                              f"step, or not an activedet ledger)")

    @_writes
    def _open(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Ledgers written before a column existed get it (NULL for old rounds)."""
        have = {row[1] for row in self.conn.execute("PRAGMA table_info(rounds)")}
        with self.conn:
            for name, kind in (("health", "TEXT"), ("scored", "INTEGER")):
                if name not in have:
                    self.conn.execute(f"ALTER TABLE rounds ADD COLUMN {name} {kind}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ meta
    @_writes
    def set_meta(self, **values: Any) -> None:
        with self.conn:
            self.put_meta(**values)

    def put_meta(self, **values: Any) -> None:
        """:meth:`set_meta` without committing (for a caller's own ``with ledger.conn:``)."""
        self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                              [(k, _dumps(v)) for k, v in values.items()])

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}

    # ------------------------------------------------------------------ rounds
    @_writes
    def add_round(self, round_: int, selected: list[int], labeled_images: int, labeled_boxes: int,
                  seconds: dict[str, float], scores: dict[int, float] | None,
                  costs: Iterable[tuple[int, int, float, dict[str, int]]] = (),
                  info: dict[str, Any] | None = None) -> None:
        """Record round ``round_`` (``info``: the strategy's ``Selection.info``, written with
        the row). The per-image ``scores`` go first, :data:`SCORE_CHUNK` rows per transaction
        (leftovers of an earlier interrupted attempt are dropped in the first), then the
        round's row in one more: until that last commit the round, and its scores, are not
        recorded."""
        scored = None
        if scores is not None:
            items = iter(scores.items())
            scored = 0
            with self.conn:
                self.conn.execute("DELETE FROM scores WHERE round = ?", (round_,))
            for chunk in iter(lambda: list(itertools.islice(items, SCORE_CHUNK)), []):
                with self.conn:
                    scored += self._put_scores(round_, chunk)
        with self.conn:
            self.put_costs(round_, costs)
            self._insert_row(round_, selected, labeled_images, labeled_boxes, seconds, scored, info)

    def insert_round(self, round_: int, selected: list[int], labeled_images: int, labeled_boxes: int,
                     seconds: dict[str, float], scores: dict[int, float] | None,
                     info: dict[str, Any] | None = None) -> None:
        """:meth:`add_round` without committing (for a caller's own ``with ledger.conn:``):
        the scores are written in the caller's transaction."""
        scored = None
        if scores is not None:
            self.conn.execute("DELETE FROM scores WHERE round = ?", (round_,))
            scored = self._put_scores(round_, scores.items())
        self._insert_row(round_, selected, labeled_images, labeled_boxes, seconds, scored, info)

    def _put_scores(self, round_: int, items: Iterable[tuple[int, float]]) -> int:
        rows = [(round_, int(k), float(v)) for k, v in items]
        self.conn.executemany("INSERT INTO scores (round, image_id, score) VALUES (?, ?, ?)", rows)
        return len(rows)

    def _insert_row(self, round_: int, selected: list[int], labeled_images: int, labeled_boxes: int,
                    seconds: dict[str, float], scored: int | None, info: dict[str, Any] | None = None) -> None:
        if info:
            self.conn.execute("INSERT OR REPLACE INTO selection_info (round, info) VALUES (?, ?)",
                              (round_, json.dumps(info, sort_keys=True, default=_plain)))
        self.conn.execute(
            "INSERT INTO rounds (round, selected, labeled_images, labeled_boxes, seconds, scored, "
            "selected_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (round_, _dumps([int(i) for i in selected]), labeled_images, labeled_boxes,
             _dumps(seconds), scored, time.time()))

    def put_costs(self, round_: int, rows: Iterable[tuple[int, int, float, dict[str, int]]]) -> None:
        """Round ``round_``'s (image id, boxes, seconds, edits) rows, in the caller's
        transaction (with the round's row: both or neither are recorded)."""
        self.conn.execute("DELETE FROM costs WHERE round = ?", (round_,))
        self.conn.executemany("INSERT INTO costs (round, image_id, boxes, seconds, edits) VALUES (?, ?, ?, ?, ?)",
                              [(round_, int(i), int(b), float(s), _dumps(e)) for i, b, s, e in rows])

    def image_seconds(self) -> dict[int, float]:
        """Image id -> the annotator seconds it cost (images of recorded rounds only)."""
        return dict(self.conn.execute("SELECT c.image_id, c.seconds FROM costs c JOIN rounds r ON r.round = c.round"))

    def _round_seconds(self) -> dict[int, float]:
        """Round -> the annotator seconds of its images (rounds with cost rows only)."""
        return dict(self.conn.execute("SELECT round, SUM(seconds) FROM costs GROUP BY round"))

    def selection_info(self, round_: int) -> dict[str, Any]:
        """What the strategy said about round ``round_``'s selection (``{}``: nothing recorded)."""
        row = self.conn.execute("SELECT info FROM selection_info WHERE round = ?", (round_,)).fetchone()
        return {} if row is None else json.loads(row[0])

    def scores(self, round_: int) -> dict[int, float] | None:
        """Round ``round_``'s per-image scores (None: none recorded, or no such round)."""
        row = self.conn.execute("SELECT scores, scored FROM rounds WHERE round = ?", (round_,)).fetchone()
        return None if row is None else self._scores(round_, row[0], row[1])

    def _scores(self, round_: int, legacy: str | None, scored: int | None) -> dict[int, float] | None:
        """The scores of a round whose row holds ``legacy`` (json scores of a ledger written
        before the scores table) and ``scored`` (its row count in ``scores``)."""
        if legacy is not None:
            return {int(k): v for k, v in json.loads(legacy).items()}
        if scored is None:
            return None
        cur = self.conn.execute("SELECT image_id, score FROM scores WHERE round = ? ORDER BY image_id", (round_,))
        return dict(cur)

    def _merge_seconds(self, round_: int, seconds: dict[str, float]) -> str:
        row = self.conn.execute("SELECT seconds FROM rounds WHERE round = ?", (round_,)).fetchone()
        merged = {**json.loads(row[0]), **seconds}
        return _dumps(merged)

    @_writes
    def set_trained(self, round_: int, checkpoint: str, train_log: list[dict], seconds: dict[str, float],
                    health: dict[str, Any] | None = None) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE rounds SET checkpoint = ?, train_log = ?, health = ?, seconds = ? WHERE round = ?",
                (checkpoint, _dumps(train_log), None if health is None else _dumps(health),
                 self._merge_seconds(round_, seconds), round_))

    @_writes
    def set_metrics(self, round_: int, metrics: dict[str, Any], seconds: dict[str, float]) -> None:
        with self.conn:
            self.conn.execute("UPDATE rounds SET metrics = ?, seconds = ?, done_at = ? WHERE round = ?",
                              (_dumps(metrics), self._merge_seconds(round_, seconds), time.time(), round_))

    def rounds(self, scores: bool = True) -> list[dict[str, Any]]:
        """All rounds in order, json fields decoded; ``scores=False`` leaves each round's
        per-image scores out (``"scores"``: None), so the reader does not hold them all."""
        cur = self.conn.execute(
            "SELECT round, selected, labeled_images, labeled_boxes, seconds, scores, checkpoint, "
            "train_log, metrics, health, scored FROM rounds ORDER BY round")
        out = []
        for r in cur.fetchall():
            out.append({
                "round": r[0], "selected": json.loads(r[1]), "labeled_images": r[2], "labeled_boxes": r[3],
                "seconds": json.loads(r[4]),
                "scores": self._scores(r[0], r[5], r[10]) if scores else None,
                "checkpoint": r[6], "train_log": None if r[7] is None else json.loads(r[7]),
                "metrics": None if r[8] is None else json.loads(r[8]),
                "health": None if r[9] is None else json.loads(r[9]),
            })
        return out

    # ------------------------------------------------------------------ the public summary
    def status(self) -> dict[str, Any]:
        """The ``activedet status --json`` document."""
        meta = self.meta()
        rounds = [{k: r[k] for k in ("round", "selected", "labeled_images", "labeled_boxes", "metrics", "seconds",
                                     "health", "train_log")}
                  for r in self.rounds(scores=False)]
        per_round, total = self._round_seconds(), 0.0
        for r in rounds:  # cumulative annotator seconds; None from the first round without cost rows
            total = None if total is None or r["round"] not in per_round else total + per_round[r["round"]]
            r["labeled_seconds"] = total
        for r in rounds:  # ledgers from before health was recorded: judge the recorded log
            if r["health"] is None and r["train_log"]:
                verdict = assess(r["train_log"])
                r["health"] = {"unhealthy": verdict.unhealthy, "reason": verdict.reason,
                               "attempts": [{"attempt": 0, "seed": None, "reason": verdict.reason}]}
        return {
            "run_dir": str(self.run_dir),
            "strategy": meta.get("strategy", ""),
            "complete": bool(meta.get("complete", False)),
            "task": meta.get("task", "detection"),
            "seed": meta.get("seed"),
            "pool_size": meta.get("pool_size"),
            "pool_boxes": meta.get("pool_boxes"),
            "unit": meta.get("unit", "images"),
            "quarantined": meta.get("quarantined") or {},  # image id (str) -> why it was left out
            "rounds": rounds,
            "labeling": meta.get("labeling"),  # labeling projects: the pending batch, else None
        }


def check_out_dir(path: str | Path, what: str = "--out", run: bool = False) -> Path:
    """Check an output folder before any work: a file, a place under a file, or an
    unwritable parent is a one-line :class:`RunDirError` (the folder itself is created by
    the command that writes it). ``run``: a run directory, which must also be a run
    already (a ledger) or empty: a run is never written among a user's files."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise RunDirError(f"{what} {p} is a file, not a folder")
    if p.is_dir():
        others = sorted(f.name for f in p.iterdir() if f.name != LOCK_NAME) if run else []
        if others and not (p / Ledger.FILENAME).exists():
            raise RunDirError(f"{what} {p} is a folder holding other files ({', '.join(others[:3])}"
                              f"{', ...' if len(others) > 3 else ''}) and no run; choose a new or empty folder")
        return p
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RunDirError(f"cannot create {what} {p}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot create {what} {p}: {parent} is not writable")
    return p
