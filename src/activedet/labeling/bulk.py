"""``activedet predict --project DIR [--label-studio URL]``: the current model's predictions
for the whole pool (or the images ``--ids`` names) as Label Studio predictions, in bulk.

- The model is ``serve``'s (:func:`activedet.labeling.project.current_model`: the recorded
  checkpoint of everything labeled, trained first when there is none), and its
  ``model_version`` is ``serve``'s too: ``activedet-<uid>-model<round>-<fingerprint>``.
- Chunks of ``--chunk`` images: the main thread scores a chunk while a second thread
  uploads the one before (a queue of two chunks bounds the memory), and a progress line
  follows every uploaded chunk.
- ``--label-studio URL`` (the project bound by ``select --label-studio``): a task of the
  bound project that shows a pool image (activedet's own, by ``activedet_image_id``; any
  other, by its image URL) gets a prediction through Label Studio's bulk predictions import;
  a pool image without a task is imported as a new task (``{"image": URL,
  "activedet_pool_id": id}``, which ``select`` leaves alone) with its prediction inline.
  Before the first chunk, the tasks that already hold a prediction of this model version
  are asked of Label Studio: a re-run after a kill sends only what is missing, and a second
  run sends nothing (no duplicate predictions). A new model version predicts again.
- Without ``--label-studio``: files to import by hand, ``DIR/predictions/<version>/
  chunk-NNNNN.json`` (Label Studio tasks with their predictions), each written atomically;
  a re-run writes the chunks of the images no file holds yet.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from activedet.data.base import category_ids
from activedet.errors import ConfigError, LabelingError
from activedet.labeling.batch import BatchImage, BatchSpec, image_url, prediction_result

if TYPE_CHECKING:
    from activedet.models.base import Adapter


@dataclass
class PredictOptions:
    ids: list[int] | None = None  # a part of the pool (None: all of it)
    chunk: int = 256
    prelabel_score: float = 0.5
    image_url_prefix: str | None = None
    local_files_root: str | None = None
    device: str | None = None


def model_version(uid: str, round_: int, fingerprint: str) -> str:
    """The model's name in Label Studio (the one ``serve`` reports)."""
    return f"activedet-{uid}-model{round_:03d}-{fingerprint[:8]}"


