"""classification_metrics: top-1 and per-class accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from activedet.errors import ActivedetError
from activedet.evaluation.classification import classification_metrics


def test_top1_and_per_class_with_missing_class_omitted() -> None:
    m = classification_metrics([0, 0, 1, 1, 1, 3], np.array([0, 1, 1, 1, 0, 2]), ["a", "b", "c", "d"])
    assert m["top1"] == pytest.approx(3 / 6)
    assert m["per_class_accuracy"] == {"a": 0.5, "b": pytest.approx(2 / 3), "d": 0.0}


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ActivedetError, match="2 entries"):
        classification_metrics([0, 1], [0], ["a", "b"])
    with pytest.raises(ActivedetError, match="zero samples"):
        classification_metrics([], [], ["a"])
    with pytest.raises(ActivedetError, match="y_pred holds label 5"):
        classification_metrics([0], [5], ["a", "b"])
