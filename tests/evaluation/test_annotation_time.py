"""Annotator seconds on hand-made images: known pre-annotations against known boxes."""

import numpy as np
import pytest

from activedet.errors import ConfigError
from activedet.evaluation.annotation_time import AnnotatorTimes, Edits, box_iou, edits, scratch

TRUE = np.array([[0, 0, 10, 10],      # A, class 1: found exactly
                 [20, 0, 30, 10],     # B, class 2: found with the wrong class -> adjusted
                 [40, 0, 50, 10],     # C, class 1: found loosely (IoU 0.25) -> adjusted
                 [60, 0, 70, 10]],    # D, class 3: not found -> drawn
                np.float32)
LABELS = np.array([1, 2, 1, 3])
PRED = np.array([[0, 0, 10, 10],      # right (A)
                 [20, 0, 30, 10],     # class 1 on B: off
                 [40, 0, 60, 10],     # class 1 on C: IoU 10*10/(20*10) = 0.5 ... see below
                 [80, 80, 90, 90],    # nothing there: false -> deleted
                 [0, 0, 10, 10]],     # a duplicate of A, scored lower: false
                np.float32)
PRED_LABELS = np.array([1, 1, 1, 2, 1])
PRED_SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.55])


def test_hand_computed_seconds():
    t = AnnotatorTimes(look=2.0, verify=1.0, adjust=5.0, delete=0.5, draw=10.0, accept_iou=0.6,
                       overlap_iou=0.1, prelabel_score=0.5)
    e = edits(PRED, PRED_LABELS, PRED_SCORES, TRUE, LABELS, t)
    # C's prediction has IoU 0.5 < accept 0.6, so it is off, as is B's wrong class
    assert e == Edits(right=1, off=2, false=2, missed=1)
    assert e.seconds(t) == pytest.approx(2.0 + 1.0 * 1 + 5.0 * 2 + 0.5 * 2 + 10.0 * 1)  # 24 s


def test_threshold_and_score_cut_change_the_edits():
    t = AnnotatorTimes(accept_iou=0.5, prelabel_score=0.65)  # C now right; the 0.6 and 0.55 boxes not shown
    e = edits(PRED, PRED_LABELS, PRED_SCORES, TRUE, LABELS, t)
    assert e == Edits(right=2, off=1, false=0, missed=1)
    assert e.seconds(t) == pytest.approx(1.6 + 1.6 * 2 + 7.0 * 1 + 7.0 * 1)


def test_higher_score_takes_the_box_first():  # pycocotools' greedy order
    true = np.array([[0, 0, 10, 10]], np.float32)
    pred = np.array([[0, 0, 10, 9], [0, 0, 10, 10]], np.float32)
    t = AnnotatorTimes(overlap_iou=0.95, accept_iou=0.95)  # the loser cannot be "off" either
    assert edits(pred, [1, 1], [0.9, 0.6], true, [1], t) == Edits(right=1, false=1)
    assert edits(pred, [1, 1], [0.6, 0.9], true, [1], t) == Edits(right=1, false=1)


def test_no_preannotations_draws_everything():
    t = AnnotatorTimes()
    assert edits(np.zeros((0, 4)), [], [], TRUE, LABELS, t) == scratch(4) == Edits(missed=4)
    assert scratch(4).seconds(t) == pytest.approx(1.6 + 4 * 7.0)
    assert edits(PRED, PRED_LABELS, PRED_SCORES, np.zeros((0, 4)), [], t) == Edits(false=5)


def test_iou_is_pycocotools():
    iou = box_iou(np.array([[40, 0, 60, 10.0]]), np.array([[40, 0, 50, 10.0], [0, 0, 5, 5.0]]))
    assert iou == pytest.approx(np.array([[0.5, 0.0]]))


def test_bad_times_refused():
    with pytest.raises(ConfigError, match="annotator.draw"):
        AnnotatorTimes(draw=-1)
    with pytest.raises(ConfigError, match="overlap_iou"):
        AnnotatorTimes(overlap_iou=0.8, accept_iou=0.5)
