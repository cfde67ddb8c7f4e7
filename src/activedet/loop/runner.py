"""The active-learning cycle.

reset model → train → evaluate → score → select → label (oracle) → record, for round
0 (the initial random set) and each of ``loop.cycles`` cycles. Every step is recorded in
the ledger before the next starts; ``resume`` continues from the last recorded step and,
because every random draw is derived from ``(seed, round)``, ends with the same selections
as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from activedet import distributed
from activedet.config import ExperimentConfig, LoopConfig, differences, dump_config, with_defaults
from activedet.data.pool import Pool
from activedet.data.verify import verify_images
from activedet.evaluation import headline
from activedet.evaluation.annotation_time import AnnotatorTimes, Edits, edits, scratch
from activedet.errors import ConfigError, DatasetError, ResumeError
from activedet.loop import round0
from activedet.loop.atomic import atomic_write_text, make_dir
from activedet.loop.engine import RoundModels, RunStore, derive_seed, load_checkpoint, load_split, train_model
from activedet.loop.ledger import Ledger, check_out_dir
from activedet.loop.lock import run_lock
from activedet.models.factory import build_adapter
from activedet.strategies.base import Strategy
from activedet.strategies.registry import build_strategy

if TYPE_CHECKING:
    from activedet.models.base import Adapter

log = logging.getLogger(__name__)

Hook = Callable[[dict[str, Any]], None]


@dataclass
class Experiment:
    """Everything a run needs, loaded and validated before anything is written."""

    cfg: ExperimentConfig
    train: Any
    test: Any
    reference: Any | None
    strategy: Strategy
    pool: Pool
    quarantined: dict[int, str] = field(default_factory=dict)  # unreadable pool images left out


def resolve(cfg: ExperimentConfig) -> Strategy:
    """Build ``cfg``'s strategy and fill every default into ``cfg.strategy.params`` (the
    resolved config, as stored in the ledger). Raises :class:`ConfigError` on a bad key."""
    strategy = build_strategy(cfg.strategy.name, cfg.strategy.params)
    cfg.strategy.params = dict(strategy.params)
    return strategy


def prepare(cfg: ExperimentConfig, progress: bool = False) -> Experiment:
    """Load and validate datasets, strategy and budgets, and decode every image (see
    :mod:`activedet.data.verify`); resolve ``cfg`` (strategy defaults, ``model.image_size``)
    in place. Raises before touching the run directory."""
    strategy = resolve(cfg)
    strategy.check_model(cfg.task, cfg.model.arch)
    train = load_split(cfg, "train")
    test = load_split(cfg, "test")
    if test is None:
        log.warning("no dataset.test: the run selects and trains but records no metrics")
    reference = None
    if cfg.dataset.reference is not None:
        if cfg.dataset.reference == cfg.dataset.test:
            raise ConfigError("'dataset.reference' must not be the test split: evaluation would "
                              "reward selecting for the reported metric")
        reference = load_split(cfg, "reference")
    if train.task != cfg.task:
        raise ConfigError(f"dataset '{cfg.dataset.train}' is a {train.task} dataset but task is '{cfg.task}'")
    if test is not None and test.class_names != train.class_names:
        raise ConfigError(f"test split classes {test.class_names} differ from train classes {train.class_names}")
    def verify() -> dict[int, str]:
        # the train split is the pool: `dataset.bad_images` applies; test and reference must be whole
        bad = verify_images(train, "train", cfg.dataset.bad_images, progress)
        for split, ds in (("test", test), ("reference", reference)):
            if ds is not None:
                verify_images(ds, split, "error", progress)
        return bad

    quarantined = distributed.on_main(verify)  # rank 0 decodes the images; every rank gets its verdict
    if cfg.model.image_size is None:
        cfg.model.image_size = auto_image_size(train)
    exp = Experiment(cfg, train, test, reference, strategy, Pool([]))
    _quarantine(exp, quarantined)
    check_budgets(cfg.loop, exp.pool, cfg.annotator)
    return exp


def _quarantine(exp: Experiment, bad: dict[int, str]) -> None:
    """Leave the images ``bad`` out of the train split and the pool."""
    exp.quarantined = dict(sorted(bad.items()))
    if bad:
        exp.train = exp.train.subset([i for i in exp.train.ids if i not in bad])
    exp.pool = Pool.from_dataset(exp.train)
    exp.pool.reference = exp.reference


def auto_image_size(dataset: Any, largest: int = 800) -> int:
    """The median shorter side of ``dataset``'s images, at most ``largest`` (the COCO
    setting): the model input when ``model.image_size`` is left unset."""
    sides = [min(r.width, r.height) for r in (dataset.record(i) for i in dataset.ids)]
    if not sides:
        raise DatasetError(f"{dataset.name}: no images")
    return int(min(largest, max(8, int(np.median(sides)))))


def _amount(value: float, total: int) -> int:
    """An int is a count, as is; a float a fraction of ``total`` (1.0: all of it) rounded
    half up, at least 1."""
    return value if isinstance(value, int) else max(1, int(value * total + 0.5))


def pool_total(loop: LoopConfig, pool: Pool, times: AnnotatorTimes | None = None) -> int:
    """The whole pool in ``loop.unit``: images, boxes, or the seconds to label it all from
    scratch (a look and a drawn box each; ``times``: the config's annotator)."""
    if loop.unit == "images":
        return len(pool.ids)
    if loop.unit == "seconds":
        t = times or AnnotatorTimes()
        return int(sum(scratch(pool.costs[i]).seconds(t) for i in pool.ids))
    return pool.cost(pool.ids)


def budget_targets(loop: LoopConfig, pool: Pool, times: AnnotatorTimes | None = None) -> list[int]:
    """Cumulative labeled amount (in ``loop.unit``) after round 0..cycles."""
    total = pool_total(loop, pool, times)
    first = _amount(loop.initial, total)
    step = _amount(loop.per_cycle, total)
    return [first + c * step for c in range(loop.cycles + 1)]


def check_budgets(loop: LoopConfig, pool: Pool, times: AnnotatorTimes | None = None) -> None:
    total = pool_total(loop, pool, times)
    need = budget_targets(loop, pool, times)[-1]
    if need > total:
        raise ConfigError(
            f"loop asks for {need} {loop.unit} in all (initial {loop.initial}, {loop.cycles} cycles of "
            f"{loop.per_cycle}) but the train split holds {total}")


def fit_budget(ranked: Sequence[int], pool: Pool, unit: str, budget: int,
               costs: "AnnotatorQuote | None" = None) -> list[int]:
    """Take ranked ids in order until ``budget`` is spent (images: a count; boxes: the
    oracle's box cost; seconds: ``costs``, the annotator's). Stops at the first image that
    does not fit: never overspends."""
    if unit == "images":
        return list(ranked[:budget])
    if unit == "seconds" and costs is None:
        raise ConfigError("loop.unit 'seconds' needs the annotator's costs (simulate and compare only)")
    out, spent = [], 0.0
    for k, i in enumerate(ranked):
        if costs is not None and i not in costs:
            costs.fill(ranked[k:k + 16])  # batched inference ahead of the walk
        c = pool.costs[i] if costs is None else costs[i]
        if spent + c > budget:
            break
        out.append(i)
        spent += c
    return out


def expected_images(pool: Pool, budget: float, unit: str = "boxes") -> int:
    """About how many images a budget in ``unit`` buys: at the labeled set's mean cost per
    image (at least 1), so no unlabeled image's cost is looked at."""
    per_image = max(1.0, _labeled_amount(pool, unit) / max(1, len(pool.labeled)))
    return max(1, int(round(budget / per_image)))


def _labeled_amount(pool: Pool, unit: str) -> float:
    if unit == "seconds":
        return pool.labeled_seconds
    return len(pool.labeled) if unit == "images" else pool.labeled_boxes


class AnnotatorQuote(dict):
    """Image id -> the annotator seconds to label it now: the pre-annotations of the model
    ``adapter`` holds (None: none, every box drawn) against the oracle's boxes
    (:mod:`activedet.evaluation.annotation_time`). Filled on first use, so only for the
    images :func:`fit_budget` walks and the ones chosen; ``edits`` keeps each one's actions."""

    def __init__(self, dataset: Any, times: AnnotatorTimes, adapter: Adapter | None = None) -> None:
        super().__init__()
        self.dataset, self.times, self.adapter = dataset, times, adapter
        self.edits: dict[int, Edits] = {}

    def __missing__(self, image_id: int) -> float:
        self.fill([image_id])
        return self[image_id]

    def fill(self, ids: Sequence[int]) -> None:
        todo = [i for i in ids if i not in self]
        if self.adapter is None:
            found = {i: scratch(self.dataset.num_boxes(i)) for i in todo}
        else:
            found = {}
            for inf in self.adapter.infer(self.dataset, todo, 8, keep_anchors=False):
                rec = self.dataset.record(inf.image_id)
                found[inf.image_id] = edits(inf.boxes.numpy(), inf.labels.numpy(), inf.scores.numpy(),
                                            rec.boxes, rec.labels, self.times)
        for i, e in found.items():
            self.edits[i] = e
            self[i] = e.seconds(self.times)

    def rows(self, ids: Sequence[int], boxes: dict[int, int]) -> list[tuple[int, int, float, dict[str, int]]]:
        """(image id, boxes, seconds, edits) of ``ids``, for the ledger."""
        self.fill(ids)
        return [(i, boxes[i], self[i], dataclasses.asdict(self.edits[i])) for i in ids]


def added_strategy_defaults(name: str, recorded: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded strategy keys, with every key its strategy has gained since (a later
    release's setting, e.g. MIAL's ``discrepancy_grad_clip``) at its default: resuming takes
    the default, and only a value set to something else is a difference."""
    defaults = json.loads(json.dumps(build_strategy(name, {}).params))
    return {**{k: v for k, v in defaults.items() if k not in recorded}, **recorded}


def open_ledger(run_dir: Path, cfg: ExperimentConfig, exp: Experiment, resume: bool) -> Ledger:
    """Create the ledger, or reopen it to resume: the resolved configs (every default filled
    in) must agree, or :class:`ResumeError` names the keys that differ."""
    resolved = json.loads(json.dumps(cfg.to_dict()))
    if (run_dir / Ledger.FILENAME).is_file():
        if not resume:
            raise ResumeError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        ledger = Ledger(run_dir)
        meta = ledger.meta()
        old = with_defaults(meta.get("config") or {})  # keys added since it was written: their defaults
        if not meta.get("config_resolved"):  # older ledgers stored strategy keys as written
            resolved["strategy"] = {k: v for k, v in resolved["strategy"].items() if k in old.get("strategy", {})}
        elif old.get("strategy", {}).get("name") == cfg.strategy.name:
            old["strategy"] = added_strategy_defaults(cfg.strategy.name, old["strategy"])
        diff = differences(old, resolved)
        if diff:
            ledger.close()
            shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
            raise ResumeError(f"{run_dir} was made with a different config ({shown}); "
                              "resume needs the same config")
        recorded = {int(k): v for k, v in (meta.get("quarantined") or {}).items()}
        new = sorted(set(exp.quarantined) - set(recorded))
        if new:
            ledger.close()
            raise ResumeError(f"train image id {new[0]} became unreadable after {run_dir} started "
                              f"({exp.quarantined[new[0]]}); restore it to resume the run")
        if recorded != exp.quarantined:  # repaired since: the resumed run keeps the pool it started with
            _quarantine(exp, recorded)
        return ledger
    ledger = Ledger(run_dir, create=True)
    ledger.set_meta(config_yaml=dump_config(cfg), config=resolved, config_resolved=True,
                    strategy=cfg.strategy.name, task=cfg.task,
                    seed=cfg.seed, unit=cfg.loop.unit, pool_size=len(exp.pool.ids),
                    pool_boxes=exp.pool.cost(exp.pool.ids), complete=False,
                    train_source=exp.train.source or exp.train.name,
                    quarantined={str(i): why for i, why in exp.quarantined.items()},
                    world_size=distributed.env_world(), threads=torch.get_num_threads())  # what answers depend on
    return ledger


def run(cfg: ExperimentConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
        hooks: Sequence[Hook] = (), round0_cache: str | Path | None = None) -> dict[str, Any]:
    """Replay the protocol of ``cfg`` with oracle labels; returns the final status.
    ``round0_cache``: a folder where round 0's model is shared with other runs of the same
    seed and data (:mod:`activedet.loop.round0`; one process only, ignored under torchrun).

    Under torchrun (:mod:`activedet.distributed`) every process runs this cycle; rank 0
    alone holds the run lock and writes the ledger, checkpoints and reports
    (:class:`~activedet.loop.engine.RunStore`), the others follow it and return ``{}``."""
    run_dir = Path(run_dir)
    main = distributed.is_main()
    if main:
        check_out_dir(run_dir, run=True)
    exp = prepare(cfg, progress and main)  # bad input and undecodable images fail here, before the ledger exists
    exp.strategy.progress = progress and main
    adapter = build_adapter(cfg, exp.train.num_classes, exp.strategy)  # fails on missing weights
    with contextlib.ExitStack() as stack:
        def start() -> None:  # rank 0: lock, open or create the ledger, write the config
            stack.enter_context(run_lock(run_dir, "simulate"))  # one writer per run directory
            ledger = open_ledger(run_dir, cfg, exp, resume)
            stack.callback(ledger.close)
            store.ledger = ledger
            make_dir(run_dir / "checkpoints")
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg), "config")

        store = RunStore.follower()  # rank 0's gets the ledger in start()
        distributed.on_main(start)  # its error, if any, stops every rank
        cache = None if round0_cache is None or distributed.env_world() > 1 else Path(round0_cache)
        _cycle(exp, RoundModels(cfg, exp.strategy, adapter, run_dir, store, progress and main), hooks if main else (),
               cache)
        store.set_meta(complete=True)
        status = store.status()
        return status if main else {}


def _cycle(exp: Experiment, models: RoundModels, hooks: Sequence[Hook], round0_cache: Path | None = None) -> None:
    """Rounds 0..cycles: select (replayed from the ledger when recorded), train, evaluate."""
    cfg, pool, store = exp.cfg, exp.pool, models.store
    targets = budget_targets(cfg.loop, pool, cfg.annotator)
    done = models.rows
    for r in sorted(done):  # replay recorded selections into the pool
        pool.add(done[r]["selected"], r)
    pool.seconds.update(store.image_seconds())
    for r in range(cfg.loop.cycles + 1):
        if r not in done:  # ---- select round r
            if r > 0:
                previous_model(exp, models, r)
            done[r] = _select_round(exp, models.adapter, store, r, targets[r])
        if done[r].get("checkpoint") is None:  # ---- train on rounds 0..r
            if r > 0 or round0_cache is None or not _shared_round0(exp, models, round0_cache):
                models.train(r, exp.train, pool)
        if done[r].get("metrics") is None:  # ---- evaluate ({} without a test split)
            metrics = models.evaluate(r, exp.train, pool, exp.test)
            log.info("round %d: %s", r, _headline(metrics))
            status = store.status()
            for hook in hooks:
                hook(status)


def _shared_round0(exp: Experiment, models: RoundModels, cache: Path) -> bool:
    """Round 0's model from ``cache`` when another run of this seed trained it; else train it
    here and keep it there. False for a strategy that trains its own way (the caller trains)."""
    key = round0.round0_key(exp.cfg, exp.strategy.model_variant, exp.strategy.trainer, models.labeled(exp.pool, 0))
    if key is None:
        return False
    ckpt = "checkpoints/round_000.pt"
    with round0.locked(cache, key) as folder:
        got = round0.fetch(folder, models.run_dir / ckpt)
        if got is not None:
            models.adopt(0, ckpt, got["sha256"], got["history"], got["health"])
            models.store.set_meta(round0_from=got["source"])
            log.info("round 0: the model %s trained (same seed, data and training), not trained again", got["source"])
            return True
        models.train(0, exp.train, exp.pool)
        row = models.store.rounds()[0]
        round0.keep(folder, models.run_dir / ckpt, models.sums[ckpt], row["train_log"], row["health"],
                    str(models.run_dir))
    return True


def previous_model(exp: Experiment, models: RoundModels, r: int, evaluate: bool = False,
                   predicted_costs_at: float | None = None) -> tuple[bool, dict[str, Any] | None]:
    """Before selecting round ``r`` >= 1: make ``models`` hold the model of rounds 0..r-1
    (loaded, or trained when none fits); returns (trained now, its recorded metrics).

    ``evaluate``: evaluate it on ``exp.test`` when it was trained now or never evaluated
    (``select``; ``simulate`` evaluates right after training). ``predicted_costs_at``: a
    detector's pool costs become its predicted box counts at this score (``select --unit
    boxes``: no oracle knows them)."""
    trained = models.hold(r - 1, exp.train, exp.pool)
    metrics = models.rows[r - 1].get("metrics")
    if evaluate and (trained or metrics is None):
        metrics = models.evaluate(r - 1, exp.train, exp.pool, exp.test)
    if predicted_costs_at is not None and exp.cfg.task == "detection":
        exp.pool.costs = PredictedCosts(exp.pool.costs, models.adapter, exp.train, predicted_costs_at)
    return trained, metrics


class PredictedCosts(dict):
    """Box costs: known for labeled images; for pool images, the model's detections scoring
    at least ``thresh``, at least 1 (an image the model finds nothing in still costs a look),
    computed on first use, so only for the images ``fit_budget`` walks."""

    def __init__(self, known: dict[int, int], adapter: Adapter, dataset: Any, thresh: float) -> None:
        super().__init__(known)
        self.adapter, self.dataset, self.thresh = adapter, dataset, thresh

    def __missing__(self, image_id: int) -> int:
        inf = next(iter(self.adapter.infer(self.dataset, [image_id], 1, keep_anchors=False)))
        value = max(1, int((inf.scores >= self.thresh).sum()))
        self[image_id] = value
        return value


def select_batch(strategy: Strategy, adapter: Adapter, pool: Pool, r: int, budget: int, unit: str,
                 seed: int, initial: str = "random", device: str = "cpu",
                 costs: AnnotatorQuote | None = None) -> tuple[list[int], dict[int, float] | None, dict[str, float],
                                                               dict[str, Any]]:
    """Round ``r``'s selection of ``budget`` ``unit``s from ``pool.unlabeled``: round 0 is
    drawn by ``initial`` (``loop.initial_strategy``: a seeded random draw, or a label-free
    ranking of ImageNet features, :mod:`activedet.strategies.cold_start`, on ``device``),
    later rounds are ranked by ``strategy`` with the model in ``adapter``. Shared by
    ``simulate`` and ``select``. Returns (chosen ids, per-image scores or None, seconds per
    stage, the strategy's ``Selection.info``); ``pool`` is not modified. ``costs``: the
    annotator's, for ``unit`` seconds."""
    rng = np.random.default_rng(derive_seed(seed, r, "select"))
    t0 = time.perf_counter()
    scores, info = None, {}
    if r == 0 and initial == "random":
        ranked = [pool.unlabeled[i] for i in rng.permutation(len(pool.unlabeled))]
    elif r == 0:
        from activedet.models.detection_adapter import resolve_device
        from activedet.strategies import cold_start

        take = budget if unit == "images" else expected_images(pool, budget, unit)
        ranked = distributed.on_main(lambda: cold_start.rank(initial, pool.dataset, pool.unlabeled, take, rng,
                                                             resolve_device(device)))
    else:
        n = budget if unit == "images" else len(pool.unlabeled)
        take = budget if unit == "images" else expected_images(pool, budget, unit)
        chosen_by = strategy.select(adapter, pool, n, rng, batch=take)
        ranked, scores, info = chosen_by.ids, chosen_by.scores, chosen_by.info
    t1 = time.perf_counter()
    chosen = distributed.on_main(lambda: fit_budget(ranked, pool, unit, budget, costs))  # rank 0's choice for all
    return chosen, scores, {"score": t1 - t0, "select": time.perf_counter() - t1}, info


def _select_round(exp: Experiment, adapter: Adapter, store: RunStore, r: int, target: int) -> dict[str, Any]:
    cfg, pool = exp.cfg, exp.pool
    unit = cfg.loop.unit
    budget = target - _labeled_amount(pool, unit)
    # what annotators would do: round 0 from scratch, later rounds on the previous model's boxes
    quote = AnnotatorQuote(exp.train, cfg.annotator, adapter if r > 0 else None) if cfg.task == "detection" else None
    chosen, scores, seconds, info = select_batch(exp.strategy, adapter, pool, r, budget, unit, cfg.seed,
                                                 cfg.loop.initial_strategy, cfg.device,
                                                 quote if unit == "seconds" else None)
    costs = [] if quote is None else distributed.on_main(lambda: quote.rows(chosen, pool.costs))
    pool.add(chosen, r)
    pool.seconds.update({i: sec for i, _, sec, _ in costs})
    store.add_round(r, chosen, len(pool.labeled), pool.labeled_boxes, seconds, scores, costs, info)
    log.info("round %d: selected %d images (%d boxes)", r, len(chosen), pool.cost(chosen))
    return {"round": r, "selected": chosen, "checkpoint": None, "metrics": None}


def _headline(metrics: dict[str, Any]) -> str:
    return headline(metrics, ("AP", "AP50", "top1"), ", ") or "no metrics (no dataset.test)"


__all__ = ["AnnotatorQuote", "run", "previous_model", "PredictedCosts", "prepare", "resolve", "derive_seed", "fit_budget", "budget_targets", "load_checkpoint",
           "train_model", "select_batch"]
