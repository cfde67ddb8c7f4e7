"""Classification metrics: top-1 accuracy and per-class accuracy (recall per class)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from activedet.errors import ActivedetError


def classification_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                           class_names: Sequence[str]) -> dict[str, Any]:
    """Top-1 accuracy and per-class accuracy.

    y_true, y_pred: (N,) class indices in ``0..C-1`` with ``C = len(class_names)``.
    Returns ``{"top1": float, "per_class_accuracy": {class_name: float}}``; a class with no
    sample in ``y_true`` is omitted from ``per_class_accuracy``. Raises
    :class:`ActivedetError` on empty input, mismatched lengths or out-of-range labels.
    """
    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    n_classes = len(class_names)
    if len(t) != len(p):
        raise ActivedetError(f"y_true has {len(t)} entries but y_pred has {len(p)}")
    if len(t) == 0:
        raise ActivedetError("cannot compute classification metrics on zero samples")
    for name, arr in (("y_true", t), ("y_pred", p)):
        bad = arr[(arr < 0) | (arr >= n_classes)]
        if len(bad):
            raise ActivedetError(f"{name} holds label {int(bad[0])} outside 0..{n_classes - 1}")
    correct = t == p
    per_class = {}
    for c, name in enumerate(class_names):
        mask = t == c
        if mask.any():
            per_class[str(name)] = float(correct[mask].mean())
    return {"top1": float(correct.mean()), "per_class_accuracy": per_class}
