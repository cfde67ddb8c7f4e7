"""A labeling project: ``select`` → (people label) → ``ingest`` → ``select`` ...

The project directory is a run directory: ``ledger.sqlite`` (the same ledger as
``simulate``, plus the tables of :mod:`activedet.labeling.store`), ``checkpoints/`` and
``rounds/NNN/`` with each round's batch files.

Rounds follow ``simulate``: round 0 is the labeled set of ``dataset.train`` (or, when it
holds no image, a seeded random batch from the pool); round r >= 1 is selected with the
model trained on rounds 0..r-1, with the same seeds, the same training order and the same
selection code (:func:`activedet.loop.runner.train_model`, :func:`select_batch`), so a
simulated round and a real one select the same images.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from activedet import distributed
from activedet.config import ExperimentConfig, StrategyConfig, dump_config, image_root
from activedet.data.base import ImageRecord, category_ids
from activedet.data.verify import verify_files, verify_images
from activedet.data.pool import Pool
from activedet.errors import ConfigError, DatasetError, LabelingError, PoolExhaustedError
from activedet.labeling import store
from activedet.labeling.batch import BatchImage, BatchSpec, default_local_root, predicted_boxes, write_round
from activedet.labeling.dataset import file_order, project_dataset
from activedet.labeling.sources import PoolListing, display_name, duplicate_message, list_unlabeled, under
from activedet.loop.ledger import Ledger
from activedet.loop.lock import run_lock
from activedet.loop.engine import RoundModels, RunStore, load_split
from activedet.loop.runner import Experiment, auto_image_size, previous_model, select_batch
from activedet.models.factory import build_adapter
from activedet.strategies.registry import build_strategy

if TYPE_CHECKING:
    from activedet.models.base import Adapter


@dataclass
class SelectOptions:
    budget: int
    strategy: str | None = None  # overrides the config's strategy (its settings are then defaults)
    unit: str = "images"  # images | boxes (boxes: the model's predicted box count is the cost)
    replace: bool = False
    image_url_prefix: str | None = None
    local_files_root: str | None = None
    prelabel_score: float = 0.5
    predictions: str | None = None  # rank from this COCO results file instead of training (labeling.predictions)
    predictions_format: str = "auto"  # auto | ultralytics | coco | detectron2 | mmdetection
    score_as_probs: bool = False  # a file without 'probs': score entropy/margin from the scores alone
    embeddings: str | None = None  # (N, D) .npy of per-image features for --predictions (core-set, batch modes)
    embedding_ids: str | None = None  # its rows' images, one a line


@dataclass
class SelectResult:
    round: int
    out_dir: Path
    images: list[BatchImage]
    files: list[Path]
    trained: bool  # False when the round's checkpoint was reused
    metrics: dict[str, Any] | None
    dropped: int = 0  # unlabeled images of a replaced batch returned to the pool
    pool_left: int = 0
    quarantined: dict[int, str] = field(default_factory=dict)  # unreadable pool images left out (bad_images: skip)


# ============================================================================ opening
@dataclass
class _Project:
    ledger: Ledger
    meta: dict[str, Any]
    base: Any  # the labeled set of dataset.train (round 0)
    base_order: list[int]
    listing: PoolListing
    pool_ids: dict[int, str]  # pool image id -> path (listed now, or ingested earlier)
    labels: list[store.LabelRow]


def _load_base(cfg: ExperimentConfig) -> Any:
    if cfg.dataset.train is None:
        raise ConfigError("config key 'dataset.train' is required: the labeled set (to start from no "
                          "labels, a COCO file with your categories and an empty 'images' list)")
    base = load_split(cfg, "train")
    if base.task != cfg.task:
        raise ConfigError(f"dataset '{cfg.dataset.train}' is a {base.task} dataset but task is '{cfg.task}'")
    return base


def _absolute(spec: str | None) -> str | None:
    """A dataset spec with its path made absolute (``builtin:`` and ``voc:`` specs as given),
    so a project can be used from any working directory."""
    if spec is None or spec.startswith("builtin:") or spec[:4].lower() == "voc:":
        return spec
    return os.path.realpath(spec)


def _project_meta(cfg: ExperimentConfig, base: Any, listing: PoolListing, uid: str) -> dict[str, Any]:
    return {"uid": uid, "train": _absolute(cfg.dataset.train), "images": _absolute(image_root(cfg.dataset, "train")),
            "options": cfg.dataset.options, "unlabeled": _absolute(cfg.dataset.unlabeled), "task": cfg.task,
            "class_names": list(base.class_names), "root": listing.root,
            "base_images": len(base), "base_boxes": sum(base.num_boxes(i) for i in base.ids)}


def _open(cfg: ExperimentConfig, project_dir: Path) -> _Project:
    if cfg.dataset.unlabeled is None:
        raise ConfigError("config key 'dataset.unlabeled' is required by select: the images to label "
                          "(an image folder, a COCO json without annotations, or a text file of paths)")
    base = _load_base(cfg)
    listing = list_unlabeled(cfg.dataset.unlabeled)
    if listing.duplicates:  # before anything is recorded or trained
        raise DatasetError(duplicate_message(listing))
    existed = (project_dir / Ledger.FILENAME).is_file()
    ledger = Ledger(project_dir, create=True)
    try:
        store.ensure_schema(ledger.conn)
        meta = ledger.meta()
        if existed and "project" not in meta:
            raise LabelingError(f"{project_dir} holds a simulate run, not a labeling project; choose another --project")
        want = _project_meta(cfg, base, listing, meta.get("project", {}).get("uid", uuid.uuid4().hex[:12]))
        if "project" in meta:
            old = meta["project"]
            for key in ("train", "unlabeled", "task", "class_names"):
                if old.get(key) != want[key]:
                    raise LabelingError(f"project {project_dir} was made with {key} = {old.get(key)!r}; the "
                                        f"config says {want[key]!r} (use the project's config, or a new --project)")
        base_order = file_order(base)
        labeled_paths = {os.path.realpath(r.path) for r in (base.record(i) for i in base_order) if r.path is not None}
        known = store.image_ids(ledger.conn)
        taken = set(base_order) | set(known.values())
        next_id = max(taken | set(listing.ids or []) | {0}) + 1
        new: dict[str, int] = {}
        for k, path in enumerate(listing.paths):
            real = listing.real_path(path)  # a link is known by its path, the labeled set by real files
            if real in labeled_paths or path in known or real in known or path in new:
                continue
            want_id = listing.ids[k] if listing.ids is not None else None
            if want_id is not None and want_id not in taken:
                new[path] = want_id
            else:
                while next_id in taken:
                    next_id += 1
                new[path] = next_id
            taken.add(new[path])
        labels = store.labels(ledger.conn)
        with ledger.conn:
            store.add_images(ledger.conn, new)
            ledger.put_meta(project=want)
        known.update(new)
        listed = set(listing.paths) | set(listing.real.values())  # projects made before links kept their path
        pool_ids = {i: p for p, i in known.items() if p in listed and p not in labeled_paths}
        for row in labels:  # ingested images stay in the project even if gone from the listing
            pool_ids[row.image_id] = row.path
        return _Project(ledger, ledger.meta(), base, base_order, listing, pool_ids, labels)
    except BaseException:
        ledger.close()
        raise


def _ingested_record(row: store.LabelRow, task: str, root: str) -> ImageRecord:
    if task == "classification":
        return ImageRecord(id=row.image_id, file_name=display_name(row.path, root), width=row.width,
                           height=row.height, path=Path(row.path), label=int(row.labels[0]))
    return ImageRecord(id=row.image_id, file_name=display_name(row.path, root), width=row.width,
                       height=row.height, boxes=np.asarray(row.boxes, np.float32).reshape(-1, 4),
                       labels=np.asarray(row.labels, np.int64), path=Path(row.path))


class ProjectStore(RunStore):
    """The run store of a labeling project: it also records what each round's checkpoint
    was trained on (:func:`_fingerprint`), so a correction to a label retrains."""

    def fingerprint(self, round_: int) -> str | None:
        return self.call(lambda lg: store.fingerprint(lg.conn, round_))

    def _put_fingerprint(self, ledger: Ledger, round_: int, value: str) -> None:
        store.set_fingerprint(ledger.conn, round_, value)


def _fingerprint(cfg: ExperimentConfig, dataset: Any, labeled: list[int]) -> str:
    """What a checkpoint depends on: the resolved config and every labeled image's labels."""
    h = hashlib.sha256(dump_config(cfg).encode())
    for i in labeled:
        r = dataset.record(i)
        h.update(json.dumps([i, r.file_name, r.label, np.asarray(r.boxes).round(3).tolist(),
                             np.asarray(r.labels).tolist()]).encode())
    return h.hexdigest()


