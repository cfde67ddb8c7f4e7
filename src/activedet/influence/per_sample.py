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
- :func:`layer_per_sample_grads`: closed form for the weights of final ``Conv2d`` /
  ``Linear`` layers from one batched forward + backward (detector heads);
  :func:`layer_grad_dots`: their dots with one vector per layer, without forming them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from activedet.influence.hvp import grad as param_grad

__all__ = [
    "layer_grad_dots",
    "layer_per_sample_grads",
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


def layer_per_sample_grads(
    loss_fn: Callable[[], Tensor],
    layers: Sequence[nn.Module],
    n: int,
    *,
    cut_below: bool = False,
) -> list[Tensor]:
    """Closed-form per-sample gradients of the weights of final ``Conv2d`` / ``Linear`` layers.

    ``loss_fn`` runs one forward pass over a batch of ``n`` samples and returns
    ``sum_i loss_i``, where ``loss_i`` depends on sample ``i`` only and every call of a
    layer in ``layers`` sees the samples along its leading dimension (row ``i`` = sample
    ``i``). Forward hooks record each call's input ``X`` and output ``Y``; one backward
    pass from the loss to the outputs gives ``dY``, and for every sample
    ``dW_i = sum over calls and positions of dY_i ⊗ X_i`` (convolutions: ``X`` unfolded
    into patches). A layer called several times (an FPN head shared across levels)
    accumulates over its calls. Nothing is back-propagated below these layers.

    Args:
        loss_fn: closure returning the summed per-sample losses (a scalar).
        layers: ``nn.Conv2d`` (``groups == 1``) or ``nn.Linear`` modules.
        n: batch size N.
        cut_below: each layer's output is handed on as a new leaf (detached, requiring
            grad), so the autograd graph starts at these outputs: nothing below them is
            recorded when the model's parameters are frozen. Only for layers none of
            which feeds another (a detector's final convs), and the loss must not reach
            ``dY`` through anything but these outputs.

    Returns:
        ``[(N, *layer.weight.shape) for layer in layers]``, detached (biases excluded).
    """
    result: list[Tensor] = []
    for layer, per_layer in zip(layers, _layer_calls(loss_fn, layers, n, cut_below)):
        w = layer.weight
        acc = torch.zeros((n, *w.shape), dtype=w.dtype, device=w.device)
        for x, dy in per_layer:
            acc += _layer_weight_grad(layer, x, dy).to(w.dtype)
        result.append(acc.detach())
    return result


def layer_grad_dots(
    loss_fn: Callable[[], Tensor],
    layers: Sequence[nn.Module],
    vectors: Sequence[Tensor],
    n: int,
    *,
    cut_below: bool = False,
) -> Tensor:
    """``(N,)``: ``sum over layers k of <vectors[k], dW_k,i>`` for each sample ``i``, the dot
    of :func:`layer_per_sample_grads` with one weight-shaped vector per layer, without
    forming the per-sample gradients.

    For a call with input ``X`` and output gradient ``dY``, ``<V, dW_i> = sum over positions
    of dY_i · (X_i * V)``: a convolution of ``X`` with ``V`` as its weight (the layer's
    stride, padding and dilation; no bias), or ``X @ V.T`` for a linear layer, against
    ``dY``. One more pass of each final layer instead of the patches of every image.
    Arguments as in :func:`layer_per_sample_grads`; ``vectors[k]`` has ``layers[k].weight``'s
    shape.
    """
    layers, vectors = list(layers), list(vectors)
    if len(vectors) != len(layers):
        raise ValueError(f"{len(vectors)} vectors for {len(layers)} layers")
    for k, (layer, v) in enumerate(zip(layers, vectors)):
        if tuple(v.shape) != tuple(layer.weight.shape):
            raise ValueError(f"vectors[{k}] has shape {tuple(v.shape)}, expected {tuple(layer.weight.shape)}")
    out: Tensor | None = None
    for layer, v, per_layer in zip(layers, vectors, _layer_calls(loss_fn, layers, n, cut_below)):
        for x, dy in per_layer:
            d = _layer_dot(layer, x, dy, v.to(x.dtype))
            out = d if out is None else out + d
    if out is None:
        return torch.zeros(n, dtype=layers[0].weight.dtype, device=layers[0].weight.device)
    return out.detach()


def _layer_calls(loss_fn: Callable[[], Tensor], layers: Sequence[nn.Module], n: int,
                 cut_below: bool) -> list[list[tuple[Tensor, Tensor]]]:
    """Per layer, its calls' ``(X, dY)`` (input, gradient of the loss at the output) from one
    forward (``loss_fn``) and one backward pass to the layers' outputs; calls the loss does
    not reach are left out."""
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty")
    for k, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                raise ValueError(f"layers[{k}] is a grouped convolution (groups={layer.groups})")
            if isinstance(layer.padding, str):
                raise ValueError(f"string padding {layer.padding!r} is not supported")
        elif not isinstance(layer, nn.Linear):
            raise ValueError(f"layers[{k}] is a {type(layer).__name__}, expected nn.Conv2d or nn.Linear")
    calls: list[list[tuple[Tensor, Tensor]]] = [[] for _ in layers]

    def recorder(k: int) -> Callable[..., None]:
        def hook(_module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
            if cut_below:
                output = output.detach().requires_grad_(True)
            calls[k].append((inputs[0].detach(), output))
            return output if cut_below else None
        return hook

    handles = [layer.register_forward_hook(recorder(k)) for k, layer in enumerate(layers)]
    try:
        loss = loss_fn()
    finally:
        for h in handles:
            h.remove()
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    outputs = [out for per_layer in calls for _, out in per_layer]
    out_grads: Sequence[Tensor | None] = [None] * len(outputs)
    if outputs and loss.requires_grad:
        out_grads = torch.autograd.grad(loss, outputs, allow_unused=True)
    result: list[list[tuple[Tensor, Tensor]]] = []
    pos = 0
    for layer, per_layer in zip(layers, calls):
        kept = []
        for x, _ in per_layer:
            dy = out_grads[pos]
            pos += 1
            if dy is None:
                continue
            if x.shape[0] != n:
                raise ValueError(f"a {type(layer).__name__} call saw {x.shape[0]} rows, expected {n} samples")
            kept.append((x, dy))
        result.append(kept)
    return result


def _layer_dot(layer: nn.Module, x: Tensor, dy: Tensor, v: Tensor) -> Tensor:
    """``(N,)`` ``<v, dW_i>`` of one call (see :func:`layer_grad_dots`)."""
    n = x.shape[0]
    if isinstance(layer, nn.Linear):
        return ((x @ v.T) * dy).reshape(n, -1).sum(1)
    assert isinstance(layer, nn.Conv2d)
    xv = torch.nn.functional.conv2d(x, v, None, layer.stride, layer.padding, layer.dilation)
    return (xv * dy).reshape(n, -1).sum(1)


def _layer_weight_grad(layer: nn.Module, x: Tensor, dy: Tensor) -> Tensor:
    """Per-sample weight gradient of one call: ``(N, *weight.shape)``."""
    n = x.shape[0]
    if isinstance(layer, nn.Linear):
        xs = x.reshape(n, -1, x.shape[-1])  # (N, R, D_in)
        gs = dy.reshape(n, -1, dy.shape[-1])  # (N, R, D_out)
        return torch.einsum("nro,nri->noi", gs, xs)
    assert isinstance(layer, nn.Conv2d)
    patches = torch.nn.functional.unfold(
        x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride
    )  # (N, C_in * kh * kw, L)
    gs = dy.reshape(n, dy.shape[1], -1)  # (N, C_out, L)
    return torch.einsum("nol,nkl->nok", gs, patches).reshape(n, *layer.weight.shape)
