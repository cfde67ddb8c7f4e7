"""LiSSA against exact inverse-HVPs on L2 logistic regression and ridge regression.

Relations checked (H = Hessian of the sampled objective, s = scale, d = damping, D = per-group
scales): divide_by_scale=True -> (H + d s I)^{-1} v; divide_by_scale=False (authors' code)
-> s (H + d s I)^{-1} v; per-group scales without division -> (H + d D)^{-1} D v.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from activedet.influence import (
    exact_inverse_hvp,
    flat,
    hessian_matrix,
    hvp,
    lissa_inverse_hvp,
    loss_hvp_source,
    random_index_batches,
    unflat,
)

DT = torch.float64
N, D, LAM = 200, 10, 0.1



def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


class _Problem:
    """L2-regularised logistic (or ridge) regression at its optimum, float64."""

    def __init__(self, kind: str, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(N, D, generator=g, dtype=DT)
        w_true = torch.randn(D, generator=g, dtype=DT)
        if kind == "logistic":
            self.y = (torch.rand(N, generator=g, dtype=DT) < torch.sigmoid(self.x @ w_true)).to(DT)
        else:
            self.y = self.x @ w_true + 0.3 * torch.randn(N, generator=g, dtype=DT)
        self.kind = kind
        self.w = nn.Parameter(torch.zeros(D, dtype=DT))
        self.b = nn.Parameter(torch.zeros((), dtype=DT))
        self.params = [self.w, self.b]
        self.v = [torch.randn(D, generator=g, dtype=DT), torch.randn((), generator=g, dtype=DT)]
        full = self.full
        for _ in range(25):  # Newton to convergence
            gr = torch.autograd.grad(full(), self.params)
            step = torch.linalg.solve(hessian_matrix(full, self.params), flat(gr))
            with torch.no_grad():
                for p, s in zip(self.params, unflat(step, self.params)):
                    p -= s

    def loss_on(self, idx: torch.Tensor) -> torch.Tensor:
        z = self.x[idx] @ self.w + self.b
        if self.kind == "logistic":
            data = F.binary_cross_entropy_with_logits(z, self.y[idx])
        else:
            data = 0.5 * (z - self.y[idx]).pow(2).mean()
        return data + LAM / 2 * (self.w.pow(2).sum() + self.b.pow(2))

    def full(self) -> torch.Tensor:
        return self.loss_on(torch.arange(N))

    def full_hvp_stream(self):
        return itertools.repeat(lambda h: hvp(self.full, self.params, h))

    def minibatch_source(self, seed: int, batch_size: int = 50):
        gen = torch.Generator().manual_seed(seed)
        return loss_hvp_source(random_index_batches(N, batch_size=batch_size, generator=gen),
                               self.loss_on, self.params)


@pytest.fixture(scope="module")
def logistic() -> _Problem:
    return _Problem("logistic")


@pytest.fixture(scope="module")
def ridge() -> _Problem:
    return _Problem("ridge", seed=1)


def test_deterministic_full_batch_relations(logistic: _Problem):
    p = logistic
    s, d = 2.0, 0.002
    exact_damped = flat(exact_inverse_hvp(p.full, p.params, p.v, damping=d * s))
    div = flat(lissa_inverse_hvp(p.v, p.full_hvp_stream(), depth=400, repeats=1,
                                 damping=d, scale=s, divide_by_scale=True))
    raw = flat(lissa_inverse_hvp(p.v, p.full_hvp_stream(), depth=400, repeats=1,
                                 damping=d, scale=s, divide_by_scale=False))
    assert _rel(div, exact_damped) < 1e-8  # (H + d s I)^{-1} v
    assert _rel(raw, s * exact_damped) < 1e-8  # s (H + d s I)^{-1} v: the authors' output
    # per-group scales (w: 2, b: 5), no final division: (H + d D)^{-1} D v
    scales = [2.0, 5.0]
    dvec = torch.tensor([2.0] * D + [5.0], dtype=DT)
    hmat = hessian_matrix(p.full, p.params)
    want = torch.linalg.solve(hmat + d * torch.diag(dvec), dvec * flat(p.v))
    got = flat(lissa_inverse_hvp(p.v, p.full_hvp_stream(), depth=600, repeats=1,
                                 damping=d, scale=scales))
    assert _rel(got, want) < 1e-8
    got_div = flat(lissa_inverse_hvp(p.v, p.full_hvp_stream(), depth=600, repeats=1,
                                     damping=d, scale=scales, divide_by_scale=True))
    assert _rel(got_div, want / dvec) < 1e-8


# scale above the largest minibatch-Hessian eigenvalue (logistic ~0.6, ridge ~2.2);
# a larger scale lowers the variance but needs more depth (contraction 1 - lambda_min / s).
@pytest.mark.parametrize(
    ("name", "batch_size", "s", "depth"), [("logistic", 50, 2.0, 300), ("ridge", 100, 6.0, 600)]
)
def test_stochastic_lissa_matches_exact_inverse_within_2_percent(name, batch_size, s, depth, request):
    p: _Problem = request.getfixturevalue(name)
    exact = flat(exact_inverse_hvp(p.full, p.params, p.v))  # undamped H^{-1} v
    kw = dict(depth=depth, repeats=4, damping=0.0, scale=s)
    est = flat(lissa_inverse_hvp(p.v, p.minibatch_source(1, batch_size), divide_by_scale=True, **kw))
    raw = flat(lissa_inverse_hvp(p.v, p.minibatch_source(1, batch_size), divide_by_scale=False, **kw))
    err = _rel(est, exact)
    print(f"{name}: LiSSA relative error vs exact H^-1 v = {err:.4f}")
    assert err <= 0.02
    assert _rel(raw, s * exact) <= 0.02  # without division: scale * H^{-1} v
    assert _rel(raw / s, est) < 1e-12  # the two modes differ by exactly the scale


def test_stochastic_lissa_with_damping_targets_damped_inverse(logistic: _Problem):
    p = logistic
    s, d = 2.0, 0.05
    exact = flat(exact_inverse_hvp(p.full, p.params, p.v, damping=d * s))
    est = flat(lissa_inverse_hvp(p.v, p.minibatch_source(seed=2), depth=200, repeats=4,
                                 damping=d, scale=s, divide_by_scale=True))
    assert _rel(est, exact) <= 0.02


def test_nan_hvp_resets_only_that_group():
    a0 = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=DT)
    a1 = torch.tensor([[1.5]], dtype=DT)
    v = [torch.tensor([1.0, -1.0], dtype=DT), torch.tensor([2.0], dtype=DT)]
    nan_steps = {3, 7}

    def stream():
        for k in range(10):
            def fn(h, k=k):
                g1 = a1 @ h[1]
                if k in nan_steps:
                    g1 = torch.full_like(g1, float("nan"))
                return [a0 @ h[0], g1]
            yield fn

    damping, scale = 0.01, 4.0
    got = lissa_inverse_hvp(v, stream(), depth=10, repeats=1, damping=damping, scale=scale)
    h0, h1 = v[0].clone(), v[1].clone()
    for k in range(10):
        h0 = v[0] + (1 - damping) * h0 - (a0 @ h0) / scale
        h1 = v[1].clone() if k in nan_steps else v[1] + (1 - damping) * h1 - (a1 @ h1) / scale
    assert torch.allclose(got[0], h0, rtol=1e-12) and torch.allclose(got[1], h1, rtol=1e-12)
    off = lissa_inverse_hvp(v, stream(), depth=10, repeats=1, damping=damping, scale=scale,
                            nan_reset=False)
    assert torch.isnan(off[1]).all() and torch.isfinite(off[0]).all()


def test_same_generator_same_result_and_progress(logistic: _Problem):
    p = logistic
    calls: list[tuple[int, int]] = []
    kw = dict(depth=20, repeats=3, damping=0.01, scale=2.0)
    r1 = lissa_inverse_hvp(p.v, p.minibatch_source(seed=7, batch_size=5),
                           progress=lambda done, total: calls.append((done, total)), **kw)
    r2 = lissa_inverse_hvp(p.v, p.minibatch_source(seed=7, batch_size=5), **kw)
    r3 = lissa_inverse_hvp(p.v, p.minibatch_source(seed=8, batch_size=5), **kw)
    assert all(torch.equal(a, b) for a, b in zip(r1, r2))
    assert not torch.equal(flat(r1), flat(r3))
    assert calls[-1] == (60, 60) and len(calls) == 60


def test_random_index_batches_numpy_and_torch_generators_are_reproducible():
    for make in (lambda: torch.Generator().manual_seed(3), lambda: np.random.default_rng(3)):
        a = random_index_batches(7, batch_size=3, generator=make())
        b = random_index_batches(7, batch_size=3, generator=make())
        xs = [list(itertools.islice(a(r), 5)) for r in range(2)]
        ys = [list(itertools.islice(b(r), 5)) for r in range(2)]
        assert all(torch.equal(x, y) for rx, ry in zip(xs, ys) for x, y in zip(rx, ry))
        first = torch.cat(xs[0])
        assert first.shape == (15,) and first.dtype == torch.int64
        assert sorted(first[:7].tolist()) == list(range(7))  # a permutation before repeats


def test_bad_arguments_are_reported():
    v = [torch.zeros(2, dtype=DT), torch.zeros((), dtype=DT)]
    stream = itertools.repeat(lambda h: h)
    with pytest.raises(ValueError, match="3 values, expected 2"):
        lissa_inverse_hvp(v, stream, depth=1, repeats=1, scale=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="-5"):
        lissa_inverse_hvp(v, stream, depth=1, repeats=1, scale=[1.0, -5.0])
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        lissa_inverse_hvp(v, stream, depth=0, repeats=1)
    with pytest.raises(ValueError, match="run 1: .* only 1 of depth=3"):  # shared stream of 4
        lissa_inverse_hvp(v, [lambda h: h] * 4, depth=3, repeats=2)
