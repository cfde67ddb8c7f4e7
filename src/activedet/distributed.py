"""Rank/world helpers over ``torch.distributed``; every helper is a no-op in one process.

A distributed run is started by ``torchrun`` (or ``activedet simulate --nproc N``), which
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`init` joins the process group from them: NCCL when the run's device is CUDA (one
GPU per process, ``cuda:LOCAL_RANK``), gloo on CPU. Nothing here assumes one host.

The pattern the loop follows: every rank runs the same cycle with the same seeds, so
every random draw agrees; per-image work (scoring, features, gradients) is split with
:func:`shard` and put back together with :func:`gather_scores` / :func:`gather_rows`;
rank 0 alone writes the ledger, checkpoints and reports (:func:`on_main` runs a step there
and hands its result, or its error, to every rank); :func:`broadcast_object` makes rank 0's
answer (the selected ids) the answer of all.

A collective that fails because another rank died is re-raised as one
:class:`~activedet.errors.DistributedError` naming this rank.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import os
import socket
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import torch
# torch._dynamo (torchvision imports it) imported for the first time while a process group
# exists keeps references to that group, so shutdown() could not free it and gloo's threads
# would outlive it (issue 37): import it before any group exists
import torch._dynamo  # noqa: F401
import torch.distributed as dist

from activedet.errors import ActivedetError, DistributedError

if TYPE_CHECKING:
    from activedet.models.base import Adapter

T = TypeVar("T")

#: seconds a rank waits in a collective for the others (rank 0 may train or evaluate alone)
DEFAULT_TIMEOUT_S = 4 * 3600
_DDP_ACTIVE = False  # set while a trainer runs data-parallel (:func:`data_parallel`)
_ALONE = False  # set while rank 0 runs a step alone (on_main): it behaves as one process


# ---------------------------------------------------------------------- environment
def env_world() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def active() -> bool:
    """True inside an initialised process group of more than one process (False while rank
    0 runs a step alone in :func:`on_main`: everything there behaves as in one process)."""
    return not _ALONE and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in one process)."""
    return dist.get_rank() if active() else 0


