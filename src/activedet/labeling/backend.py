"""``activedet serve --project DIR``: a Label Studio ML backend for a labeling project.

It speaks Label Studio's ML-backend protocol (as Label Studio 1.23 calls it, see
``label_studio/ml/api_connector.py``): a Flask app served by waitress, a production WSGI
server (:func:`make_server`):

- ``GET /health``: ``{"status": "UP", "model_version", "training"}``;
- ``POST /setup`` (``project``, ``schema``, ``hostname``, ``access_token``): remembered to
  fetch images Label Studio serves itself; answers ``{"model_version"}``;
- ``POST /predict`` (``tasks``): one ``{"result", "score", "model_version"}`` per task
  with the current model's boxes (classification: its class) as pre-annotations, for any
  task: activedet's own (known by ``activedet_image_id``) and images imported some other
  way (local files under ``--local-files-root``, Label Studio uploads, http URLs). The
  ``score``: for a task of the pending batch ``(rank - 0.5) / n`` as in its ``tasks.json``
  (lowest first = the strategy's first choice); for any other image the mean confidence
  of its pre-annotations (0 without one), so Label Studio's uncertainty sampling, which
  serves the lowest score first, serves the images the model is least sure of first;
- ``POST /webhook``: ``START_TRAINING`` (*Start training* in Label Studio; ``POST /train``
  where Label Studio's webhook feature flag is off) trains the
  model on everything labeled now in a background thread (through the round engine, as
  ``select`` trains) and bumps ``model_version`` when it is done, never blocking
  ``/predict``; ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` (a project webhook pointed
  at ``/webhook``) are saved under ``DIR/webhooks/`` and ingested through the ingest path
  (the same validation as a file); one that arrives while the project is busy (training,
  or a ``select`` holding the run lock) waits on disk and is ingested afterwards.

One writer per project: training and ingesting take the project's run lock.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from activedet.config import ExperimentConfig, config_from_dict
from activedet.data.base import ClassificationDataset, DetectionDataset, ImageRecord, image_size
from activedet.errors import ActivedetError, LabelingError, RunInUseError
from activedet.labeling import store
from activedet.labeling.batch import BatchSpec, default_local_root, prediction_result
from activedet.labeling.ingest import ingest, open_project

if TYPE_CHECKING:
    from activedet.models.base import Adapter

log = logging.getLogger(__name__)

TRAIN_ACTIONS = ("START_TRAINING",)
ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")


def project_config(project_dir: Path, device: str | None = None) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The config the project's last ``select`` ran with (recorded in its ledger), and the
    ledger's meta."""
    ledger, meta = open_project(project_dir)
    ledger.close()
    if "config" not in meta:
        raise LabelingError(f"{project_dir} has no selected round yet: run `activedet select` first")
    cfg = config_from_dict(meta["config"])
    if device is not None:
        cfg.device = device
    return cfg, meta


