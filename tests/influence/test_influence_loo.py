"""Influence scores against actual retraining on L2-regularised logistic regression.

Objective (float64): ``L(w) = sum_j l(z_j; w) + lam/2 ||w||^2`` (bias included, not
regularised). With ``s_test = H^{-1} grad l(R)`` and ``I(z) = -s_test · grad l(z)``:

- leave-one-out: removing ``z_j`` and retraining changes ``l(R)`` by about ``-I(z_j)``;
- add-one-in: adding a new ``z`` changes ``l(R)`` by about ``+I(z)``.

Retraining is Newton's method to machine precision. Pearson and Spearman correlations of
predicted vs actual changes must exceed 0.9, for the exact inverse and for LiSSA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr

from activedet.influence import (
    exact_inverse_hvp,
    grad,
    influence_scores,
    lissa_inverse_hvp,
    loss_hvp_source,
    loop_per_sample_grads,
    random_index_batches,
)

DT = torch.float64
N_TRAIN, N_REF, N_NEW, D, LAM = 80, 40, 40, 5, 1.0



def _data(n: int, g: torch.Generator, w_true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, D, generator=g, dtype=DT) * 1.5
    y = (torch.rand(n, generator=g, dtype=DT) < torch.sigmoid(x @ w_true + 0.3)).to(DT)
    return x, y


def _losses(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n,) logistic losses; theta = (w (D,), b)."""
    return F.binary_cross_entropy_with_logits(x @ theta[:D] + theta[D], y, reduction="none")


def _objective(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _losses(theta, x, y).sum() + 0.5 * LAM * (theta[:D] ** 2).sum()


def _fit(x: torch.Tensor, y: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """Exact minimiser by Newton's method (strictly convex objective), closed-form derivatives."""
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=DT)], 1)  # (n, D + 1)
    reg = torch.full((D + 1,), LAM, dtype=DT)
    reg[D] = 0.0
    theta = torch.zeros(D + 1, dtype=DT) if start is None else start.clone()
    for _ in range(50):
        prob = torch.sigmoid(xa @ theta)
        g = xa.T @ (prob - y) + reg * theta
        h = (xa.T * (prob * (1 - prob))) @ xa + torch.diag(reg)
        step = torch.linalg.solve(h, g)
        theta = theta - step
        if float(step.abs().max()) < 1e-13:
            break
    g = xa.T @ (torch.sigmoid(xa @ theta) - y) + reg * theta
    assert float(g.abs().max()) < 1e-9, "Newton did not converge"
    return theta


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    w_true = torch.randn(D, generator=g, dtype=DT)
    x, y = _data(N_TRAIN, g, w_true)
    xr, yr = _data(N_REF, g, w_true)
    xn, yn = _data(N_NEW, g, w_true)
    theta = _fit(x, y)
    param = torch.nn.Parameter(theta.clone())
    v = grad(_losses(param, xr, yr).sum(), [param])  # grad l(R)
    p = dict(x=x, y=y, xr=xr, yr=yr, xn=xn, yn=yn, theta=theta, param=param, v=v)
    base = _ref_loss(theta, p)
    keep = torch.ones(N_TRAIN, dtype=torch.bool)
    loo = []
    for j in range(N_TRAIN):  # actual leave-one-out retraining
        keep[j] = False
        loo.append(_ref_loss(_fit(x[keep], y[keep], theta), p) - base)
        keep[j] = True
    p["loo"] = np.array(loo)
    return p


def _s_test_exact(p: dict) -> list[torch.Tensor]:
    return exact_inverse_hvp(lambda: _objective(p["param"], p["x"], p["y"]), [p["param"]], p["v"])


def _s_test_lissa(p: dict) -> list[torch.Tensor]:
    # Sampled objective per example: n * l(z) + lam/2 ||w||^2, whose mean is the objective.
    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        return N_TRAIN * _losses(p["param"], p["x"][idx], p["y"][idx]).mean() + \
            0.5 * LAM * (p["param"][:D] ** 2).sum()

    src = loss_hvp_source(random_index_batches(N_TRAIN, batch_size=16, generator=torch.Generator().manual_seed(1)),
                          loss_of, [p["param"]])
    h = torch.autograd.functional.hessian(lambda t: _objective(t, p["x"], p["y"]), p["theta"])
    scale = 2.0 * float(torch.linalg.eigvalsh(h).max())
    out = lissa_inverse_hvp(p["v"], src, depth=300, repeats=2, damping=0.0, scale=scale)
    return [t / scale for t in out]


def _grads(p: dict, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    return loop_per_sample_grads(lambda i: _losses(p["param"], x[i:i + 1], y[i:i + 1]).sum(), [p["param"]], len(x))


def _ref_loss(theta: torch.Tensor, p: dict) -> float:
    return float(_losses(theta, p["xr"], p["yr"]).sum())


def _check(pred: np.ndarray, actual: np.ndarray) -> None:
    assert np.std(actual) > 0 and np.std(pred) > 0
    r, rho = pearsonr(pred, actual)[0], spearmanr(pred, actual)[0]
    assert r > 0.9 and rho > 0.9, f"Pearson {r:.3f}, Spearman {rho:.3f}"


@pytest.mark.parametrize("method", ["exact", "lissa"])
def test_influence_predicts_leave_one_out_retraining(problem, method):
    p = problem
    s_test = _s_test_exact(p) if method == "exact" else _s_test_lissa(p)
    infl = influence_scores(s_test, _grads(p, p["x"], p["y"])).numpy()
    _check(-infl, p["loo"])


def test_influence_predicts_add_one_in_retraining(problem):
    p = problem
    infl = influence_scores(_s_test_exact(p), _grads(p, p["xn"], p["yn"])).numpy()
    base = _ref_loss(p["theta"], p)
    actual = []
    for j in range(N_NEW):
        x = torch.cat([p["x"], p["xn"][j:j + 1]])
        y = torch.cat([p["y"], p["yn"][j:j + 1]])
        actual.append(_ref_loss(_fit(x, y, p["theta"]), p) - base)
    actual = np.array(actual)
    _check(infl, actual)
    # the most negative influence is a point whose addition lowers the reference loss
    assert actual[int(np.argmin(infl))] < 0