# ============================================================================ select
def select(cfg: ExperimentConfig, project_dir: str | Path, opts: SelectOptions,
           progress: bool = True) -> SelectResult:
    """Train on the labeled set (or reuse the checkpoint), rank the pool, write the batch.

    Under torchrun (:mod:`activedet.distributed`) every process runs this: rank 0 alone
    holds the project lock, reads and writes the project (ledger, checkpoints, batch
    files) and evaluates; training and scoring are distributed as in ``simulate``
    (:func:`activedet.loop.runner.train_model` under DDP, sharded :func:`select_batch`); every
    rank returns rank 0's result, and an error on rank 0 is raised on every rank."""
    project_dir = Path(project_dir)
    if isinstance(opts.budget, bool) or not isinstance(opts.budget, int) or opts.budget < 1:
        raise ConfigError(f"--budget must be a positive integer, got {opts.budget!r}")
    if opts.unit not in ("images", "boxes"):
        raise ConfigError(f"--unit {opts.unit!r} is not one of images, boxes")
    if opts.image_url_prefix is not None and opts.local_files_root is not None:
        raise ConfigError("pass either --image-url-prefix or --local-files-root, not both")
    if not 0 <= opts.prelabel_score <= 1:
        raise ConfigError(f"--prelabel-score {opts.prelabel_score!r} must be in [0, 1]")
    if opts.strategy is not None and opts.strategy != cfg.strategy.name:
        cfg.strategy = StrategyConfig(name=opts.strategy, params={})
    strategy = build_strategy(cfg.strategy.name, cfg.strategy.params)
    strategy.check_model(cfg.task, cfg.model.arch)
    if opts.predictions is not None:
        _check_predictions_options(cfg, opts, strategy)
    main = distributed.is_main()
    strategy.progress = progress and main
    with contextlib.ExitStack() as stack:
        held: list[Any] = []

        def start() -> dict[str, Any]:  # rank 0: lock, open the project, read what every rank needs
            stack.enter_context(run_lock(project_dir, "select"))  # one writer per project directory
            test = load_split(cfg, "test") if cfg.dataset.test is not None else None
            if test is not None:  # a round's metrics need every test image, as in simulate
                verify_images(test, "test", "error", progress)
            proj = _open(cfg, project_dir)
            stack.callback(proj.ledger.close)
            held[:] = [proj, test]
            if opts.image_url_prefix is None:  # Label Studio serves files from storage folders below its root
                given = opts.local_files_root is not None
                local = os.path.realpath(opts.local_files_root) if given else default_local_root(proj.listing.root)
                outside = next((p for p in proj.pool_ids.values() if not under(os.path.dirname(p), local)), None)
                if outside is not None:
                    raise ConfigError(
                        f"{'--local-files-root ' + str(opts.local_files_root) if given else 'the default local-files root ' + local}"
                        f": pool image {outside} is not in a folder below it (Label Studio serves local files only "
                        f"from storage folders strictly below its document root); pass --local-files-root with a "
                        f"parent of the pool folder, or --image-url-prefix")
            if test is not None and test.class_names != proj.base.class_names:
                raise ConfigError(f"test split classes {test.class_names} differ from the labeled set's "
                                  f"{proj.base.class_names}")
            plan = _plan(proj, opts, project_dir, test is not None)
            plan["quarantined"] = _verify_pool(cfg, proj, progress)
            return plan

        plan = distributed.on_main(start)  # its error, if any, stops every rank
        proj, test = held if main else (None, None)
        base = proj.base if proj is not None else _load_base(cfg)  # the other ranks read dataset.train themselves
        return _select(cfg, project_dir, opts, strategy, test, proj, base, plan, progress and main)


