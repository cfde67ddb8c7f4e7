"""Param-list algebra, gradients and Hessian-vector products by double back-propagation.

A *param-list* is a ``list[Tensor]`` with one tensor per entry of an explicit list of
parameters ``params``, each shaped like that parameter (``vecs[i].shape == params[i].shape``).
Every function of :mod:`activedet.influence` takes and returns vectors in this form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "LossClosure",
    "add",
    "check_like",
    "dot",
    "flat",
    "grad",
    "hvp",
    "scaled",
    "top_eigenvalue",
    "unflat",
    "zeros_like",
]

LossClosure = Callable[[], Tensor]
"""A function of no arguments that runs a forward pass and returns a scalar loss."""


def check_like(vecs: Sequence[Tensor], like: Sequence[Tensor], name: str = "vector") -> None:
    """Raise ``ValueError`` unless ``vecs`` has one tensor per entry of ``like``, same shapes."""
    if len(vecs) != len(like):
        raise ValueError(f"{name} has {len(vecs)} tensors, expected {len(like)} (one per parameter)")
    for i, (v, p) in enumerate(zip(vecs, like)):
        if v.shape != p.shape:
            raise ValueError(
                f"{name}[{i}] has shape {tuple(v.shape)}, expected {tuple(p.shape)}"
            )


def flat(vecs: Sequence[Tensor]) -> Tensor:
    """Concatenate a param-list into one vector: ``(sum of numels,)``."""
    if len(vecs) == 0:
        raise ValueError("cannot flatten an empty param-list")
    return torch.cat([v.reshape(-1) for v in vecs])


def unflat(flat_vec: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a vector ``(P,)`` back into tensors shaped like ``like`` (P = total numel)."""
    total = sum(p.numel() for p in like)
    if flat_vec.dim() != 1 or flat_vec.numel() != total:
        raise ValueError(
            f"flat vector has shape {tuple(flat_vec.shape)}, expected ({total},) for {len(like)} tensors"
        )
    out: list[Tensor] = []
    start = 0
    for p in like:
        out.append(flat_vec[start : start + p.numel()].view_as(p))
        start += p.numel()
    return out


def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Inner product of two param-lists: a scalar tensor ``sum_i <a_i, b_i>``."""
    if len(a) == 0:
        raise ValueError("dot of empty param-lists")
    check_like(b, a, "second operand")
    return torch.stack([(x * y).sum() for x, y in zip(a, b)]).sum()


def add(a: Sequence[Tensor], b: Sequence[Tensor], alpha: float = 1.0) -> list[Tensor]:
    """``a + alpha * b`` elementwise over two param-lists."""
    check_like(b, a, "second operand")
    return [x + alpha * y for x, y in zip(a, b)]


def scaled(a: Sequence[Tensor], factor: float) -> list[Tensor]:
    """``factor * a`` for a param-list."""
    return [factor * x for x in a]


def zeros_like(params: Sequence[Tensor]) -> list[Tensor]:
    """A param-list of zeros (detached, same dtype/device as each parameter)."""
    return [torch.zeros_like(p, memory_format=torch.contiguous_format).detach() for p in params]


def _check_params(params: Sequence[Tensor]) -> None:
    if len(params) == 0:
        raise ValueError("params is empty: pass the explicit list of parameters to differentiate")
    for i, p in enumerate(params):
        if not p.requires_grad:
            raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) does not require grad")


def grad(
    loss: Tensor,
    params: Sequence[Tensor],
    *,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> list[Tensor]:
    """Gradient of a scalar ``loss`` w.r.t. ``params`` as a param-list.

    Parameters the loss does not depend on get a zero tensor, never ``None``.
    Unless ``create_graph`` the result is detached.
    """
    _check_params(params)
    if loss.dim() != 0:
        raise ValueError(f"loss must be a scalar, got shape {tuple(loss.shape)}")
    if not loss.requires_grad:
        return zeros_like(params)
    gs = torch.autograd.grad(
        loss, list(params), create_graph=create_graph, retain_graph=retain_graph, allow_unused=True
    )
    out = [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)]
    return out if create_graph else [g.detach() for g in out]


def hvp(loss_fn: LossClosure, params: Sequence[Tensor], vector: Sequence[Tensor]) -> list[Tensor]:
    """Hessian-vector product ``(d^2 loss / d params^2) @ vector`` by double back-propagation.

    Args:
        loss_fn: closure running a forward pass and returning a scalar loss.
        params: the parameters the Hessian is taken over (P entries).
        vector: param-list shaped like ``params`` (treated as a constant).

    Returns:
        param-list ``H v``, detached; zeros for parameters the loss (or its gradient)
        does not depend on.
    """
    _check_params(params)
    check_like(vector, params)
    loss = loss_fn()
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    if not loss.requires_grad:
        return zeros_like(params)
    gs = torch.autograd.grad(loss, list(params), create_graph=True, allow_unused=True)
    terms = [
        (g * v.detach().to(g.dtype)).sum()
        for g, v in zip(gs, vector)
        if g is not None and g.requires_grad
    ]
    if not terms:  # the loss is linear in every parameter: zero Hessian
        return zeros_like(params)
    inner = torch.stack(terms).sum()
    hv = torch.autograd.grad(inner, list(params), allow_unused=True)
    return [torch.zeros_like(p).detach() if h is None else h.detach() for h, p in zip(hv, params)]


def top_eigenvalue(
    hvp_fn: Callable[[list[Tensor]], list[Tensor]],
    like: Sequence[Tensor],
    *,
    generator: torch.Generator,
    iters: int = 20,
    tol: float = 1e-3,
) -> tuple[float, list[Tensor]]:
    """The dominant eigenvalue (largest ``|λ|``) of a symmetric operator, by power iteration.

    Args:
        hvp_fn: ``h -> H h`` on param-lists (e.g. :func:`hvp` of a fixed loss).
        like: param-list giving shapes, dtype and device of the vectors.
        generator: the start vector is drawn from it (a CPU ``torch.Generator``).
        iters: at most this many products.
        tol: stop once the Rayleigh quotient changes by less than ``tol × |λ|``.

    Returns:
        ``(λ, u)``: the Rayleigh quotient ``uᵀHu`` of the last unit vector ``u`` (signed:
        negative when a negative eigenvalue dominates) and ``u`` as a param-list.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    u = [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p) for p in like]
    norm = float(torch.sqrt(sum((x.double() ** 2).sum() for x in u)))
    u = [x / norm for x in u]
    lam = 0.0
    for _ in range(iters):
        hu = hvp_fn(u)
        check_like(hu, like, "Hessian-vector product")
        new = float(dot(u, hu))
        norm = float(torch.sqrt(sum((x.double() ** 2).sum() for x in hu)))
        if not norm > 0 or not torch.isfinite(torch.tensor(norm)):
            return (0.0 if norm == 0 else float("nan")), u
        u = [x / norm for x in hu]
        done = abs(new - lam) <= tol * abs(new)
        lam = new
        if done:
            break
    return lam, u
