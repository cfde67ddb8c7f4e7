"""Exact Hessians and inverse-Hessian-vector products for small parameter counts.

The reference the stochastic estimators (LiSSA) are checked against: the full Hessian
``(P, P)`` is built row by row from double back-propagation and ``(H + damping I) x = v``
is solved directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from activedet.influence.hvp import LossClosure, check_like, flat, unflat

__all__ = ["DEFAULT_MAX_PARAMS", "exact_inverse_hvp", "hessian_matrix"]

DEFAULT_MAX_PARAMS = 5000
"""Largest parameter count for which a dense Hessian is built (``P^2`` entries)."""

_ROW_CHUNK = 256


def _count(params: Sequence[Tensor], max_params: int) -> int:
    if len(params) == 0:
        raise ValueError("params is empty: pass the explicit list of parameters")
    count = sum(p.numel() for p in params)
    if count > max_params:
        raise ValueError(
            f"exact Hessian over {count} parameters exceeds max_params={max_params}; "
            "use LiSSA (activedet.influence.lissa) or choose fewer parameters"
        )
    return count


def hessian_matrix(
    loss_fn: LossClosure, params: Sequence[Tensor], *, max_params: int = DEFAULT_MAX_PARAMS
) -> Tensor:
    """Dense Hessian of a scalar loss w.r.t. ``params``, flattened in param-list order.

    Args:
        loss_fn: closure running a forward pass and returning a scalar loss.
        params: parameters (P numbers in all, ``P <= max_params``).

    Returns:
        ``(P, P)`` tensor ``H[i, j] = d^2 loss / d theta_i d theta_j`` (detached), where theta
        is ``flat(params)``.

    Raises:
        ValueError: when P exceeds ``max_params`` (the message gives P).
    """
    count = _count(params, max_params)
    for i, p in enumerate(params):
        if not p.requires_grad:
            raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) does not require grad")
    loss = loss_fn()
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    ref = params[0]
    hess = torch.zeros(count, count, dtype=ref.dtype, device=ref.device)
    if not loss.requires_grad:
        return hess
    gs = torch.autograd.grad(loss, list(params), create_graph=True, allow_unused=True)
    g_flat = torch.cat(
        [torch.zeros(p.numel(), dtype=ref.dtype, device=ref.device) if g is None else g.reshape(-1)
         for g, p in zip(gs, params)]
    )
    if not g_flat.requires_grad:  # loss linear in params
        return hess
    for start in range(0, count, _ROW_CHUNK):
        stop = min(start + _ROW_CHUNK, count)
        hess[start:stop] = _hessian_rows(g_flat, params, start, stop)
    return hess.detach()


def _hessian_rows(g_flat: Tensor, params: Sequence[Tensor], start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of the Hessian: ``(stop - start, P)``.

    Uses one batched (vmapped) backward pass; falls back to one backward per row for
    operations without a batching rule.
    """
    eye = torch.zeros(stop - start, g_flat.numel(), dtype=g_flat.dtype, device=g_flat.device)
    eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
    try:
        hs = torch.autograd.grad(
            g_flat, list(params), grad_outputs=eye, retain_graph=True, allow_unused=True,
            is_grads_batched=True,
        )
        return _cat_rows(hs, params, stop - start)
    except RuntimeError:
        rows = []
        for k in range(stop - start):
            hs = torch.autograd.grad(
                g_flat, list(params), grad_outputs=eye[k], retain_graph=True, allow_unused=True
            )
            rows.append(_cat_rows([None if h is None else h.unsqueeze(0) for h in hs], params, 1))
        return torch.cat(rows)


def _cat_rows(hs: Sequence[Tensor | None], params: Sequence[Tensor], n: int) -> Tensor:
    ref = params[0]
    return torch.cat(
        [torch.zeros(n, p.numel(), dtype=ref.dtype, device=ref.device) if h is None
         else h.reshape(n, -1) for h, p in zip(hs, params)],
        dim=1,
    )


def exact_inverse_hvp(
    loss_fn: LossClosure,
    params: Sequence[Tensor],
    v: Sequence[Tensor],
    damping: float = 0.0,
    *,
    max_params: int = DEFAULT_MAX_PARAMS,
) -> list[Tensor]:
    """Solve ``(H + damping * I) x = v`` exactly, H the Hessian of ``loss_fn`` w.r.t. ``params``.

    Args:
        loss_fn: closure returning the scalar loss whose Hessian is inverted.
        params: parameters (P numbers, ``P <= max_params``).
        v: param-list shaped like ``params``.
        damping: added to the Hessian's diagonal (``>= 0``).

    Returns:
        param-list ``(H + damping I)^{-1} v``.

    Raises:
        ValueError: too many parameters, negative damping, or a singular system.
    """
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    check_like(v, params)
    hess = hessian_matrix(loss_fn, params, max_params=max_params)
    hess = 0.5 * (hess + hess.T)  # remove round-off asymmetry
    if damping:
        hess = hess + damping * torch.eye(hess.shape[0], dtype=hess.dtype, device=hess.device)
    rhs = flat([t.detach().to(hess.dtype) for t in v])
    try:
        x = torch.linalg.solve(hess, rhs)
    except RuntimeError as exc:  # torch.linalg.LinAlgError subclasses RuntimeError
        raise ValueError(
            f"Hessian over {hess.shape[0]} parameters is singular with damping={damping}; "
            "increase damping"
        ) from exc
    return unflat(x, params)