def _check_predictions_options(cfg: ExperimentConfig, opts: SelectOptions, strategy: Any) -> None:
    """What ``--predictions`` can do, checked before the project is opened."""
    from activedet.labeling.predictions import FORMATS, check_strategy_name

    if cfg.task != "detection":
        raise ConfigError(f"--predictions reads a detector's results; the config's task is '{cfg.task}'")
    if opts.predictions_format not in FORMATS:
        raise ConfigError(f"--predictions-format {opts.predictions_format!r} is not one of {', '.join(FORMATS)}")
    if not Path(opts.predictions).is_file():
        raise ConfigError(f"--predictions {opts.predictions}: no such file")
    if (opts.embeddings is None) != (opts.embedding_ids is None):
        raise ConfigError("--embeddings E.npy and --embedding-ids IDS go together (IDS: its rows' images, one a line)")
    check_strategy_name(strategy.name, opts.embeddings is not None)


def _predictions_model(cfg: ExperimentConfig, opts: SelectOptions, strategy: Any, base: Any, dataset: Any,
                       pool: Pool, plan: dict[str, Any]) -> Any:
    """The file's detections as the adapter the strategy scores with (no training); with
    ``--unit boxes`` the pool's costs are its detections scoring >= ``--prelabel-score``."""
    from activedet.labeling.predictions import PredictionsModel, check_strategy, read_embeddings, read_results
    from activedet.loop.runner import PredictedCosts

    known = dict(plan["pool_ids"])  # detections of labeled images are read and left unused
    known.update({i: str(base.record(i).path) for i in plan["base_order"] if base.record(i).path is not None})
    results = read_results(opts.predictions, opts.predictions_format, known, plan["root"], plan["coco_ids"])
    check_strategy(strategy, results, opts.score_as_probs, opts.embeddings is not None)
    embeddings = None if opts.embeddings is None else read_embeddings(
        opts.embeddings, opts.embedding_ids, results, known, plan["root"], plan["coco_ids"])
    model = PredictionsModel(results, category_ids(base), embeddings)
    if opts.unit == "boxes":
        pool.costs = PredictedCosts(pool.costs, model, dataset, opts.prelabel_score)
    return model


