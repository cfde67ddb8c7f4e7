"""Per-sample gradients of chosen parameters.

All functions return a *stacked param-list*: one tensor per parameter with a leading
sample dimension, ``(N, *params[i].shape)``. Sample ``i``'s gradient is that of its own
loss, computed as if it were a batch of one (``inputs[i:i+1]``, ``targets[i:i+1]``).

- :func:`per_sample_grads`: ``torch.func`` (``functional_call`` + ``vmap`` + ``grad``) when
  the model allows it, else (or with ``batched=False``) a loop of ordinary backward passes.
- :func:`loop_per_sample_grads`: a loop over any ``loss_of_sample(i)`` closure, for models
  whose losses cannot be vmapped (torchvision detectors).
- :func:`linear_ce_per_sample_grads`: closed form for the final ``nn.Linear`` of a
  classifier trained with cross-entropy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from activedet.influence.hvp import grad as param_grad

__all__ = [
    "linear_ce_per_sample_grads",
    "loop_per_sample_grads",
    "per_sample_grads",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(outputs, targets) -> scalar`` (e.g. ``nn.functional.cross_entropy``)."""


def _param_names(model: nn.Module, params: Sequence[Tensor]) -> list[str]:
    by_id = {id(p): name for name, p in model.named_parameters(remove_duplicate=False)}
    names = []
    for i, p in enumerate(params):
        if id(p) not in by_id:
            raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) is not a parameter of the model")
        names.append(by_id[id(p)])
    return names


def _check_batch(inputs: Tensor, targets: Tensor) -> int:
    if inputs.dim() == 0 or targets.dim() == 0:
        raise ValueError(
            f"inputs and targets need a leading batch dim, got shapes {tuple(inputs.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"inputs have {inputs.shape[0]} samples but targets have {targets.shape[0]}")
    return int(inputs.shape[0])


def per_sample_grads(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    params: Sequence[nn.Parameter],
    batched: bool = True,
) -> list[Tensor]:
    """Gradient of each sample's loss w.r.t. ``params``.

    Args:
        model: module mapping ``inputs[i:i+1]`` to outputs (its mode, train/eval, is used
            as is; batch-norm in train mode is not vmappable and takes the loop path).
        loss_fn: ``loss_fn(model(x), y) -> scalar`` for a batch of one.
        inputs: ``(N, ...)``; targets: ``(N, ...)``.
        params: parameters of ``model`` to differentiate; the others are held fixed.
        batched: try ``torch.func.vmap`` (falls back to the loop, with a warning, when the
            model or loss has no batching rule); ``False`` always loops (the reference).

    Returns:
        ``[ (N, *p.shape) for p in params ]``, detached.
    """
    n = _check_batch(inputs, targets)
    params = list(params)
    if not params:
        raise ValueError("params is empty: pass the explicit list of parameters to differentiate")
    names = _param_names(model, params)
    if batched:
        try:
            return _vmap_grads(model, loss_fn, inputs, targets, params, names)
        except (RuntimeError, NotImplementedError) as exc:
            warnings.warn(
                f"per_sample_grads: vmap failed ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                "using the per-sample loop",
                RuntimeWarning,
                stacklevel=2,
            )
    return loop_per_sample_grads(
        lambda i: loss_fn(model(inputs[i : i + 1]), targets[i : i + 1]), params, n
    )


def _vmap_grads(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    params: list[nn.Parameter],
    names: list[str],
) -> list[Tensor]:
    chosen = set(names)
    fixed = {
        name: p.detach()
        for name, p in model.named_parameters(remove_duplicate=False)
        if name not in chosen
    }
    fixed.update({name: b.detach() for name, b in model.named_buffers(remove_duplicate=False)})
    free = {name: p.detach() for name, p in zip(names, params)}

    def sample_loss(free_params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, {**fixed, **free_params}, (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(free, inputs, targets)
    return [grads[name].detach() for name in names]


def loop_per_sample_grads(
    loss_of_sample: Callable[[int], Tensor],
    params: Sequence[Tensor],
    n: int,
    *,
    progress: bool = False,
) -> list[Tensor]:
    """Per-sample gradients by one backward pass per sample.

    Args:
        loss_of_sample: ``i -> scalar loss of sample i`` (runs its own forward pass).
        params: parameters to differentiate (zeros where a loss does not reach them).
        n: number of samples, ``i in range(n)``.
        progress: show a tqdm bar.

    Returns:
        ``[ (n, *p.shape) for p in params ]``, detached.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    params = list(params)
    out = [torch.empty((n, *p.shape), dtype=p.dtype, device=p.device) for p in params]
    indices: Sequence[int] = range(n)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="per-sample grads", unit="sample")
    for i in indices:
        for buf, g in zip(out, param_grad(loss_of_sample(i), params)):
            buf[i] = g
    return out


def linear_ce_per_sample_grads(
    features: Tensor,
    logits: Tensor,
    targets: Tensor,
    *,
    with_bias: bool = False,
) -> list[Tensor]:
    """Closed-form per-sample gradients of cross-entropy w.r.t. a final ``nn.Linear``.

    For ``logits = features @ W.T + b`` and ``l = -sum_c t_c log softmax(logits)_c``:
    ``dl/dlogits = softmax(logits) * sum_c t_c - t`` and ``dl/dW = (dl/dlogits) outer features``.
    With one-hot targets this is ``(p - onehot(y)) ⊗ features``; soft targets ``t`` (weights
    need not sum to 1) give the probability-weighted expected gradient of ISAL Eq. 3.

    Args:
        features: ``(N, D)`` inputs of the final linear layer.
        logits: ``(N, C)`` its outputs.
        targets: ``(N,)`` class indices, or ``(N, C)`` target weights.
        with_bias: also return the bias gradient.

    Returns:
        ``[dW (N, C, D)]`` or ``[dW (N, C, D), db (N, C)]``, matching the parameter order
        ``[linear.weight, linear.bias]``.
    """
    if features.dim() != 2 or logits.dim() != 2 or features.shape[0] != logits.shape[0]:
        raise ValueError(
            f"features must be (N, D) and logits (N, C) with the same N, got "
            f"{tuple(features.shape)} and {tuple(logits.shape)}"
        )
    n, c = logits.shape
    if targets.dim() == 1:
        if targets.shape[0] != n:
            raise ValueError(f"targets has {targets.shape[0]} entries, expected {n}")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= c):
            raise ValueError(
                f"class index out of range [0, {c}): min {int(targets.min())}, max {int(targets.max())}"
            )
        weights = torch.nn.functional.one_hot(targets.long(), c).to(logits.dtype)
    elif targets.shape == logits.shape:
        weights = targets.to(logits.dtype)
    else:
        raise ValueError(
            f"targets must be (N,) indices or (N, C) weights, got {tuple(targets.shape)} for logits "
            f"{tuple(logits.shape)}"
        )
    probs = torch.softmax(logits.detach(), dim=1)
    dlogits = probs * weights.sum(dim=1, keepdim=True) - weights  # (N, C)
    dw = dlogits.unsqueeze(2) * features.detach().to(dlogits.dtype).unsqueeze(1)  # (N, C, D)
    return [dw, dlogits] if with_bias else [dw]
