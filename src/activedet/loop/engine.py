"""The round engine: the model of a round, for every caller of the cycle.

``simulate`` (:mod:`activedet.loop.runner`) and ``select`` (:mod:`activedet.labeling.project`)
differ only in where labels come from. Everything about a round's model is here, once:

- :class:`RunStore`: the run's ledger as every rank sees it. Rank 0 holds the ledger and
  makes each read or write; the other ranks make the same call and get rank 0's result
  (one :func:`activedet.distributed.on_main` per call, owned here, not by the callers).
- :class:`RoundModels`: make the adapter hold round k's model (trained on the images
  labeled in rounds 0..k): load its checkpoint when one is recorded for the same labeled
  set and its sha256 matches the one recorded when it was written, else train it
  (continuing from round k-1's model unless ``loop.reinit``), save it atomically and record
  it; evaluate it on the test split.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import numpy as np
import torch

from activedet import distributed
from activedet.config import ExperimentConfig, image_root
from activedet.data.loading import load_dataset
from activedet.data.pool import Pool
from activedet.errors import CheckpointError, TrainingError
from activedet.loop.atomic import atomic_write_bytes
from activedet.loop.ledger import Ledger
from activedet.strategies.base import Strategy
from activedet.training.trainer import TrainResult, get_trainer, train_round

if TYPE_CHECKING:
    from activedet.models.base import Adapter

log = logging.getLogger(__name__)

T = TypeVar("T")


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 32-bit seed derived from the run seed and a path of keys (round, purpose)."""
    words = [seed] + [k if isinstance(k, int) else int.from_bytes(k.encode()[:8].ljust(8, b"\0"), "little")
                      for k in keys]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


# ============================================================================ splits
def split_spec(cfg: ExperimentConfig, which: str) -> str | None:
    """The dataset spec of split ``which`` (train | test | reference); a ``builtin:`` train
    split carries its own test split."""
    spec = getattr(cfg.dataset, which)
    if spec is None and which == "test" and (cfg.dataset.train or "").startswith("builtin:"):
        return cfg.dataset.train
    return spec


def load_split(cfg: ExperimentConfig, which: str) -> Any:
    """Split ``which`` of ``cfg.dataset`` from its own image root (``dataset.<split>_images``,
    else ``dataset.images``), or None when the config has none: the one place ``simulate``
    and ``select`` resolve a split."""
    spec = split_spec(cfg, which)
    if spec is None:
        return None
    return load_dataset(spec, which, image_root(cfg.dataset, which), cfg.dataset.options)