def _verify_pool(cfg: ExperimentConfig, proj: _Project, progress: bool) -> dict[int, str]:
    """Decode every image before anything trains (cached by file size and time, so a
    weekly pool is decoded once): the labeled set must be whole; unreadable pool images stop
    the command, naming them, or under ``dataset.bad_images: skip`` are left out of the pool
    (returned as ``{image id: reason}``)."""
    verify_images(proj.base, "train", "error", progress)
    labeled = {row.image_id: Path(row.path) for row in proj.labels}
    verify_files(labeled, "labeled", "error", progress)
    pool = {i: Path(p) for i, p in proj.pool_ids.items() if i not in labeled}
    try:
        return verify_files(pool, "unlabeled", cfg.dataset.bad_images, progress)
    except DatasetError as e:
        raise DatasetError(f"{e}; remove unreadable images from the pool, or set dataset.bad_images: skip to "
                           f"leave them out") from None


def _plan(proj: _Project, opts: SelectOptions, project_dir: Path, has_test: bool) -> dict[str, Any]:
    """What rank 0 reads from the project for every rank: the round to select, the pending
    batch to drop, the ingested labels and the pool's paths (picklable)."""
    rounds = {row["round"]: row for row in proj.ledger.rounds(scores=False)}
    pending = (proj.meta.get("labeling") or {}).get("pending_round")
    drop_round: int | None = None
    dropped = 0
    if pending is not None:
        batch_ids = [b.image_id for b in store.batch(proj.ledger.conn, pending)]
        done = {row.image_id for row in proj.labels if row.round == pending}
        if not opts.replace:
            bound = proj.meta.get("label_studio")
            how = f"--label-studio {bound['url']}" if bound else "EXPORT.json"
            raise LabelingError(
                f"round {pending} is pending ({len(done)} of {len(batch_ids)} images labeled): ingest the "
                f"labels with `activedet ingest --project {project_dir} {how}`, or pass --replace to "
                f"drop its {len(batch_ids) - len(done)} unlabeled images and select again")
        dropped = len(batch_ids) - len(done)
        r = pending if not done else pending + 1
        drop_round = pending if not done else None
    else:
        r = max(rounds) + 1 if rounds else (1 if proj.base_order else 0)
    return {"r": r, "drop_round": drop_round, "dropped": dropped, "rounds": rounds, "labels": proj.labels,
            "pool_ids": proj.pool_ids, "root": proj.listing.root, "base_order": proj.base_order,
            "uid": proj.meta["project"]["uid"], "has_test": has_test,
            "coco_ids": dict(zip(proj.listing.paths, proj.listing.ids)) if proj.listing.ids else None}