class Backend:
    """The model and state behind the endpoints (thread-safe; waitress calls it from many threads)."""

    def __init__(self, project_dir: str | Path, device: str | None = None, local_files_root: str | None = None,
                 label_studio_key: str | None = None) -> None:
        self.project_dir = Path(project_dir)
        self.cfg, meta = project_config(self.project_dir, device)
        proj = meta["project"]
        self.uid, self.task, self.class_names = proj["uid"], proj["task"], list(proj["class_names"])
        self.local_root = os.path.realpath(local_files_root or os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
                                           or default_local_root(proj["root"]))
        self.hostname = (meta.get("label_studio") or {}).get("url")
        self.token = label_studio_key
        self.lock = threading.Lock()  # guards the fields below
        self.adapter: Adapter = None
        self.version = "untrained"
        self.training = False
        self.last_error: str | None = None
        self.webhooks = self.project_dir / "webhooks"

    # ------------------------------------------------------------------ the model
    def load(self) -> None:
        """The model on what is labeled now: the recorded checkpoint when it matches, else
        trained (at start-up, before the server answers)."""
        self._train(initial=True)

    def _train(self, initial: bool = False) -> None:
        from activedet.labeling.project import current_model

        try:
            cfg, _ = project_config(self.project_dir, self.cfg.device)
            model = current_model(cfg, self.project_dir, progress=False)
            version = f"activedet-{self.uid}-model{model.round:03d}-{model.fingerprint[:8]}"
            with self.lock:
                self.adapter, self.version, self.cfg = model.adapter, version, cfg
                self.last_error = None
            log.info("model %s %s", version, "trained" if model.trained else "loaded")
        except ActivedetError as e:
            with self.lock:
                self.last_error = str(e)
            if initial:
                raise
            log.error("training failed: %s", e)
        finally:
            with self.lock:
                self.training = False
            self.drain_webhooks()

    def start_training(self) -> bool:
        """Train in a background thread; False when a training is already running."""
        with self.lock:
            if self.training:
                return False
            self.training = True
        threading.Thread(target=self._train, name="activedet-train", daemon=True).start()
        return True

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {"status": "UP", "model_class": "activedet", "model_version": self.version,
                    "training": self.training, "error": self.last_error}

    # ------------------------------------------------------------------ predictions
    def setup(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if body.get("hostname"):
                self.hostname = str(body["hostname"]).rstrip("/")
            if body.get("access_token"):
                self.token = str(body["access_token"])
            return {"model_version": self.version}

    def predict(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One prediction per task, in order (an unreadable image: an empty one, logged)."""
        from activedet.labeling.project import describe_batch

        with self.lock:
            adapter, version, cfg = self.adapter, self.version, self.cfg
        if adapter is None:
            raise LabelingError("no model yet")
        known, ranks = self._lookup(tasks)
        records, temp = [], []
        try:
            for k, task in enumerate(tasks):
                path = self._image_path(task, known, temp)
                records.append(None if path is None else self._record(k, path))
            good = [r for r in records if r is not None]
            cls = DetectionDataset if self.task == "detection" else ClassificationDataset
            dataset = cls(good, self.class_names, "serve")
            ims = {im.image_id: im for im in describe_batch([r.id for r in good], None, dataset, adapter, cfg, 0)}
        finally:
            for f in temp:
                os.unlink(f)
        spec = BatchSpec(self.uid, 0, "serve", self.task, self.class_names)
        out = []
        for k, task in enumerate(tasks):
            im = ims.get(k)
            if im is None:
                out.append({"result": [], "score": 0.0, "model_version": version})
                continue
            result = prediction_result(im, spec)
            data = task.get("data") or {}
            key = (data.get("activedet_round"), data.get("activedet_image_id"))
            if data.get("activedet_project") == self.uid and key in ranks:
                score = ranks[key]
            else:
                confs = [r["score"] for r in result if "score" in r]
                score = float(np.mean(confs)) if confs else 0.0
            out.append({"result": result, "score": score, "model_version": version})
        return out

    def _lookup(self, tasks: list[dict[str, Any]]) -> tuple[dict[int, str], dict[tuple[int, int], float]]:
        """One read of the project: the files of the tasks' activedet images (id -> path),
        and the pending batch's scores in Label Studio's order ((round, id) -> (rank - 0.5) / n)."""
        ours = [d["activedet_image_id"] for d in (t.get("data") or {} for t in tasks)
                if d.get("activedet_project") == self.uid and isinstance(d.get("activedet_image_id"), int)]
        ledger, meta = open_project(self.project_dir)
        try:
            known = store.image_paths(ledger.conn, ours)
            r = (meta.get("labeling") or {}).get("pending_round")
            rows = [] if r is None else store.batch(ledger.conn, r)
        finally:
            ledger.close()
        return known, {(b.round, b.image_id): (b.rank - 0.5) / len(rows) for b in rows}

    def _record(self, k: int, path: str) -> ImageRecord | None:
        try:
            width, height = image_size(Path(path), f"task #{k}")
        except ActivedetError as e:
            log.warning("predict: %s", e)
            return None
        return ImageRecord(id=k, file_name=os.path.basename(path), width=width, height=height, path=Path(path))

    def _image_path(self, task: dict[str, Any], known: dict[int, str], temp: list[str]) -> str | None:
        """The file of a task's image: an activedet image by id; a local-files URL under the
        local-files root; else fetched (Label Studio uploads, http URLs) to a temp file."""
        data = task.get("data") or {}
        if data.get("activedet_project") == self.uid and data.get("activedet_image_id") in known:
            return known[data["activedet_image_id"]]
        url = str(data.get("image") or "")
        parsed = urllib.parse.urlparse(url)
        if parsed.path.startswith("/data/local-files"):
            rel = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]
            path = os.path.normpath(os.path.join(self.local_root, rel))  # a link is read through its own path
            if path.startswith(self.local_root + os.sep) and os.path.isfile(path):
                return path
            log.warning("predict: task %s: %s is not a file under the local-files root %s", task.get("id"), rel,
                        self.local_root)
            return None
        if not url:
            log.warning("predict: task %s has no 'image'", task.get("id"))
            return None
        full = url if parsed.scheme in ("http", "https") else f"{self.hostname or ''}{url}"
        headers = {}
        if self.token and self.hostname and full.startswith(self.hostname):
            headers["Authorization"] = f"Token {self.token}"
        try:
            with urllib.request.urlopen(urllib.request.Request(full, headers=headers), timeout=60) as resp:
                body = resp.read()
        except (OSError, ValueError) as e:
            log.warning("predict: task %s: cannot fetch %s: %s", task.get("id"), full, e)
            return None
        fd, name = tempfile.mkstemp(prefix="activedet-serve-", suffix=os.path.splitext(parsed.path)[1])
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        temp.append(name)
        return name

    # ------------------------------------------------------------------ webhooks
    def webhook(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        action = body.get("action")
        if action in TRAIN_ACTIONS:
            started = self.start_training()
            return {"status": "training started" if started else "already training",
                    "model_version": self.state()["model_version"]}, 201
        if action in ANNOTATION_ACTIONS:
            task, ann = body.get("task"), body.get("annotation")
            if not isinstance(task, dict) or not isinstance(ann, dict):
                return {"error": f"{action} without 'task' and 'annotation' objects"}, 400
            self.webhooks.mkdir(exist_ok=True)
            name = f"{time.strftime('%Y%m%d-%H%M%S')}-task{task.get('id')}-ann{ann.get('id')}.json"
            path = self.webhooks / name
            tmp = path.with_name(name + ".tmp")
            tmp.write_text(json.dumps([{"id": task.get("id"), "data": task.get("data") or {},
                                        "annotations": [ann]}]))
            os.replace(tmp, path)  # on disk first: nothing is lost if the ingest must wait
            return self.drain_webhooks(), 201
        return {"status": f"ignored {action!r}"}, 200

    def drain_webhooks(self) -> dict[str, Any]:
        """Ingest the saved annotation webhooks, oldest first; stops at a busy project (they
        wait for the next call). A file the ingest refuses goes to ``webhooks/failed/`` with
        the reason next to it."""
        done = waiting = failed = 0
        if not self.webhooks.is_dir():
            return {"ingested": 0, "waiting": 0, "failed": 0}
        for path in sorted(self.webhooks.glob("*.json")):
            try:
                ingest(self.project_dir, path)
            except RunInUseError:
                waiting = len(list(self.webhooks.glob("*.json")))
                break
            except ActivedetError as e:
                (self.webhooks / "failed").mkdir(exist_ok=True)
                (self.webhooks / "failed" / (path.name + ".error.txt")).write_text(str(e) + "\n")
                os.replace(path, self.webhooks / "failed" / path.name)
                log.error("webhook %s not ingested: %s", path.name, e)
                failed += 1
                continue
            (self.webhooks / "done").mkdir(exist_ok=True)
            os.replace(path, self.webhooks / "done" / path.name)
            done += 1
        return {"ingested": done, "waiting": waiting, "failed": failed}


def create_app(backend: Backend) -> Any:
    """The Flask app of ``backend``."""
    from flask import Flask, jsonify, request

    app = Flask("activedet.serve")

    def body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        return data if isinstance(data, dict) else {}

    @app.get("/health")
    @app.get("/")
    def health() -> Any:
        return jsonify(backend.state())

    @app.post("/setup")
    def setup() -> Any:
        return jsonify(backend.setup(body()))

    @app.post("/predict")
    def predict() -> Any:
        tasks = body().get("tasks")
        if not isinstance(tasks, list):
            return jsonify({"error": "'tasks' must be a list"}), 400
        try:
            return jsonify({"results": backend.predict(tasks)})
        except ActivedetError as e:
            return jsonify({"error": str(e)}), 503

    @app.post("/webhook")
    def webhook() -> Any:
        out, code = backend.webhook(body())
        return jsonify(out), code

    @app.post("/train")
    def train() -> Any:  # Label Studio's Start training without its webhook feature flag
        out, code = backend.webhook({"action": "START_TRAINING"})
        return jsonify(out), code

    @app.get("/versions")
    def versions() -> Any:
        return jsonify({"versions": [backend.state()["model_version"]]})

    return app


#: Requests waitress answers at once (the model is shared; /predict serialises on the GPU/CPU itself).
SERVE_THREADS = 8


def make_server(app: Any, host: str, port: int, threads: int = SERVE_THREADS) -> Any:
    """A production WSGI server (waitress, pure Python: no compiler, runs on Windows too) for
    ``app`` on ``host:port``, bound and ready: ``.run()`` serves until stopped, ``.close()``
    stops it. Flask's own server warns against production use."""
    from waitress import create_server

    return create_server(app, host=host, port=port, threads=threads, ident="activedet-serve (waitress)")


def serve(project_dir: str | Path, host: str = "127.0.0.1", port: int = 9090, device: str | None = None,
          local_files_root: str | None = None, label_studio_key: str | None = None) -> None:
    """Load (or train) the model, then answer Label Studio until stopped, under waitress."""
    backend = Backend(project_dir, device, local_files_root, label_studio_key)
    backend.load()
    server = make_server(create_app(backend), host, port)
    log.warning("activedet serve: %s on http://%s:%d (model %s; waitress, %d threads)", project_dir, host,
                getattr(server, "effective_port", port), backend.version, SERVE_THREADS)
    try:
        server.run()
    finally:
        server.close()


__all__ = ["Backend", "create_app", "make_server", "project_config", "serve"]