# ============================================================================ checkpoints
def save_checkpoint(adapter: Adapter, path: Path, round_: int) -> str:
    """Write the adapter's weights atomically (temp + fsync + rename); returns their sha256."""
    buf = io.BytesIO()
    torch.save({"round": round_, "arch": adapter.arch, "variant": adapter.variant,
                "model": adapter.state_dict()}, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data, "checkpoint")
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(adapter: Adapter, path: Path, sha256: str | None = None) -> None:
    """Load a checkpoint into ``adapter``. A missing or unreadable file, or one whose
    sha256 differs from ``sha256`` (as recorded when it was written), is a
    :class:`CheckpointError`."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e.strerror or e}") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"checkpoint {path} is damaged ({len(data)} bytes; checksum differs from "
                              f"the one recorded when it was written)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        model = state["model"]
    except Exception as e:  # truncated zip, unpickling errors, a wrong layout
        raise CheckpointError(f"checkpoint {path} is damaged: {' '.join(str(e).split())[:160]}") from None
    adapter.load_state_dict(model)


# ============================================================================ the store
class RunStore:
    """A run's ledger from every rank. ``RunStore(ledger)`` on rank 0, ``RunStore(None)`` on
    the others (:meth:`follower`): each method is one collective, so every rank makes the
    same calls in the same order; rank 0 runs it on the ledger and every rank returns its
    result (an error on rank 0 is raised on every rank).

    Subclasses add a project's own tables (:class:`activedet.labeling.project.ProjectStore`
    records the labeled set each checkpoint was trained on)."""

    def __init__(self, ledger: Ledger | None) -> None:
        self.ledger = ledger

    @classmethod
    def follower(cls) -> "RunStore":
        return cls(None)

    def call(self, fn: Callable[[Ledger], T]) -> T:
        """``fn(ledger)`` on rank 0; its result on every rank."""
        def main() -> T:
            assert self.ledger is not None, "RunStore(None) is a follower: rank 0 holds the ledger"
            return fn(self.ledger)

        return distributed.on_main(main)

    def rounds(self) -> dict[int, dict[str, Any]]:
        """Every recorded round by number (no per-image scores)."""
        return self.call(lambda lg: {r["round"]: r for r in lg.rounds(scores=False)})

    def checksums(self) -> dict[str, str]:
        """The sha256 recorded for each checkpoint written (path relative to the run)."""
        return self.call(lambda lg: dict(lg.meta().get("checkpoint_sha256") or {}))

    def fingerprint(self, round_: int) -> str | None:
        """What round ``round_``'s checkpoint was trained on (None: not recorded)."""
        return None

    def _put_fingerprint(self, ledger: Ledger, round_: int, value: str) -> None:
        """Record ``value`` for round ``round_`` (in ``ledger.conn``'s open transaction)."""

    def record_model(self, round_: int, checkpoint: str, sums: dict[str, str], history: list[dict],
                     seconds: dict[str, float], health: dict[str, Any] | None, fingerprint: str | None) -> None:
        """The checkpoint's sha256 first, then its round as trained (and on what)."""
        def write(lg: Ledger) -> None:
            lg.set_meta(checkpoint_sha256=sums)  # before the round is marked trained
            lg.set_trained(round_, checkpoint, history, seconds, health)
            if fingerprint is not None:
                with lg.conn:
                    self._put_fingerprint(lg, round_, fingerprint)

        self.call(write)

    def record_metrics(self, round_: int, metrics: dict[str, Any], seconds: dict[str, float]) -> None:
        self.call(lambda lg: lg.set_metrics(round_, metrics, seconds))

    def add_round(self, round_: int, selected: list[int], labeled_images: int, labeled_boxes: int,
                  seconds: dict[str, float], scores: dict[int, float] | None,
                  costs: Sequence[tuple[int, int, float, dict[str, int]]] = (),
                  info: dict[str, Any] | None = None) -> None:
        self.call(lambda lg: lg.add_round(round_, selected, labeled_images, labeled_boxes, seconds, scores, costs,
                                          info))

    def image_seconds(self) -> dict[int, float]:
        """Image id -> annotator seconds recorded for it (:meth:`Ledger.image_seconds`)."""
        return self.call(lambda lg: lg.image_seconds())

    def set_meta(self, **values: Any) -> None:
        self.call(lambda lg: lg.set_meta(**values))

    def status(self) -> dict[str, Any]:
        return self.call(Ledger.status)


# ============================================================================ training
def train_model(cfg: ExperimentConfig, strategy: Strategy, adapter: Adapter, dataset: Any, pool: Pool, r: int,
                fresh: bool, progress: bool, labeled: Sequence[int] | None = None,
                unlabeled: Sequence[int] | None = None) -> TrainResult:
    """Train ``adapter`` for round ``r`` with round ``r``'s seeds on ``labeled`` (default:
    ``pool.labeled``, in its order) with ``unlabeled`` (default: ``pool.unlabeled``) for the
    strategies that train on it; ``fresh`` re-initialises the model first (else training
    continues from the weights it holds). The same labeled ids in the same order give the
    same model.

    Training health is judged and a collapsed round handled per ``train.on_collapse``
    (:func:`~activedet.training.trainer.train_round`): a retry re-initialises with a seed
    derived from ``(seed, r, attempt)``, or, without ``fresh``, restarts from the weights
    held now. A :class:`TrainingError` names round ``r``; the caller records nothing, so
    the round is trained again next time."""
    labeled = list(pool.labeled) if labeled is None else list(labeled)
    unlabeled = pool.unlabeled if unlabeled is None else unlabeled
    if fresh:
        adapter.reset(derive_seed(cfg.seed, r, "init"))
    start_state = None if fresh else adapter.state_dict()

    def restart(attempt: int) -> int:
        if start_state is None:
            adapter.reset(derive_seed(cfg.seed, r, "init", attempt))
        else:
            adapter.load_state_dict(start_state)
        return derive_seed(cfg.seed, r, "train", attempt)

    log.info("round %d: training on %d images (%d boxes)", r, len(labeled), pool.cost(labeled))
    try:
        return train_round(get_trainer(strategy.trainer), adapter, dataset, labeled, unlabeled, cfg.train,
                           strategy.params, derive_seed(cfg.seed, r, "train"), progress, restart)
    except TrainingError as e:
        raise type(e)(f"round {r}: {e}") from None