def _labeled_pool(cfg: ExperimentConfig, base: Any, plan: dict[str, Any]) -> tuple[Any, Pool]:
    """The project's dataset (labeled set + pool) and its pool with every labeled image
    added in its round: round 0 in the labeled file's order, then each round's ingested
    images in batch rank order (the training order ``simulate`` uses)."""
    task, root, labels = cfg.task, plan["root"], plan["labels"]
    extra = {row.image_id: _ingested_record(row, task, root) for row in labels}
    bad = plan["quarantined"]
    pool_paths = {i: p for i, p in plan["pool_ids"].items() if i not in extra and i not in bad}
    dataset = project_dataset(task, base.class_names, base, extra, pool_paths, root)
    costs = {i: base.num_boxes(i) for i in plan["base_order"]}
    costs.update({i: (1 if task == "classification" else len(rec.labels)) for i, rec in extra.items()})
    pool = Pool(list(plan["base_order"]) + list(extra) + list(pool_paths), costs, dataset)
    pool.add(plan["base_order"], 0)
    for rd in sorted({row.round for row in labels}):
        pool.add([row.image_id for row in labels if row.round == rd], rd)
    return dataset, pool


def _round_models(cfg: ExperimentConfig, strategy: Any, dataset: Any, pool: Pool, project_dir: Path,
                  ledger: Ledger | None, progress: bool, rows: dict[int, dict[str, Any]] | None = None) -> RoundModels:
    """The round engine over a project (``ledger`` on rank 0, None on the others): a fresh
    adapter (``model.image_size`` resolved from the labeled images when unset), checkpoints
    reused only for the same labels (:func:`_fingerprint`)."""
    if cfg.model.image_size is None:
        cfg.model.image_size = auto_image_size(dataset.subset(pool.labeled))
    adapter = build_adapter(cfg, len(dataset.class_names), strategy)
    return RoundModels(cfg, strategy, adapter, project_dir, ProjectStore(ledger), progress,
                       fingerprint=lambda ids: _fingerprint(cfg, dataset, ids), rows=rows)


@dataclass
class CurrentModel:
    adapter: Adapter
    round: int  # trained on the images labeled in rounds 0..round
    fingerprint: str
    trained: bool  # False: the recorded checkpoint was reused


def current_model(cfg: ExperimentConfig, project_dir: str | Path, progress: bool = False) -> CurrentModel:
    """The model on every image labeled now, through the round engine as ``select`` makes
    it (reused when the round's checkpoint was trained on the same labels, else trained,
    saved and recorded): what ``activedet serve`` predicts with. One process; holds the
    project's lock while it trains."""
    project_dir = Path(project_dir)
    strategy = build_strategy(cfg.strategy.name, cfg.strategy.params)
    with run_lock(project_dir, "serve (training)"):
        proj = _open(cfg, project_dir)
        try:
            plan = {"labels": proj.labels, "pool_ids": proj.pool_ids, "root": proj.listing.root,
                    "base_order": proj.base_order, "quarantined": {}}
            dataset, pool = _labeled_pool(cfg, proj.base, plan)
            rows = {row["round"] for row in proj.ledger.rounds(scores=False)}
            if not pool.labeled or not rows:
                raise LabelingError(f"nothing of {project_dir} is labeled yet: run `activedet select` and ingest "
                                    f"the first batch, then train")
            k = max(pool.round_of[i] for i in pool.labeled)
            models = _round_models(cfg, strategy, dataset, pool, project_dir, proj.ledger, progress)
            trained = models.hold(k, dataset, pool)
            fp = models.store.fingerprint(k)  # recorded by hold: what round k was trained on
            assert fp is not None
            return CurrentModel(models.adapter, k, fp, trained)
        finally:
            proj.ledger.close()


