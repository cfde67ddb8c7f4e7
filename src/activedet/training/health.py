"""Training health: is the detector a round trained fit to evaluate and to select with?

Pure functions over the per-epoch history a trainer records (rows of mean loss terms).
Two failure modes are recognised:

- **dead branch**: a loss term sits at its degenerate value for ``patience`` epochs in a
  row. FCOS's box branch ends in a ReLU: once its output is negative everywhere it
  predicts zero-size boxes, the GIoU loss of a zero-size box inside its target is exactly
  1 and no gradient flows back, so ``bbox_regression`` stays at 1.000 for good.
- **no progress**: at the end of training the total loss is not below where the first
  epoch left it (diverged, or stuck on a plateau). A slow but falling loss is not flagged:
  a re-initialisation would not speed it up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

#: loss term -> its degenerate value (the loss of a branch that outputs nothing useful)
DEGENERATE = {"bbox_regression": 1.0}  # FCOS: GIoU loss of zero-size boxes
#: |loss - degenerate| below this counts as "at the degenerate value"
DEGENERATE_TOL = 5e-3
#: stages whose rows carry the supervised (labeled-set) losses
LABELED_STAGES = ("train", "label")
#: a loss term, not bookkeeping, in a history row
_NOT_LOSS = {"stage", "epoch", "round", "lr", "attempt"}


@dataclass(frozen=True)
class Health:
    """Verdict on a training history. ``reason`` is one line naming the term and values."""

    unhealthy: bool
    reason: str | None = None


HEALTHY = Health(False)


def _labeled_rows(history: Sequence[Mapping[str, Any]], detector: bool = False) -> list[Mapping[str, Any]]:
    """Rows of labeled-set training; ``detector``: only the detector's (not those of a
    separate scorer, ``"model": "scorer"``, MIAL ``detector: separate``)."""
    return [h for h in history if h.get("stage", "train") in LABELED_STAGES
            and not (detector and h.get("model") == "scorer")]


def labeled_loss(row: Mapping[str, Any]) -> float | None:
    """Total labeled-set loss of a history row: every loss term except the unlabeled
    ones (``unlabeled_*``, MIAL's min/max steps) and bookkeeping; None if it has none."""
    vals = [float(v) for k, v in row.items()
            if k not in _NOT_LOSS and not k.startswith("unlabeled_") and isinstance(v, (int, float))]
    return sum(vals) if vals else None


def training_curve(history: Sequence[Mapping[str, Any]]) -> list[float]:
    """The detector's labeled-set loss per labeled epoch of the last attempt in ``history``."""
    last = max((row.get("attempt", 0) for row in history), default=0)
    rows = [row for row in _labeled_rows(history, detector=True) if row.get("attempt", 0) == last]
    return [t for t in map(labeled_loss, rows) if t is not None]


def dead_branch(history: Sequence[Mapping[str, Any]], patience: int = 3) -> Health:
    """A loss term at its degenerate value for ``patience`` labeled epochs in a row,
    anywhere in ``history``: the trainer checks after every epoch, so it sees the first
    such run at the end of the history so far; judged afterwards, a branch that was dead
    for a while and then revived left a half-trained round."""
    rows = _labeled_rows(history)
    for term, value in DEGENERATE.items():
        run = 0
        for r in rows:
            v = r.get(term)
            run = run + 1 if isinstance(v, (int, float)) and abs(v - value) < DEGENERATE_TOL else 0
            if run >= patience:
                return Health(True, f"{term} stuck at {v:.3f} (degenerate value {value:g}) for "
                                    f"{patience} epochs: the branch is dead")
    return HEALTHY


def no_progress(history: Sequence[Mapping[str, Any]], min_drop: float = 0.0) -> Health:
    """The detector's last labeled epoch's total loss is not more than ``min_drop`` (a
    fraction) below the first's, or is not finite."""
    rows = _labeled_rows(history, detector=True)
    if len(rows) < 2:
        return HEALTHY
    first, last = labeled_loss(rows[0]) or 0.0, labeled_loss(rows[-1]) or 0.0
    if not math.isfinite(last):
        return Health(True, f"total loss is {last} at the end of training")
    if last >= (1 - min_drop) * first:
        word = "rose" if last > first else "did not fall"
        return Health(True, f"total loss {word}: {first:.3f} in the first epoch, {last:.3f} in the last")
    return HEALTHY


def assess(history: Sequence[Mapping[str, Any]], patience: int = 3, final: bool = True) -> Health:
    """Health of a training history (rows as the trainers record them). ``final``: the
    history is complete, so progress over the whole run is judged too."""
    dead = dead_branch(history, patience)
    if dead.unhealthy or not final:
        return dead
    return no_progress(history)