class RoundModels:
    """Which round's model ``adapter`` holds, and how it got there.

    ``rows`` are the recorded rounds (:meth:`RunStore.rounds`); round k's model is trained on
    the pool images labeled in rounds 0..k, in the pool's order. ``fingerprint`` (a function
    of those ids), when given, is what a checkpoint must have been trained on to be reused:
    a labeling project whose labels changed since retrains. Every rank makes the same calls."""

    def __init__(self, cfg: ExperimentConfig, strategy: Strategy, adapter: Adapter, run_dir: Path, store: RunStore,
                 progress: bool, fingerprint: Callable[[list[int]], str] | None = None,
                 rows: dict[int, dict[str, Any]] | None = None) -> None:
        self.cfg, self.strategy, self.adapter, self.run_dir = cfg, strategy, adapter, Path(run_dir)
        self.store, self.progress, self.fingerprint = store, progress, fingerprint
        self.rows = store.rounds() if rows is None else rows  # ``rows``: the caller has just read them
        self.sums = store.checksums()
        self.held = -1  # which round's model the adapter holds

    @staticmethod
    def labeled(pool: Pool, k: int) -> list[int]:
        return [i for i in pool.labeled if pool.round_of[i] <= k]

    def hold(self, k: int, dataset: Any, pool: Pool) -> bool:
        """Make the adapter hold round k's model: load its checkpoint, or train the round
        when none is recorded for this labeled set, or it is missing or damaged (e.g.
        truncated by a crash, or replaced). Returns True when the round was trained now."""
        if self.held == k:
            return False
        ckpt = self.rows[k].get("checkpoint")
        fp = None if self.fingerprint is None else self.fingerprint(self.labeled(pool, k))
        if ckpt and (fp is None or self.store.fingerprint(k) == fp) and self._load(k, ckpt):
            self.held = k
            return False
        self.train(k, dataset, pool, fp)
        return True

    def _load(self, k: int, ckpt: str) -> bool:
        sha = self.sums.get(ckpt)

        def load() -> bool:  # rank 0 reads the checkpoint; the other ranks get its weights
            try:
                load_checkpoint(self.adapter, self.run_dir / ckpt, sha)
                return True
            except CheckpointError as e:
                log.warning("%s; re-training round %d", e, k)
                return False

        if not distributed.on_main(load):
            return False
        distributed.sync_state(self.adapter)
        return True

    def train(self, k: int, dataset: Any, pool: Pool, fp: str | None = None) -> None:
        """Train round k's model on rounds 0..k; save and record its checkpoint."""
        t0 = time.perf_counter()
        fresh = self.cfg.loop.reinit or k == 0
        if not fresh:
            self.hold(k - 1, dataset, pool)
        labeled = self.labeled(pool, k)
        unlabeled = [i for i in pool.ids if pool.round_of.get(i, k + 1) > k]
        result = train_model(self.cfg, self.strategy, self.adapter, dataset, pool, k, fresh, self.progress,
                             labeled, unlabeled)
        ckpt = f"checkpoints/round_{k:03d}.pt"
        path = self.run_dir / ckpt

        def save() -> str:
            path.parent.mkdir(exist_ok=True)
            return save_checkpoint(self.adapter, path, k)

        self.sums[ckpt] = distributed.on_main(save)
        self.store.record_model(k, ckpt, self.sums, result.history, {"train": time.perf_counter() - t0},
                                result.health, fp)
        self.rows[k].update(checkpoint=ckpt, metrics=None)
        self.held = k

    def adopt(self, k: int, ckpt: str, sha256: str, history: list[dict], health: dict[str, Any] | None) -> None:
        """Record the checkpoint already at ``run_dir/ckpt`` (trained by another run, e.g. a
        shared round 0: :mod:`activedet.loop.round0`) as round k's model."""
        self.sums[ckpt] = sha256
        self.store.record_model(k, ckpt, self.sums, history, {"train": 0.0}, health, None)
        self.rows[k].update(checkpoint=ckpt, metrics=None)
        self.held = -1  # loaded (and its checksum checked) when first used

    def evaluate(self, k: int, dataset: Any, pool: Pool, test: Any) -> dict[str, Any]:
        """Round k's metrics on ``test`` ({} without one), recorded. Rank 0 evaluates: the
        other ranks may pass None for ``test``."""
        t0 = time.perf_counter()
        self.hold(k, dataset, pool)
        metrics: dict[str, Any] = distributed.on_main(lambda: {} if test is None else self.adapter.evaluate(
            test, batch_size=self.cfg.train.eval_batch_size, progress=self.progress))
        self.store.record_metrics(k, metrics, {"evaluate": time.perf_counter() - t0})
        self.rows[k]["metrics"] = metrics
        return metrics


__all__ = ["RunStore", "RoundModels", "derive_seed", "load_split", "split_spec", "load_checkpoint", "save_checkpoint", "train_model"]