def _select(cfg: ExperimentConfig, project_dir: Path, opts: SelectOptions, strategy: Any, test: Any,
            proj: _Project | None, base: Any, plan: dict[str, Any], progress: bool) -> SelectResult:
    """The round of ``plan`` on every rank; ``proj`` (the open project) and ``test`` on rank 0
    only: every read or write of the project happens in :func:`distributed.on_main`."""
    r, base_order = plan["r"], plan["base_order"]
    dataset, pool = _labeled_pool(cfg, base, plan)  # the labeled set (rounds 0..r-1) and the pool
    exp = Experiment(cfg, dataset, test, None, strategy, pool, plan["quarantined"])  # what simulate's engine gets
    if base_order and not plan["rounds"]:  # round 0: the labeled set the project starts from
        plan["rounds"] = distributed.on_main(lambda: _record_first_round(proj, pool, base_order))
    if not pool.unlabeled:
        raise PoolExhaustedError(f"every image of the pool {cfg.dataset.unlabeled} is labeled")
    if opts.unit == "images" and opts.budget > len(pool.unlabeled):  # before anything trains
        raise PoolExhaustedError(f"--budget {opts.budget} but only {len(pool.unlabeled)} pool images are unlabeled")
    if opts.predictions is not None:  # the team's own detector: its results file, nothing trains
        adapter, trained, metrics = _predictions_model(cfg, opts, strategy, base, dataset, pool, plan), False, None
    else:
        adapter, trained, metrics = _previous_model(exp, project_dir, opts, proj, plan, progress)
    unit = "images" if cfg.task == "classification" else opts.unit

    # the simulate code path: sharded scoring, rank 0's choice for all (a predictions file
    # ranks round 0 too: select_batch's round 0 is a draw without a model)
    ranked_round = max(r, 1) if opts.predictions is not None else r
    chosen, scores, seconds_sel, info = select_batch(strategy, adapter, pool, ranked_round, opts.budget, unit,
                                                     cfg.seed, cfg.loop.initial_strategy, cfg.device)
    if not chosen:
        raise LabelingError(f"--budget {opts.budget} {unit} fits no image (the top-ranked image alone costs more)")
    return distributed.on_main(lambda: _write_batch(
        cfg, project_dir, opts, proj, base, plan, dataset, pool, adapter, (chosen, scores, seconds_sel, info), unit,
        trained, metrics))


def _record_first_round(proj: _Project | None, pool: Pool, base_order: list[int]) -> dict[int, Any]:
    """Rank 0: record round 0, the labeled set the project starts from; the ledger's rounds."""
    assert proj is not None
    with proj.ledger.conn:
        proj.ledger.insert_round(0, base_order, len(base_order), sum(pool.costs[i] for i in base_order), {}, None)
    return {row["round"]: row for row in proj.ledger.rounds(scores=False)}


def _previous_model(exp: Experiment, project_dir: Path, opts: SelectOptions, proj: _Project | None,
                    plan: dict[str, Any], progress: bool) -> tuple[Any, bool, dict[str, Any] | None]:
    """(adapter, trained, metrics) of the model trained on rounds 0..r-1, through the round
    engine as ``simulate`` gets it (:func:`activedet.loop.runner.previous_model`); (None,
    False, None) for round 0, a random draw."""
    if plan["r"] == 0:
        if opts.unit == "boxes":
            raise ConfigError("--unit boxes needs a model to predict box counts; the first batch of a project "
                              "without labels is drawn at random: use --unit images")
        return None, False, None
    if not exp.pool.labeled:
        raise LabelingError("the labeled set is empty: ingest labels for the first batch before selecting again")
    models = _round_models(exp.cfg, exp.strategy, exp.train, exp.pool, project_dir, proj.ledger if proj else None,
                           progress, plan["rounds"])
    trained, metrics = previous_model(exp, models, plan["r"], evaluate=plan["has_test"],
                                      predicted_costs_at=opts.prelabel_score if opts.unit == "boxes" else None)
    return models.adapter, trained, metrics


