"""MIAL image scoring on small arrays with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activedet.strategies.mial_scoring import aggregate, anchor_uncertainty, image_uncertainty, uncertainty_map

# 4 anchors, 2 object classes
P1 = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.6], [0.3, 0.3]])
P2 = np.array([[0.5, 0.2], [0.5, 0.1], [0.8, 0.6], [0.3, 0.4]])
# |P1 - P2| = [.4, .1], [0, .4], [.6, 0], [0, .1] -> class means:
U = [0.25, 0.2, 0.3, 0.05]
# (P1 - P2)^2 = [.16, .01], [0, .16], [.36, 0], [0, .01] -> class means:
U_SQ = [0.085, 0.08, 0.18, 0.005]
W = np.array([[1.0, 0.0], [2.0, 1.0], [0.5, 0.5], [0.0, 0.0]])
# |P1 - P2| * W = [.4, 0], [0, .4], [.3, 0], [0, 0] -> class means:
U_W = [0.2, 0.2, 0.15, 0.0]


def test_anchor_uncertainty_abs_squared_weighted() -> None:
    np.testing.assert_allclose(anchor_uncertainty(P1, P2), U, atol=1e-12)
    np.testing.assert_allclose(anchor_uncertainty(P1, P2, squared=True), U_SQ, atol=1e-12)
    np.testing.assert_allclose(anchor_uncertainty(P1, P2, weights=W), U_W, atol=1e-12)
    # torch tensors give the same numbers
    got = anchor_uncertainty(torch.tensor(P1, dtype=torch.float32), torch.tensor(P2, dtype=torch.float32))
    np.testing.assert_allclose(got, U, atol=1e-6)


def test_first_class_drops_the_background_column() -> None:
    bg1 = np.column_stack([np.full(4, 0.99), P1])
    bg2 = np.column_stack([np.zeros(4), P2])
    np.testing.assert_allclose(anchor_uncertainty(bg1, bg2, first_class=1), U, atol=1e-12)
    wbg = np.column_stack([np.full(4, 7.0), W])
    np.testing.assert_allclose(anchor_uncertainty(bg1, bg2, weights=wbg, first_class=1), U_W, atol=1e-12)


def test_single_class() -> None:
    np.testing.assert_allclose(anchor_uncertainty(P1[:, :1], P2[:, :1]), [0.4, 0.0, 0.6, 0.0], atol=1e-12)


def test_aggregate() -> None:
    assert aggregate(U, "topk", k=2) == pytest.approx((0.3 + 0.25) / 2, abs=1e-12)
    assert aggregate(U, "topk", k=1) == pytest.approx(0.3, abs=1e-12)
    # k larger than the anchor count is clipped: mean of all 4
    assert aggregate(U, "topk", k=10000) == pytest.approx((0.25 + 0.2 + 0.3 + 0.05) / 4, abs=1e-12)
    assert aggregate(U, "mean") == pytest.approx(0.2, abs=1e-12)
    assert aggregate(U, "max") == pytest.approx(0.3, abs=1e-12)
    assert isinstance(aggregate(torch.tensor(U), "max"), float)


def test_image_uncertainty_with_and_without_mil_weighting() -> None:
    assert image_uncertainty(P1, P2, k=2) == pytest.approx(0.275, abs=1e-12)
    assert image_uncertainty(P1, P2, k=2, squared=True) == pytest.approx((0.18 + 0.085) / 2, abs=1e-12)
    assert image_uncertainty(P1, P2, k=3, weighting="mil", mil_scores=W) == pytest.approx(
        (0.2 + 0.2 + 0.15) / 3, abs=1e-12)
    with pytest.raises(ValueError, match="mil_scores"):
        image_uncertainty(P1, P2, weighting="mil")


def test_uncertainty_map_sums_by_anchor_centre() -> None:
    anchors = np.array([
        [0.0, 0.0, 4.0, 4.0],  # centre (x 2, y 2)
        [1.0, 1.0, 3.0, 3.0],  # same centre: adds up
        [4.0, 0.0, 6.0, 3.0],  # centre (x 5, y 1.5) -> pixel row 1, column 5
        [5.0, 5.0, 9.0, 9.0],  # centre y 7 is below a 4-px-high image: dropped
        [-3.0, -3.0, 1.0, 1.0],  # centre (-1, -1): dropped
    ])
    u = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    heat = uncertainty_map(u, anchors, (4, 6))
    expected = np.zeros((4, 6))
    expected[2, 2] = 1.0 + 2.0
    expected[1, 5] = 3.0
    np.testing.assert_array_equal(heat, expected)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="NaN"):
        anchor_uncertainty(np.array([[np.nan, 0.1]]), np.array([[0.1, 0.1]]))
    with pytest.raises(ValueError, match="prob1 and prob2"):
        anchor_uncertainty(P1, P2[:3])
    with pytest.raises(ValueError, match="k must"):
        aggregate(U, "topk", k=0)
    with pytest.raises(ValueError, match="empty"):
        aggregate(np.zeros(0))
    with pytest.raises(ValueError, match="how"):
        aggregate(U, "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="anchors"):
        uncertainty_map(U, np.zeros((3, 4)), (4, 4))