def predict_pool(project_dir: str | Path, opts: PredictOptions, studio: Any = None,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """Predict the pool (see the module docstring); returns counts and rates."""
    from activedet.labeling.backend import project_config
    from activedet.labeling.project import current_model
    from activedet.loop.lock import run_lock

    if opts.chunk < 1:
        raise ConfigError(f"--chunk must be a positive integer, got {opts.chunk}")
    project_dir = Path(project_dir)
    cfg, meta = project_config(project_dir, opts.device)
    model = current_model(cfg, project_dir, progress=False)  # trains (holding the lock) when needed
    uid = meta["project"]["uid"]
    version = model_version(uid, model.round, model.fingerprint)
    with run_lock(project_dir, "predict"):  # one writer: two predicts would both send a chunk
        base, dataset, paths = _pool(cfg, project_dir, opts.ids)
        spec = BatchSpec(uid, model.round, "predict", cfg.task, list(base.class_names), opts.prelabel_score,
                         opts.image_url_prefix, opts.local_files_root, meta["project"]["root"], category_ids(base))
        if studio is not None:
            sink: Any = StudioSink(studio, meta, spec, version, paths)
        else:
            sink = FileSink(project_dir / "predictions" / version, spec, version, paths)
        todo = sink.todo()
        say(f"predict: {len(paths)} pool images, {len(paths) - len(todo)} already hold {version}; "
            f"{len(todo)} to go in chunks of {opts.chunk}")
        t0 = time.perf_counter()
        sent = pipeline(todo, lambda ids: _describe(ids, dataset, model.adapter, cfg), sink.write, opts.chunk, say)
    seconds = time.perf_counter() - t0
    return {"model_version": version, "pool": len(paths), "already": len(paths) - len(todo), "sent": sent,
            "seconds": round(seconds, 3), "images_per_s": round(sent / seconds, 2) if seconds > 0 else None,
            "where": sink.where}


def _pool(cfg: Any, project_dir: Path, ids: Sequence[int] | None) -> tuple[Any, Any, dict[int, str]]:
    """(the labeled set, the project's dataset, unlabeled pool id -> path), restricted to ``ids``."""
    from activedet.labeling.project import _labeled_pool, _open

    proj = _open(cfg, project_dir)
    try:
        plan = {"labels": proj.labels, "pool_ids": proj.pool_ids, "root": proj.listing.root,
                "base_order": proj.base_order, "quarantined": {}}
        dataset, pool = _labeled_pool(cfg, proj.base, plan)
    finally:
        proj.ledger.close()
    paths = {i: str(dataset.record(i).path) for i in pool.unlabeled}
    if ids is not None:
        unknown = [i for i in ids if i not in paths]
        if unknown:
            raise LabelingError(f"--ids: image id {unknown[0]} is not an unlabeled image of {project_dir} "
                                f"({len(unknown)} such ids; `activedet status {project_dir}` shows the pool)")
        paths = {i: paths[i] for i in ids}
    return proj.base, dataset, paths


def _describe(ids: list[int], dataset: Any, adapter: Adapter, cfg: Any) -> list[BatchImage]:
    from activedet.labeling.project import describe_batch

    return describe_batch(ids, None, dataset, adapter, cfg, 0)


def pipeline(todo: list[int], score: Callable[[list[int]], list[Any]], write: Callable[[list[Any]], None],
             chunk: int, say: Callable[[str], None]) -> int:
    """Score chunk k+1 while chunk k is written by a second thread (at most two chunks wait);
    a progress line per written chunk. Returns how many images were written; the first
    error of either side stops both and is raised."""
    q: queue.Queue = queue.Queue(maxsize=2)
    failed: list[BaseException] = []
    sent = [0]
    t0 = time.perf_counter()

    def writer() -> None:
        while (item := q.get()) is not None:
            if failed:
                continue  # drain: the scoring side must never block on a dead writer
            try:
                write(item)
            except BaseException as e:  # noqa: BLE001 - raised again by the scoring side
                failed.append(e)
                continue
            sent[0] += len(item)
            rate = sent[0] / max(time.perf_counter() - t0, 1e-9)
            say(f"predict: {sent[0]}/{len(todo)} images sent ({rate:.1f} images/s)")

    thread = threading.Thread(target=writer, name="activedet-predict-upload", daemon=True)
    thread.start()
    try:
        for k in range(0, len(todo), chunk):
            if failed:
                break
            q.put(score(todo[k:k + chunk]))
    finally:
        q.put(None)
        thread.join()
    if failed:
        raise failed[0]
    return sent[0]


def _prediction(im: BatchImage, spec: BatchSpec, version: str) -> dict[str, Any]:
    """One Label Studio prediction: the boxes at ``--prelabel-score`` or more, scored by
    their mean confidence (``serve``'s score for an image outside the pending batch)."""
    result = prediction_result(im, spec)
    confs = [r["score"] for r in result if "score" in r]
    return {"result": result, "score": float(np.mean(confs)) if confs else 0.0, "model_version": version}


class StudioSink:
    """Predictions into the bound Label Studio project (see the module docstring)."""

    def __init__(self, studio: Any, meta: dict[str, Any], spec: BatchSpec, version: str,
                 paths: dict[int, str]) -> None:
        binding = meta.get("label_studio")
        if not binding:
            raise LabelingError("this project is not bound to a Label Studio project: run `activedet select CONFIG "
                                "--project DIR --budget N --label-studio URL` once, or predict without --label-studio "
                                "(files to import)")
        if binding["url"] != studio.url:
            raise LabelingError(f"this project is bound to Label Studio at {binding['url']}, not {studio.url}")
        self.studio, self.pid, self.spec, self.version = studio, int(binding["project"]), spec, version
        self.where = f"{studio.url} project {self.pid}"
        self.urls = {i: image_url(p, spec) for i, p in paths.items()}
        by_url = {u: i for i, u in self.urls.items()}
        self.tasks: dict[int, list[int]] = {}
        for t in studio.tasks(self.pid):
            d = t["data"]
            ours = d.get("activedet_project") == spec.project_uid
            i = d.get("activedet_image_id") if ours else by_url.get(d.get("image"))
            if i in self.urls:
                self.tasks.setdefault(i, []).append(t["id"])
        self.holding = studio.predicted_tasks(self.pid, version)  # tasks holding this version already

    def todo(self) -> list[int]:
        return [i for i in self.urls if not self.tasks.get(i) or any(t not in self.holding for t in self.tasks[i])]

    def write(self, images: list[BatchImage]) -> None:
        preds, new = [], []
        for im in images:
            p = _prediction(im, self.spec, self.version)
            missing = [t for t in self.tasks.get(im.image_id, []) if t not in self.holding]
            preds += [{"task": t, **p} for t in missing]
            if not self.tasks.get(im.image_id):
                new.append({"data": {"image": self.urls[im.image_id], "activedet_pool_id": im.image_id},
                            "predictions": [p]})
        self.studio.import_predictions(self.pid, preds)
        self.studio.import_tasks(self.pid, new)


class FileSink:
    """Predictions as files to import: ``chunk-NNNNN.json`` under ``out`` (see the module docstring)."""

    def __init__(self, out: Path, spec: BatchSpec, version: str, paths: dict[int, str]) -> None:
        self.out, self.spec, self.version, self.paths = out, spec, version, paths
        self.where = str(out)
        self.done: set[int] = set()
        self.files = sorted(out.glob("chunk-*.json")) if out.is_dir() else []
        for f in self.files:
            try:
                self.done.update(int(t["data"]["activedet_pool_id"]) for t in json.loads(f.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise LabelingError(f"{f} cannot be read ({e}): delete it and run the same command again") from None

    def todo(self) -> list[int]:
        return [i for i in self.paths if i not in self.done]

    def write(self, images: list[BatchImage]) -> None:
        tasks = [{"data": {"image": image_url(im.path, self.spec), "activedet_pool_id": im.image_id},
                  "predictions": [_prediction(im, self.spec, self.version)]} for im in images]
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"chunk-{len(self.files):05d}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(tasks))
        os.replace(tmp, path)  # a chunk is there whole, or not at all
        self.files.append(path)


__all__ = ["FileSink", "PredictOptions", "StudioSink", "model_version", "pipeline", "predict_pool"]