def _write_batch(cfg: ExperimentConfig, project_dir: Path, opts: SelectOptions, proj: _Project | None, base: Any,
                 plan: dict[str, Any], dataset: Any, pool: Pool, adapter: Adapter,
                 selection: tuple[list[int], dict[int, float] | None, dict[str, float], dict[str, Any]], unit: str,
                 trained: bool,
                 metrics: dict[str, Any] | None) -> SelectResult:
    """Rank 0: describe the batch, write its files, and record the round, its batch and the
    pending state in one transaction (dropping the replaced batch's round)."""
    assert proj is not None
    chosen, scores, seconds_sel, info = selection
    r, task, bad = plan["r"], cfg.task, plan["quarantined"]
    ledger, conn = proj.ledger, proj.ledger.conn
    spec = BatchSpec(plan["uid"], r, cfg.strategy.name if r > 0 or opts.predictions else "random", task,
                     list(base.class_names), opts.prelabel_score, opts.image_url_prefix,
                     opts.local_files_root, plan["root"], category_ids(base))
    images = describe_batch(chosen, scores, dataset, adapter, cfg, r)
    out_dir = project_dir / "rounds" / f"{r:03d}"
    out_dir.parent.mkdir(exist_ok=True)
    files = write_round(images, spec, out_dir)
    rows = [store.BatchRow(r, im.rank, im.image_id, im.path, im.score,
                           predicted_boxes(im, spec) if adapter is not None else None) for im in images]
    with conn:  # one transaction: the round, its batch and the pending state
        if plan["drop_round"] is not None:
            store.delete_round(conn, plan["drop_round"])
        ledger.insert_round(r, chosen, len(pool.labeled), pool.labeled_boxes, seconds_sel, scores, info)
        store.insert_batch(conn, rows)
        ledger.put_meta(labeling={"pending_round": r, "batch": len(chosen), "labeled": 0,
                                  "strategy": spec.strategy, "dir": str(out_dir)},
                        strategy=cfg.strategy.name, task=task, seed=cfg.seed, unit=unit,
                        pool_size=len(pool.ids), pool_boxes=pool.labeled_boxes,
                        config_yaml=dump_config(cfg), config=cfg.to_dict(),
                        quarantined={str(i): why for i, why in sorted(bad.items())},
                        train_source=cfg.dataset.train)
    return SelectResult(r, out_dir, images, files, trained, metrics, plan["dropped"],
                        len(pool.unlabeled) - len(chosen), dict(bad))


def describe_batch(chosen: list[int], scores: dict[int, float] | None, dataset: Any, adapter: Adapter,
              cfg: ExperimentConfig, r: int) -> list[BatchImage]:
    """One :class:`BatchImage` per chosen id: size, score and the model's predictions."""
    preds: dict[int, Any] = {}
    if adapter is not None:
        if adapter.task == "detection":
            infs = adapter.infer(dataset, chosen, cfg.train.eval_batch_size, keep_anchors=False)
        else:
            infs = adapter.infer(dataset, chosen, cfg.train.eval_batch_size)
        preds = {inf.image_id: inf for inf in infs}
    images = []
    for rank, i in enumerate(chosen, 1):
        rec = dataset.record(i)
        score = None if adapter is None else float((scores or {}).get(i, 0.0))
        im = BatchImage(rank, i, str(rec.path), rec.file_name, rec.width, rec.height, score)
        inf = preds.get(i)
        if inf is not None and adapter.task == "detection":
            im.boxes = inf.boxes.numpy().astype(np.float32).reshape(-1, 4)
            im.box_scores = inf.scores.numpy().astype(np.float32)
            im.box_labels = inf.labels.numpy().astype(np.int64)
        elif inf is not None:
            im.predicted_class = int(inf.labels[0])
            im.class_score = float(inf.scores[0])
        images.append(im)
    return images
