"""Round 0 trained once per seed across the strategies of a ``compare`` grid.

Round 0 is the same for every strategy of one seed: the same seeded draw of the same pool,
trained the same way by every strategy whose model and trainer are the plain ones (random,
entropy, core-set, ...; MIAL, learning loss and the others train their own way and are
never shared). ``simulate --round0-cache DIR`` (which ``compare`` passes, ``OUT/round0``)
keeps each such round-0 model under a key of everything it depends on: the resolved config
without its strategy, and the round's image ids. A later cell with the same key copies the
checkpoint instead of training, and its ledger records where the model came from
(``meta.round0_from``). A lock per key makes a cell that finds another one training the
same round 0 wait for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

from activedet.config import ExperimentConfig
from activedet.loop.atomic import atomic_write_text

CHECKPOINT, RECORD = "round_000.pt", "round.json"


def round0_key(cfg: ExperimentConfig, model_variant: str, trainer: str, selected: Sequence[int]) -> str | None:
    """sha256 of what round 0's model depends on; None for a strategy that trains its own way."""
    if model_variant != "plain" or trainer != "plain":
        return None
    data = cfg.to_dict()
    data.pop("strategy")
    data.pop("annotator", None)  # costs, not training
    blob = json.dumps({"config": data, "selected": sorted(int(i) for i in selected)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@contextlib.contextmanager
def locked(cache: Path, key: str) -> Iterator[Path]:
    """The key's folder, held exclusively (another process with the same key waits)."""
    folder = Path(cache) / key
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch(folder: Path, dest: Path) -> dict[str, Any] | None:
    """Copy the kept checkpoint to ``dest``; its record ({sha256, history, health, source}),
    or None when the folder keeps none yet."""
    record = folder / RECORD
    if not record.is_file() or not (folder / CHECKPOINT).is_file():
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / CHECKPOINT, dest)
    return json.loads(record.read_text())


def keep(folder: Path, checkpoint: Path, sha256: str, history: list[dict], health: dict[str, Any] | None,
         source: str) -> None:
    """Keep a trained round 0 (the checkpoint first, then the record that makes it visible)."""
    shutil.copyfile(checkpoint, folder / CHECKPOINT)
    atomic_write_text(folder / RECORD, json.dumps({"sha256": sha256, "history": history, "health": health,
                                                   "source": source}), "round-0 record")


__all__ = ["round0_key", "locked", "fetch", "keep"]
