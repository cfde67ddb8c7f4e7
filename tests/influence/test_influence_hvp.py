"""hvp / grad / param-list helpers / exact Hessian against torch.autograd.functional.hessian."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from activedet.influence import (
    dot,
    exact_inverse_hvp,
    flat,
    grad,
    hessian_matrix,
    hvp,
    unflat,
)

DT = torch.float64



def _mlp_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # only for nn.Linear's default init
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
    x = torch.randn(16, 4, generator=g, dtype=DT)
    y = torch.randint(0, 3, (16,), generator=g)
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]

    def loss_fn() -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    def loss_of_flat(theta: torch.Tensor) -> torch.Tensor:
        pd = dict(zip(names, unflat(theta, params)))
        return F.cross_entropy(functional_call(model, pd, (x,)), y)

    theta0 = flat([p.detach() for p in params])
    explicit = torch.autograd.functional.hessian(loss_of_flat, theta0)
    return model, params, loss_fn, explicit, g


def test_hvp_matches_explicit_hessian_times_v():
    _, params, loss_fn, explicit, g = _mlp_problem()
    for _ in range(3):
        v = [torch.randn(p.shape, generator=g, dtype=DT) for p in params]
        got = flat(hvp(loss_fn, params, v))
        want = explicit @ flat(v)
        assert torch.linalg.norm(got - want) <= 1e-6 * torch.linalg.norm(want)


def test_hvp_of_parameter_subset_is_the_hessian_block():
    model, params, loss_fn, explicit, g = _mlp_problem(1)
    sub = [params[2]]  # second Linear's weight: rows 4*6+6 .. +18 of the flat vector
    start = params[0].numel() + params[1].numel()
    stop = start + params[2].numel()
    v = [torch.randn(params[2].shape, generator=g, dtype=DT)]
    got = flat(hvp(loss_fn, sub, v))
    want = explicit[start:stop, start:stop] @ flat(v)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


def test_hessian_matrix_matches_explicit():
    _, params, loss_fn, explicit, _ = _mlp_problem(2)
    assert torch.allclose(hessian_matrix(loss_fn, params), explicit, rtol=1e-9, atol=1e-12)


def test_exact_inverse_hvp_solves_damped_system():
    _, params, loss_fn, explicit, g = _mlp_problem(3)
    v = [torch.randn(p.shape, generator=g, dtype=DT) for p in params]
    damping = 0.5  # the MLP Hessian is indefinite/singular; damping makes it invertible
    x = flat(exact_inverse_hvp(loss_fn, params, v, damping=damping))
    lhs = (explicit + damping * torch.eye(explicit.shape[0], dtype=DT)) @ x
    assert torch.allclose(lhs, flat(v), rtol=1e-8, atol=1e-10)


def test_exact_guard_names_the_parameter_count():
    big = nn.Parameter(torch.zeros(80, 80, dtype=DT))
    with pytest.raises(ValueError, match="6400"):
        hessian_matrix(lambda: big.pow(2).sum(), [big])
    with pytest.raises(ValueError, match="6400"):
        exact_inverse_hvp(lambda: big.pow(2).sum(), [big], [torch.ones_like(big)])


def test_exact_inverse_rejects_bad_damping_and_singular():
    p = nn.Parameter(torch.zeros(3, dtype=DT))
    with pytest.raises(ValueError, match="-1"):
        exact_inverse_hvp(lambda: p.pow(2).sum(), [p], [torch.ones(3, dtype=DT)], damping=-1.0)
    with pytest.raises(ValueError, match="singular"):
        exact_inverse_hvp(lambda: p.sum() * 2.0, [p], [torch.ones(3, dtype=DT)])


def test_grad_returns_zeros_for_unused_params_and_hvp_handles_linear_losses():
    a = nn.Parameter(torch.ones(2, dtype=DT))
    unused = nn.Parameter(torch.ones(3, dtype=DT))
    gs = grad((a * 3.0).sum(), [a, unused])
    assert torch.equal(gs[0], torch.full((2,), 3.0, dtype=DT))
    assert torch.equal(gs[1], torch.zeros(3, dtype=DT))
    # linear in a: zero Hessian, no None anywhere
    hv = hvp(lambda: (a * 3.0).sum(), [a, unused], [torch.ones(2, dtype=DT), torch.ones(3, dtype=DT)])
    assert all(torch.equal(h, torch.zeros_like(h)) for h in hv)
    # quadratic in a only
    hv = hvp(lambda: a.pow(2).sum(), [a, unused], [torch.ones(2, dtype=DT), torch.ones(3, dtype=DT)])
    assert torch.equal(hv[0], torch.full((2,), 2.0, dtype=DT)) and torch.equal(hv[1], torch.zeros(3, dtype=DT))


def test_flat_unflat_dot_roundtrip_and_errors():
    like = [torch.zeros(2, 3), torch.zeros(4), torch.zeros(())]
    vec = torch.arange(11.0)
    parts = unflat(vec, like)
    assert [tuple(p.shape) for p in parts] == [(2, 3), (4,), ()]
    assert torch.equal(flat(parts), vec)
    assert float(dot(parts, parts)) == float(vec @ vec)
    with pytest.raises(ValueError, match=r"\(10,\)"):
        unflat(torch.zeros(10), like)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        dot(parts, [torch.zeros(2, 3), torch.zeros(3), torch.zeros(())])
    with pytest.raises(ValueError, match=r"\(5,\)"):
        hvp(lambda: like[0].sum(), [nn.Parameter(torch.zeros(4))], [torch.zeros(5)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_eigenvalue_matches_eigvalsh(seed: int) -> None:
    from activedet.influence import top_eigenvalue

    model, params, loss_fn, _, _ = _mlp_problem(seed)
    exact = torch.linalg.eigvalsh(hessian_matrix(loss_fn, params))
    dominant = float(exact[exact.abs().argmax()])
    lam, u = top_eigenvalue(lambda h: hvp(loss_fn, params, h), params,
                            generator=torch.Generator().manual_seed(seed), iters=500, tol=1e-10)
    assert lam == pytest.approx(dominant, rel=1e-4)
    hu = flat(hvp(loss_fn, params, u))
    assert torch.allclose(hu, dominant * flat(u), atol=1e-3 * abs(dominant))  # an eigenvector
    assert float(flat(u).norm()) == pytest.approx(1.0)