def world() -> int:
    """Number of processes (1 in one process)."""
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    """This process's rank on its host (``LOCAL_RANK``; 0 in one process)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0) if active() else 0


def is_main() -> bool:
    """True on rank 0 (and in one process): the rank that writes."""
    return rank() == 0


def init(device: str = "auto", timeout_s: float | None = None) -> str | None:
    """Join the process group described by torchrun's environment; returns the device
    this rank should use (``cuda:LOCAL_RANK`` under NCCL) or None when there is nothing to
    join (``WORLD_SIZE`` unset or 1) or the group exists already. ``device``: the config's
    device (``auto`` | ``cpu`` | ``cuda``) picks the backend. ``timeout_s``: default
    ``ACTIVEDET_DIST_TIMEOUT_S`` or :data:`DEFAULT_TIMEOUT_S`."""
    if env_world() <= 1 or (dist.is_available() and dist.is_initialized()):
        return None
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise DistributedError(f"WORLD_SIZE is {env_world()} but {', '.join(missing)} is not set; "
                               "start distributed runs with torchrun or `activedet simulate --nproc N`")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    if timeout_s is None:
        timeout_s = float(os.environ.get("ACTIVEDET_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if cuda:
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError, OSError) as e:
        raise DistributedError(f"rank {os.environ.get('RANK')}: cannot join the process group at "
                               f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} "
                               f"({_short(e)})") from None
    return f"cuda:{local}" if cuda else None


def shutdown() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[bool]:
    """Context: under torchrun, this process in the group for the block (left after it,
    whatever happens); else nothing. Yields whether this is rank 0 (the one that speaks)."""
    init(device)
    main = is_main()
    try:
        yield main
    finally:
        shutdown()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (for a single-host rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port(port: int, host: str = "127.0.0.1") -> None:
    """Raise :class:`DistributedError` when ``port`` on ``host`` cannot be bound."""
    if not 0 < port < 65536:
        raise DistributedError(f"port {port} is not a TCP port (1..65535)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise DistributedError(f"port {port} on {host} is in use ({e.strerror or e}); "
                                   "pass another --master-port or leave it out to pick a free one") from None


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] + ("…" if len(text) > 200 else "")


def _collective(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn a failed collective (a peer died, a timeout) into one DistributedError."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, ConnectionError) as e:
            if isinstance(e, ActivedetError):
                raise
            raise DistributedError(f"rank {rank()}: another process of the run stopped or cannot be "
                                   f"reached ({_short(e)}); the ledger holds the last complete step, "
                                   "continue with --resume") from None

    return wrapped


# ---------------------------------------------------------------------- sharding
def shard(ids: Sequence[T], block: int = 1, strided: bool = False, of: tuple[int, int] | None = None) -> list[T]:
    """This rank's part of ``ids``; deterministic, the same on every call.

    Contiguous (default): ``ids`` cut into blocks of ``block`` (give the batch size, so
    each rank's batches are batches of the one-process run) and the blocks dealt out in
    contiguous runs, the first ranks taking one block more when they do not divide.
    ``strided``: rank r takes ``ids[r::world]``. ``of``: (rank, world) instead of this
    process's. A rank may get nothing (more ranks than blocks). The parts of all ranks,
    in rank order, concatenate to ``ids``."""
    r, w = of if of is not None else (rank(), world())
    ids = list(ids)
    if w == 1:
        return ids
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if strided:
        return ids[r::w]
    n_blocks = -(-len(ids) // block)
    base, extra = divmod(n_blocks, w)
    first = r * base + min(r, extra)
    count = base + (1 if r < extra else 0)
    return ids[first * block:(first + count) * block]


@_collective
def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]``; ``[obj]`` in one process."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


@_collective
def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank; ``obj`` itself in one process."""
    if not active():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@_collective
def barrier() -> None:
    if active():
        dist.barrier()


def gather_scores(part: Mapping[int, float], order: Sequence[int] | None = None) -> dict[int, float]:
    """The union of every rank's per-image ``part`` (id -> score), on every rank; keys in
    ``order`` (e.g. the candidates) when given. A duplicate id is a DistributedError."""
    parts = all_gather_object(dict(part))
    merged: dict[int, float] = {}
    for p in parts:
        for i, s in p.items():
            if i in merged:
                raise DistributedError(f"image id {i} was scored on two ranks (overlapping shards)")
            merged[i] = s
    if order is not None:
        merged = {i: merged[i] for i in order if i in merged}
    return merged


def score_sharded(fn: Callable[[list[int]], Mapping[int, float]], ids: Sequence[int],
                  block: int = 1) -> dict[int, float]:
    """``fn(ids)`` computed as ``fn(shard(ids, block))`` on each rank and gathered, keys in
    the order of ``ids``. Only for ``fn`` whose result for an image does not depend on the
    other images passed with it. In one process: ``fn(ids)``."""
    if not active():
        return dict(fn(list(ids)))
    return gather_scores(fn(shard(ids, block)), ids)


def gather_rows(fn: Callable[[list[int]], np.ndarray], ids: Sequence[int], block: int = 1) -> np.ndarray:
    """``fn(ids)`` (N, ...) rows computed shard by shard and concatenated in the order of
    ``ids``, on every rank (e.g. pooled features for core-set). In one process: ``fn(ids)``."""
    if not active():
        return fn(list(ids))
    mine = shard(ids, block)
    rows = fn(mine) if mine else None
    parts = [p for p in all_gather_object(rows) if p is not None]
    if not parts:
        return fn([])
    return np.concatenate(parts, 0)


@_collective
def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Element-wise sums over ranks of ``tensors`` (the inputs unchanged in one process)."""
    if not active():
        return list(tensors)
    nccl = dist.get_backend() == "nccl"
    out = []
    for t in tensors:
        moved = t.detach().to(torch.device("cuda", torch.cuda.current_device())) if nccl else t.detach().clone()
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        out.append(moved.to(t.device))
    return out


def all_true(flag: bool) -> bool:
    """True when ``flag`` holds on every rank."""
    if not active():
        return flag
    return all(all_gather_object(bool(flag)))


# ---------------------------------------------------------------------- rank 0 steps
def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank (pickled). An
    :class:`ActivedetError` raised by ``fn`` is raised on every rank, same type and message;
    any other exception is raised on rank 0 as it is and on the others as an
    :class:`ActivedetError` naming it, so all ranks stop together. In one process: ``fn()``."""
    global _ALONE
    if not active():
        return fn()
    result: Any = None
    error: tuple[type, str] | None = None
    if is_main():
        _ALONE = True
        try:
            result = fn()
        except ActivedetError as e:
            error = (type(e), str(e))
            caught = e
        except Exception as e:  # a bug or an OOM on rank 0: the others must not wait for a result
            error = (ActivedetError, f"process 0 failed: {type(e).__name__}: {e}")
            caught = e
        else:
            caught = None
        finally:
            _ALONE = False
    payload = broadcast_object((error, result if error is None else None))
    error, result = payload
    if error is not None:
        if is_main():
            raise caught  # the original, with its traceback
        try:
            mirrored = error[0](error[1])
        except TypeError:  # an error class with a different constructor
            mirrored = ActivedetError(error[1])
        mirrored.mirrored = True  # type: ignore[attr-defined]  # rank 0 reports it; the CLI stays quiet here
        raise mirrored
    return result


def sync_state(adapter: Adapter) -> None:
    """Give every rank rank 0's weights (after rank 0 alone trained or loaded them),
    tensor by tensor in place (NCCL moves them GPU to GPU); a rank whose adapter has not
    built its model yet builds it first (same architecture on every rank)."""
    if not active():
        return
    if isinstance(adapter.model, torch.nn.Identity):  # nothing built yet (a resumed run)
        adapter.reset(0)
    tensors = list(adapter.model.state_dict().values())
    if "scorer" in adapter.provides:  # a detector's second model (MIAL detector: separate): rank 0's, or none
        if not broadcast_object(adapter.scorer is not None):
            adapter.scorer = None
        else:
            if adapter.scorer is None:
                adapter.scorer = copy.deepcopy(adapter.model)
            tensors += list(adapter.scorer.state_dict().values())
    _broadcast_tensors(tensors)


# ---------------------------------------------------------------------- training
def ddp_active() -> bool:
    """True while a trainer runs under :func:`data_parallel` with more than one process."""
    return _DDP_ACTIVE and active()


@contextlib.contextmanager
def data_parallel(adapter: Adapter) -> Iterator[Any]:
    """Train ``adapter.model`` data-parallel for the block: :func:`epoch_part` deals each
    epoch out, :func:`reduce_sums` / :func:`reduce_counts` add the per-epoch loss sums, and
    losses computed through :func:`synced` sync their gradients. Afterwards every rank takes
    rank 0's weights and buffers: gradients kept the parameters in step, but batch-norm
    statistics last moved on each rank's own batch. No-op in one process."""
    global _DDP_ACTIVE
    if not active():
        yield adapter
        return
    _DDP_ACTIVE = True
    try:
        yield adapter
    finally:
        _DDP_ACTIVE = False
    _broadcast_tensors(list(adapter.model.state_dict().values()))


@contextlib.contextmanager
def synced(module: torch.nn.Module) -> Iterator[Callable[[Callable[[], T]], T]]:
    """Inside :func:`data_parallel`, yields ``call``: ``call(fn)`` computes ``fn()`` (losses
    from ``module``'s parameters; tensors, or dicts / tuples of them) so that ``backward()``
    of the result ends by averaging the gradients of ``module``'s trainable parameters over
    ranks (:func:`average_gradients`), as DistributedDataParallel with
    ``find_unused_parameters`` does: a parameter that got a gradient on some rank gets the
    mean (zero where a rank left it out), one that got none anywhere keeps none. The set of
    parameters is taken on entry: enter after freezing (one per MIAL stage). On entry every
    rank takes rank 0's parameters and buffers, as DDP's wrapping does. Outside
    :func:`data_parallel` ``call(fn)`` is ``fn()``.

    Why not DDP itself: in torch 2.14 a process that has built a DDP wrapper keeps its process
    group alive after ``destroy_process_group`` (measured, NOTES.md), so gloo's worker threads outlive :func:`shutdown` and can
    still be releasing a finished collective's tensors while the interpreter finalizes; the
    thread then cannot take the GIL, is unwound inside a C++ destructor and the rank aborts
    ("terminate called without an active exception"; NOTES.md, issue 37)."""
    if not ddp_active() or not any(p.requires_grad for p in module.parameters()):
        yield lambda fn: fn()
        return
    params = [p for p in module.parameters() if p.requires_grad]
    _broadcast_tensors(list(module.state_dict().values()))
    queued = [False]  # one average per backward pass, however many outputs it reaches

    def average() -> None:
        queued[0] = False
        average_gradients(params)

    def on_grad(grad: torch.Tensor) -> torch.Tensor:
        if not queued[0]:
            queued[0] = True  # runs once the whole backward pass has accumulated its gradients
            torch.autograd.Variable._execution_engine.queue_callback(average)
        return grad

    def call(fn: Callable[[], T]) -> T:
        out = fn()
        for t in _tensors(out):
            if t.requires_grad:
                t.register_hook(on_grad)
        return out

    yield call


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """The tensors in ``obj`` (a tensor, or dicts / lists / tuples of them, nested)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


@_collective
def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over ranks, in one all-reduce.

    A rank that has no gradient for a parameter counts zero for it; a parameter with no
    gradient on any rank keeps ``grad`` None (DDP's ``find_unused_parameters`` rule). Each
    gradient is divided by the world size before the sum, as DDP's reducer does.
    ``params``: P tensors, the same list in the same order on every rank."""
    world = dist.get_world_size()
    dtype = functools.reduce(torch.promote_types, (p.dtype for p in params))  # float64 stays float64
    has = [p.grad is not None for p in params]
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).to(dtype) / world
             for p in params]
    flat = torch.cat(parts + [torch.tensor(has, dtype=dtype, device=params[0].device)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    used = flat[-len(params):] > 0
    offset = 0
    for p, u in zip(params, used.tolist()):
        n = p.numel()
        if u:
            mean = flat[offset:offset + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = mean.clone()
            else:
                p.grad.copy_(mean)
        offset += n


@_collective
def _broadcast_tensors(tensors: Sequence[torch.Tensor]) -> None:
    for t in tensors:
        dist.broadcast(t, src=0)


def epoch_part(order: Sequence[T]) -> list[T]:
    """This rank's part of one epoch's shuffled ``order`` (``DistributedSampler``'s rule:
    padded by repeating from the start to a multiple of the world size, then strided), so
    every rank takes the same number of steps. Identity outside :func:`data_parallel`."""
    order = list(order)
    if not ddp_active() or not order:
        return order
    w = world()
    padded = order + (order * w)[: (-len(order)) % w]
    return padded[rank()::w]


def reduce_sums(sums: dict[str, float], count: int) -> tuple[dict[str, float], int]:
    """Per-epoch loss sums and image counts added over ranks (identity outside DDP), so
    every rank sees the same history and takes the same health decisions."""
    if not ddp_active():
        return sums, count
    keys = sorted(set().union(*all_gather_object(sorted(sums))))
    vec = torch.tensor([sums.get(k, 0.0) for k in keys] + [float(count)], dtype=torch.float64)
    (vec,) = all_reduce_sum([vec])
    return {k: float(v) for k, v in zip(keys, vec[:-1].tolist())}, int(vec[-1])


def reduce_counts(sums: dict[str, float], counts: dict[str, int]) -> tuple[dict[str, float], dict[str, int]]:
    """Per-key loss sums and image counts added over ranks, in rank order (identity outside
    DDP): every rank gets the same numbers."""
    if not ddp_active():
        return sums, counts
    total_s: dict[str, float] = {}
    total_c: dict[str, int] = {}
    for part_s, part_c in all_gather_object((sums, counts)):
        for k, v in part_s.items():
            total_s[k] = total_s.get(k, 0.0) + v
            total_c[k] = total_c.get(k, 0) + part_c[k]
    return total_s, total_c


def finite_everywhere(ok: bool) -> bool:
    """Under DDP: True when the step's loss is finite on every rank (all skip or none)."""
    if not ddp_active():
        return ok
    (bad,) = all_reduce_sum([torch.tensor([0.0 if ok else 1.0])])
    return float(bad) == 0.0


__all__ = ["active", "rank", "world", "local_rank", "is_main", "init", "shutdown", "free_port", "check_port",
           "shard", "all_gather_object", "broadcast_object", "barrier", "gather_scores", "score_sharded",
           "gather_rows", "all_reduce_sum", "all_true", "on_main", "sync_state", "data_parallel", "synced",
           "ddp_active", "epoch_part", "reduce_sums", "reduce_counts", "finite_everywhere"]
