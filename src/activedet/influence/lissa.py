"""LiSSA: stochastic estimation of inverse-Hessian-vector products (ISAL supp. Alg. 3).

One run starts at ``h = v`` and, for each sampled batch ``z``, updates every parameter
group ``g`` (one tensor of the param-list) as in the ISAL authors' code::

    h_g <- v_g + (1 - damping) * h_g - (H_z h)_g / scale_g

``repeats`` independent runs are averaged. The Hessian-vector products come from a
caller-supplied *source* so that the caller decides which data is sampled, in which
order, from which explicit generator (this module draws no random numbers itself):

- an ``Iterable[HvpFn]``: one stream; run ``r`` consumes its next ``depth`` items;
- a ``Callable[[int], Iterable[HvpFn]]``: called once per run with the run index.

``HvpFn`` maps ``h`` (param-list) to ``H_z h`` (param-list). :func:`hvp_source` builds a
source from ``hvp_at(batch, h)`` and batches; :func:`loss_hvp_source` from
``(batches, loss_fn, params[, model])``; :func:`random_index_batches` draws index
batches from an explicit ``torch.Generator`` or ``numpy.random.Generator``.

What :func:`lissa_inverse_hvp` converges to (``H`` = expected Hessian of the sampled batches, ``D`` =
diagonal matrix holding each group's scale):

- ``divide_by_scale=False`` (default; the ISAL authors' code, no final division):
  ``(H + damping * D)^{-1} D v``; with one scalar ``s`` this is
  ``s * (H + damping * s * I)^{-1} v``, i.e. ``scale * H^{-1} v`` as
  ``damping * scale -> 0``.
- ``divide_by_scale=True`` (Koh & Liang / the paper's form, result / scale):
  ``D^{-1} (H + damping * D)^{-1} D v``; with one scalar ``s`` this is
  ``(H + damping * s * I)^{-1} v``, i.e. ``H^{-1} v`` as ``damping * s -> 0``.

With a scalar scale the two differ by the constant ``s`` (rankings are unchanged);
per-group scales additionally re-weight the groups. The recursion converges only if
every sampled ``H_z / scale`` has eigenvalues in ``(-damping, 2 - damping)``: pick
``scale`` above the largest Hessian eigenvalue (and ``damping * scale`` above
``-lambda_min`` for non-convex losses).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, Union

import numpy as np
import torch
from torch import Tensor, nn

from activedet.influence.hvp import check_like, hvp

__all__ = [
    "HvpAt",
    "HvpFn",
    "HvpSource",
    "hvp_source",
    "lissa_inverse_hvp",
    "loss_hvp_source",
    "random_index_batches",
]

logger = logging.getLogger(__name__)

B = TypeVar("B")
HvpFn = Callable[[list[Tensor]], list[Tensor]]
"""``h -> H_z h`` for one sampled batch ``z`` (param-lists in, param-list out)."""
HvpSource = Union[Iterable[HvpFn], Callable[[int], Iterable[HvpFn]]]
"""A stream of :data:`HvpFn`, or a function of the run index returning one."""
HvpAt = Callable[[Any, list[Tensor]], list[Tensor]]
"""``hvp_at(batch, h) -> H_batch h``."""
Batches = Union[Iterable[Any], Callable[[int], Iterable[Any]]]
Progress = Union[bool, Callable[[int, int], None]]


def _scales(scale: float | Sequence[float], n_groups: int) -> list[float]:
    if isinstance(scale, (int, float)):
        values = [float(scale)] * n_groups
    else:
        values = [float(s) for s in scale]
        if len(values) != n_groups:
            raise ValueError(
                f"scale has {len(values)} values, expected {n_groups} (one per param-list tensor)"
            )
    for i, s in enumerate(values):
        if not s > 0:
            raise ValueError(f"scale[{i}] must be > 0, got {s}")
    return values


def _run_streams(source: HvpSource, repeats: int) -> Iterator[Iterator[HvpFn]]:
    """One iterator of HvpFn per run."""
    if isinstance(source, Iterable):
        shared = iter(source)
        for _ in range(repeats):
            yield shared
    elif callable(source):
        for r in range(repeats):
            yield iter(source(r))
    else:
        raise TypeError(
            f"hvp_fn_iter must be an iterable of HvpFn or a callable run -> iterable, "
            f"got {type(source).__name__}"
        )


def _progress_hook(progress: Progress, total: int) -> tuple[Callable[[int], None], Callable[[], None]]:
    if progress is False or progress is None:
        return (lambda _done: None), (lambda: None)
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="LiSSA", unit="hvp")
        return (lambda _done: bar.update(1)), bar.close
    if callable(progress):
        return (lambda done: progress(done, total)), (lambda: None)
    raise TypeError(f"progress must be a bool or a callable (done, total), got {progress!r}")


def lissa_inverse_hvp(
    v: Sequence[Tensor],
    hvp_fn_iter: HvpSource,
    *,
    depth: int,
    repeats: int,
    damping: float = 0.01,
    scale: float | Sequence[float] = 10_000.0,
    divide_by_scale: bool = False,
    nan_reset: bool = True,
    progress: Progress = False,
) -> list[Tensor]:
    """Estimate an inverse-Hessian-vector product by the LiSSA recursion.

    Per run: ``h = v``; then ``depth`` times, with ``Hh = next_hvp_fn(h)``, for every
    group ``g``: ``h_g <- v_g + (1 - damping) * h_g - Hh_g / scale_g``. The result is the
    mean of ``repeats`` runs (divided by ``scale_g`` group-wise if ``divide_by_scale``).

    What it converges to, for each ``divide_by_scale``, and when it converges: see the
    module docstring.

    Args:
        v: param-list (e.g. the reference gradient ``grad l(R)``), shapes ``params[i].shape``.
        hvp_fn_iter: an iterable of ``HvpFn`` (one stream; run ``r`` takes its next
            ``depth`` items) or a callable ``run_index -> Iterable[HvpFn]``.
        depth: recursion steps (sampled batches) per run, ``>= 1``.
        repeats: independent runs averaged, ``>= 1``.
        damping: ``d`` in the update, in ``[0, 1)``.
        scale: a float, or one value per tensor of ``v`` (e.g. FCOS cls 100, reg 8000,
            centerness 5000).
        divide_by_scale: divide the result by the scale (see above).
        nan_reset: a Hessian-vector product containing NaN (or inf) in group ``g`` resets
            ``h_g`` to ``v_g`` for that step instead of updating it.
        progress: ``True`` for a tqdm bar, or a callable ``(steps_done, steps_total)``.

    Returns:
        param-list shaped like ``v`` (detached, dtype of ``v``).
    """
    _check_lissa_arguments(v, depth, repeats, damping)
    scales = _scales(scale, len(v))
    v = [t.detach() for t in v]
    tick, close = _progress_hook(progress, depth * repeats)
    acc = [torch.zeros_like(t) for t in v]
    resets = [0] * len(v)
    try:
        for run, stream in enumerate(_run_streams(hvp_fn_iter, repeats)):
            h = _lissa_run(v, stream, depth, damping, scales, nan_reset, resets, tick, run)
            for g in range(len(v)):
                acc[g] += h[g]
    finally:
        close()
    if any(resets):
        logger.warning("LiSSA: non-finite Hessian-vector products reset groups %s times", resets)
    out = [a / repeats for a in acc]
    if divide_by_scale:
        out = [o / s for o, s in zip(out, scales)]
    return out


def _check_lissa_arguments(v: Sequence[Tensor], depth: int, repeats: int, damping: float) -> None:
    """ValueError naming the first bad argument of :func:`lissa_inverse_hvp`."""
    if len(v) == 0:
        raise ValueError("v is empty")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not 0.0 <= damping < 1.0:
        raise ValueError(f"damping must be in [0, 1), got {damping}")


def _lissa_run(
    v: list[Tensor],
    stream: Iterable[HvpFn],
    depth: int,
    damping: float,
    scales: list[float],
    nan_reset: bool,
    resets: list[int],
    tick: Callable[[int], None],
    run: int,
) -> list[Tensor]:
    """LiSSA run number ``run``: ``h = v``, then ``depth`` updates ``h_g <- v_g + (1 - damping) h_g -
    (H h)_g / scale_g`` with the Hessian-vector products ``stream`` yields.

    ``v``: param-list (detached); returns the final ``h``, shaped like ``v``. A non-finite
    product in group ``g`` (with ``nan_reset``) resets ``h_g`` to ``v_g`` and counts in
    ``resets[g]`` (updated in place). ``tick(steps done in all runs)`` after each step
    (runs before this one took ``depth`` each). ValueError when
    ``stream`` ends before ``depth`` products.
    """
    h = [t.clone() for t in v]
    steps = 0
    for hvp_fn in itertools.islice(stream, depth):
        hv = hvp_fn(h)
        check_like(hv, v, "Hessian-vector product")
        for g, (vg, hg, hvg) in enumerate(zip(v, h, hv)):
            if nan_reset and not bool(torch.isfinite(hvg).all()):
                h[g] = vg.clone()
                resets[g] += 1
            else:
                h[g] = vg + (1.0 - damping) * hg - hvg.detach().to(vg.dtype) / scales[g]
        steps += 1
        tick(run * depth + steps)
    if steps < depth:
        raise ValueError(f"run {run}: hvp_fn_iter yielded only {steps} of depth={depth} Hessian-vector products")
    return h


def _map_batches(batches: Batches, fn: Callable[[Any], HvpFn]) -> HvpSource:
    if isinstance(batches, Iterable):
        return (fn(b) for b in batches)
    if callable(batches):
        return lambda run: (fn(b) for b in batches(run))
    raise TypeError(f"batches must be an iterable or a callable run -> iterable, got {type(batches).__name__}")


def hvp_source(batches: Batches, hvp_at: HvpAt) -> HvpSource:
    """Build a LiSSA source from ``hvp_at(batch, h) -> H_batch h`` and batches.

    ``batches`` is an iterable of batches (shared stream) or a callable
    ``run_index -> Iterable[batch]`` (e.g. :func:`random_index_batches`).
    """
    return _map_batches(batches, lambda b: (lambda h: hvp_at(b, h)))


def loss_hvp_source(
    batches: Batches,
    loss_fn: Callable[..., Tensor],
    params: Sequence[Tensor],
    model: nn.Module | None = None,
) -> HvpSource:
    """Build a LiSSA source whose Hessian-vector products come from double back-prop.

    Without ``model``: ``loss_fn(batch) -> scalar``. With ``model``: each batch is
    ``(inputs, targets)`` and the loss is ``loss_fn(model(inputs), targets)``.
    The Hessian is taken w.r.t. ``params`` only.
    """
    params = list(params)
    if model is None:
        def closure_of(b: Any) -> Callable[[], Tensor]:
            return lambda: loss_fn(b)
    else:
        def closure_of(b: Any) -> Callable[[], Tensor]:
            inputs, targets = b
            return lambda: loss_fn(model(inputs), targets)
    return _map_batches(batches, lambda b: (lambda h: hvp(closure_of(b), params, h)))


def random_index_batches(
    n: int,
    *,
    batch_size: int = 1,
    generator: torch.Generator | np.random.Generator,
) -> Callable[[int], Iterator[Tensor]]:
    """Endless random batches of indices into ``range(n)``, for one LiSSA run per call.

    Indices come from successive random permutations of ``range(n)`` (no repeat within a
    permutation), drawn only from ``generator``; calling the result for runs 0, 1, ...
    in order with a generator in the same state reproduces the same batches.

    Returns:
        ``run_index -> iterator of int64 tensors (batch_size,)`` on the CPU.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(generator, torch.Generator):
        def perm() -> Tensor:
            return torch.randperm(n, generator=generator)
    elif isinstance(generator, np.random.Generator):
        def perm() -> Tensor:
            return torch.from_numpy(generator.permutation(n).astype(np.int64))
    else:
        raise TypeError(
            f"generator must be a torch.Generator or numpy.random.Generator, got {type(generator).__name__}"
        )

    def stream(_run: int) -> Iterator[Tensor]:
        buf = perm()
        pos = 0
        while True:
            parts = []
            need = batch_size
            while need:
                if pos == buf.numel():
                    buf, pos = perm(), 0
                take = min(need, buf.numel() - pos)
                parts.append(buf[pos : pos + take])
                pos += take
                need -= take
            yield parts[0] if len(parts) == 1 else torch.cat(parts)

    return stream
