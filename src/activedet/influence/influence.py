"""Influence scores from an inverse-HVP and per-sample gradients (ISAL Eq. 2 and 4).

Sign convention (ISAL, Koh & Liang): with ``s_test = H^{-1} grad l(R)``,
``I(z, R) = -s_test · G_z`` is the derivative of the reference loss ``l(R)`` w.r.t. the
weight ``eps`` of sample ``z`` added to the training objective. Negative influence means
adding ``z`` is predicted to *lower* the reference loss: rank ascending, most negative
first. For a training objective ``(1/n) sum_j l(z_j) (+ regulariser)``, adding ``z`` as
one more term with the same ``1/n`` weight changes ``l(R)`` by about ``I(z, R) / n``;
removing a training sample ``z_j`` changes it by about ``-I(z_j, R) / n``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from activedet.influence.hvp import add, check_like, grad

__all__ = [
    "grad_similarity",
    "influence_scores",
    "reference_grad",
    "sum_grads",
]


def influence_scores(s_test: Sequence[Tensor], sample_grads: Sequence[Tensor]) -> Tensor:
    """``I_i = -s_test · G_i`` for every sample ``i``.

    Args:
        s_test: param-list, ``H^{-1} grad l(R)`` (shapes ``p.shape``).
        sample_grads: stacked param-list ``[(N, *p.shape)]`` (see :mod:`.per_sample`).

    Returns:
        ``(N,)`` influences in the dtype of ``sample_grads``; more negative = more helpful.
    """
    if len(s_test) == 0:
        raise ValueError("s_test is empty")
    if len(sample_grads) != len(s_test):
        raise ValueError(
            f"sample_grads has {len(sample_grads)} tensors, expected {len(s_test)} (one per parameter)"
        )
    n = sample_grads[0].shape[0] if sample_grads[0].dim() else -1
    for i, (s, g) in enumerate(zip(s_test, sample_grads)):
        if g.dim() != s.dim() + 1 or g.shape[1:] != s.shape or g.shape[0] != n:
            raise ValueError(
                f"sample_grads[{i}] has shape {tuple(g.shape)}, expected ({n}, *{tuple(s.shape)})"
            )
    total = torch.zeros(n, dtype=sample_grads[0].dtype, device=sample_grads[0].device)
    for s, g in zip(s_test, sample_grads):
        total = total + g.reshape(n, -1) @ s.reshape(-1).to(g.dtype)
    return -total


def grad_similarity(ref_grad: Sequence[Tensor], sample_grads: Sequence[Tensor]) -> Tensor:
    """``-ref_grad · G_i`` per sample: the ISAL ablation that drops ``H^{-1}``.

    Same shapes and sign convention as :func:`influence_scores` (``(N,)``, ascending).
    """
    return influence_scores(ref_grad, sample_grads)


def sum_grads(grads: Iterable[Sequence[Tensor]]) -> list[Tensor]:
    """Sum an iterable of param-lists (e.g. per-image reference gradients)."""
    total: list[Tensor] | None = None
    for k, g in enumerate(grads):
        if total is None:
            total = [t.detach().clone() for t in g]
        else:
            check_like(g, total, f"grads[{k}]")
            total = add(total, [t.detach() for t in g])
    if total is None:
        raise ValueError("sum_grads got no gradients")
    return total


def reference_grad(
    loss_of_batch: Callable[[object], Tensor],
    params: Sequence[Tensor],
    batches: Iterable[object],
) -> list[Tensor]:
    """``grad l(R) = sum over reference batches of grad loss_of_batch(batch)``.

    Args:
        loss_of_batch: ``batch -> scalar`` loss with ground-truth labels (set the model's
            mode, e.g. eval, before calling).
        params: parameters to differentiate.
        batches: the reference set, batch by batch (a summed loss per batch gives
            ISAL's sum over reference images).

    Returns:
        param-list shaped like ``params``.
    """
    return sum_grads(grad(loss_of_batch(b), params) for b in batches)
