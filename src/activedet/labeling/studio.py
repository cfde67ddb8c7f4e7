"""Label Studio over its API (``select --label-studio URL``, ``ingest --label-studio URL``).

Through Label Studio's own SDK (PyPI ``label-studio-sdk`` 2.x). An activedet project is
bound to one Label Studio project, recorded in the ledger (``meta.label_studio``: the URL,
the project id, the local-files storage id; never the API key, which comes from
``LABEL_STUDIO_API_KEY`` or ``--label-studio-key-file``):

- :func:`push`: the first time, find (by its title, which names the activedet project) or
  create the Label Studio project with the round's labeling config and a local-files
  source storage on the pool folder (unless images are served from ``--image-url-prefix``);
  then import the round's tasks that are not in Label Studio yet, and delete the
  unannotated tasks of a batch that ``--replace`` dropped. Running it again imports only
  what is missing: no duplicate tasks after a failure anywhere.
- :func:`pull`: Label Studio's own JSON export of every task of the bound project, written
  under ``rounds/NNN/labelstudio/`` and ingested like a downloaded file.
- :func:`progress`: how many tasks of a round are labeled there (for ``status``).

Every failure is one :class:`~activedet.errors.LabelingError` line naming what to do; the
activedet project is only changed after Label Studio has answered.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from activedet.errors import LabelingError

KEY_ENV = "LABEL_STUDIO_API_KEY"
T = TypeVar("T")


def api_key(key_file: str | None = None) -> str:
    """The API key from ``key_file`` (its first line) or ``$LABEL_STUDIO_API_KEY``."""
    if key_file is not None:
        try:
            key = Path(key_file).read_text().strip().splitlines()[0].strip() if Path(key_file).stat().st_size else ""
        except OSError as e:
            raise LabelingError(f"--label-studio-key-file {key_file}: {e.strerror or e}") from None
        if not key:
            raise LabelingError(f"--label-studio-key-file {key_file} is empty")
        return key
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise LabelingError(f"no Label Studio API key: set {KEY_ENV} (Label Studio: Account & Settings -> "
                            f"Personal Access Token, or the legacy token) or pass --label-studio-key-file FILE")
    return key


def labels_of(config: str) -> list[str]:
    """The label values of a labeling config (``<Label value=...>`` / ``<Choice value=...>``)."""
    return [m[1] for m in re.findall(r"""<(?:Label|Choice)\s+[^>]*?value=(["'])(.*?)\1""", config or "")]


class Studio:
    """One Label Studio server, as one user (the API key)."""

    def __init__(self, url: str, key: str, timeout: float = 120.0) -> None:
        from label_studio_sdk import LabelStudio

        if not re.match(r"^https?://", url or ""):
            raise LabelingError(f"--label-studio {url!r} is not an http(s) URL (e.g. http://127.0.0.1:8080)")
        self.url = url.rstrip("/")
        self.client = LabelStudio(base_url=self.url, api_key=key, timeout=timeout)

    def call(self, what: str, fn: Callable[[], T], missing: str | None = None) -> T:
        """``fn()`` with the SDK's and the network's errors as one line (``missing``: the
        message for a 404)."""
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn()
        except ApiError as e:
            code = e.status_code
            if code in (401, 403):
                raise LabelingError(f"Label Studio at {self.url} refused the API key (HTTP {code}) while {what}: "
                                    f"check {KEY_ENV} or --label-studio-key-file") from None
            if code == 404 and missing is not None:
                raise LabelingError(missing) from None
            body = " ".join(str(e.body).split())[:200]
            raise LabelingError(f"Label Studio at {self.url} answered HTTP {code} while {what}: {body}") from None
        except httpx.HTTPError as e:
            raise LabelingError(f"Label Studio at {self.url} does not answer ({type(e).__name__}) while {what}: "
                                f"is it running? (`label-studio start`), or check --label-studio") from None

    def check(self) -> None:
        """One request: the server answers and accepts the key."""
        self.call("checking the API key", lambda: self.client.users.whoami())

    # ------------------------------------------------------------------ projects
    def project(self, pid: int) -> Any:
        return self.call(f"reading project {pid}", lambda: self.client.projects.get(id=pid),
                         missing=f"Label Studio project {pid} at {self.url} (bound to this activedet project) no "
                                 f"longer exists: `activedet select CONFIG --project DIR --budget N --label-studio "
                                 f"{self.url} --label-studio-relink` binds a new one and imports the pending round")

    def find_project(self, title: str) -> int | None:
        pager = self.call("listing projects", lambda: self.client.projects.list(title=title, page_size=100))
        for p in self.call("listing projects", lambda: list(pager)):
            if getattr(p, "title", None) == title:
                return int(p.id)
        return None

    def create_project(self, title: str, config: str, description: str) -> int:
        p = self.call("creating the project", lambda: self.client.projects.create(
            title=title, label_config=config, description=description))
        return int(p.id)

    def storage(self, pid: int, path: str) -> int:
        """The id of project ``pid``'s local-files source storage on ``path`` (added when
        there is none)."""
        found = self.call("listing storages", lambda: self.client.import_storage.local.list(project=pid))
        for s in found:
            if getattr(s, "path", None) == path:
                return int(s.id)
        s = self.call("adding the local-files storage", lambda: self.client.import_storage.local.create(
            project=pid, path=path, title="activedet pool", use_blob_urls=False))
        return int(s.id)

    # ------------------------------------------------------------------ tasks
    def tasks(self, pid: int) -> list[dict[str, Any]]:
        """Every task of project ``pid``: id, data, annotation count."""
        def fetch() -> list[dict[str, Any]]:
            out = []
            for t in self.client.tasks.list(project=pid, fields="task_only", page_size=500):
                out.append({"id": int(t.id), "data": dict(getattr(t, "data", None) or {}),
                            "annotations": int(getattr(t, "total_annotations", 0) or 0),  # not cancelled
                            "cancelled": int(getattr(t, "cancelled_annotations", 0) or 0)})
            return out

        return self.call(f"listing the tasks of project {pid}", fetch)

    def import_tasks(self, pid: int, tasks: list[dict[str, Any]]) -> None:
        if tasks:
            self.call(f"importing {len(tasks)} tasks into project {pid}",
                      lambda: self.client.projects.import_tasks(id=pid, request=tasks, return_task_ids=True))

    def import_predictions(self, pid: int, predictions: list[dict[str, Any]]) -> None:
        """Label Studio's bulk predictions import (``POST /api/projects/ID/import/predictions``):
        each item ``{"task", "result", "score", "model_version"}``."""
        if predictions:
            self.call(f"importing {len(predictions)} predictions into project {pid}",
                      lambda: self.client.projects.import_predictions(id=pid, request=predictions))

    def predicted_tasks(self, pid: int, model_version: str) -> set[int]:
        """The tasks of project ``pid`` holding a prediction of ``model_version``."""
        found = self.call(f"listing the predictions of project {pid}",
                          lambda: self.client.predictions.list(project=pid))
        return {int(p.task) for p in found if getattr(p, "model_version", None) == model_version}

    def delete_task(self, task_id: int) -> None:
        self.call(f"deleting task {task_id}", lambda: self.client.tasks.delete(id=str(task_id)))

    def export(self, pid: int) -> bytes:
        """Label Studio's JSON export of every task of ``pid`` (what *Export -> JSON* downloads)."""
        return self.call(f"exporting project {pid}", lambda: b"".join(self.client.projects.exports.download_sync(
            pid, download_all_tasks=True, export_type="JSON")))


# ============================================================================ the binding
def title_of(uid: str) -> str:
    return f"activedet {uid}"


def check_labels(studio: Studio, pid: int, want: list[str]) -> None:
    """Project ``pid`` exists and its labeling config has the labels ``want``, in order."""
    have = labels_of(getattr(studio.project(pid), "label_config", "") or "")
    if have != want:
        raise LabelingError(f"the labeling config of Label Studio project {pid} was edited there: its labels are "
                            f"{have}, this project's are {want}; restore it (Settings -> Labeling Interface -> "
                            f"Code: paste rounds/NNN/labelstudio/config.xml) and run the same command again")


def bind(studio: Studio, meta: dict[str, Any], config: str, storage_path: str | None,
         relink: bool = False) -> dict[str, Any]:
    """The Label Studio project of this activedet project (``meta``: the ledger's meta):
    the recorded one, checked (still there, the same labels), else one found by title, else
    a new one. Returns the binding to record (``meta.label_studio``)."""
    uid = meta["project"]["uid"]
    old = dict(meta.get("label_studio") or {})
    if old and old.get("url") != studio.url and not relink:
        raise LabelingError(f"this project is bound to Label Studio at {old.get('url')} (project "
                            f"{old.get('project')}), not {studio.url}: use that URL, or pass --label-studio-relink")
    pid = None if relink or not old else int(old["project"])
    if pid is not None:
        check_labels(studio, pid, labels_of(config))
    else:
        pid = None if relink else studio.find_project(title_of(uid))
        if pid is None:
            pid = studio.create_project(title_of(uid), config, f"activedet labeling project {uid}")
    storage = None if storage_path is None else studio.storage(pid, storage_path)
    return {"url": studio.url, "project": pid, "storage": storage, "storage_path": storage_path,
            "pushed_round": None if relink else old.get("pushed_round")}


def push(studio: Studio, pid: int, uid: str, round_: int, tasks: list[dict[str, Any]],
         labeled: set[int]) -> dict[str, int]:
    """Make the Label Studio project hold ``tasks`` (the pending round ``round_``'s):
    import those it does not hold yet, and delete this project's tasks nobody annotated
    that no longer stand for a pending image (left over from a batch ``select --replace``
    dropped: an image of another round never labeled, or of this round but no longer in its
    batch; ``labeled``: the ids of every labeled image), and the unannotated task ``activedet
    predict`` made for an image of this round (its round task replaces it). Returns counts."""
    have: set[int] = set()
    stale = []
    want = {int(t["data"]["activedet_image_id"]) for t in tasks}
    for t in studio.tasks(pid):
        d = t["data"]
        if d.get("activedet_project") != uid:  # imported some other way: not ours to touch, except
            if d.get("activedet_pool_id") in want and not t["annotations"] and not t["cancelled"]:
                stale.append(t["id"])  # `predict`'s task of an image this round imports as its own
            continue
        i, r = int(d.get("activedet_image_id", -1)), d.get("activedet_round")
        if r == round_ and i in want and i not in have:
            have.add(i)
        elif not t["annotations"] and not t["cancelled"] and i not in labeled:
            stale.append(t["id"])
    for task_id in stale:
        studio.delete_task(task_id)
    todo = [t for t in tasks if int(t["data"]["activedet_image_id"]) not in have]
    studio.import_tasks(pid, todo)
    return {"imported": len(todo), "present": len(have), "deleted": len(stale)}


def pull(studio: Studio, pid: int, out: Path) -> Path:
    """Label Studio's JSON export of project ``pid``, written atomically to ``out``."""
    data = studio.export(pid)
    try:
        json.loads(data)
    except ValueError:
        raise LabelingError(f"Label Studio at {studio.url} sent an export of project {pid} that is not JSON "
                            f"({len(data)} bytes)") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


def export_path(project_dir: Path, round_: int | None) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    sub = f"{round_:03d}" if round_ is not None else "closed"
    return project_dir / "rounds" / sub / "labelstudio" / f"export-{stamp}.json"


def progress(studio: Studio, pid: int, uid: str, round_: int) -> dict[str, int]:
    """Of the Label Studio tasks of round ``round_``: how many, how many labeled (an
    annotation that is not cancelled), how many skipped."""
    tasks = [t for t in studio.tasks(pid) if t["data"].get("activedet_project") == uid
             and t["data"].get("activedet_round") == round_]
    return {"tasks": len(tasks), "labeled": sum(t["annotations"] > 0 for t in tasks),
            "skipped": sum(t["annotations"] == 0 and t["cancelled"] > 0 for t in tasks)}


# ============================================================================ the commands
def connect(url: str, key_file: str | None = None) -> Studio:
    """A checked connection (the server answers and takes the key), before any work."""
    studio = Studio(url, api_key(key_file))
    studio.check()
    return studio


def link_state(project_dir: Path) -> dict[str, Any]:
    """The pending round, and which round was last imported into Label Studio (no
    project yet: both None)."""
    from activedet.labeling.ingest import open_project
    from activedet.loop.ledger import Ledger

    if not (Path(project_dir) / Ledger.FILENAME).is_file():
        return {"pending_round": None, "pushed_round": None}
    ledger, meta = open_project(Path(project_dir))
    ledger.close()
    return {"pending_round": (meta.get("labeling") or {}).get("pending_round"),
            "pushed_round": (meta.get("label_studio") or {}).get("pushed_round"), "binding": meta.get("label_studio")}


def sync_pending(project_dir: Path, studio: Studio, relink: bool = False) -> dict[str, Any]:
    """Bind the project (first time: create the Label Studio project and its storage) and
    import the pending round's tasks that Label Studio does not hold; the binding is recorded
    before anything is imported, the round as imported after. Idempotent."""
    from activedet.labeling import store
    from activedet.labeling.ingest import open_project
    from activedet.loop.lock import run_lock

    project_dir = Path(project_dir)
    ledger, meta = open_project(project_dir)
    try:
        with run_lock(project_dir, "select"):
            meta = ledger.meta()
            lab = meta.get("labeling") or {}
            r = lab.get("pending_round")
            if r is None:
                raise LabelingError(f"no round of {project_dir} is pending: nothing to send to Label Studio")
            files = Path(lab["dir"]) / "labelstudio"
            try:
                tasks = json.loads((files / "tasks.json").read_text())
                config = (files / "config.xml").read_text()
            except (OSError, ValueError) as e:
                raise LabelingError(f"round {r}'s Label Studio files in {files} cannot be read ({e}): run "
                                    f"`activedet select ... --replace` to write the round again") from None
            local = bool(tasks) and str(tasks[0]["data"].get("image", "")).startswith("/data/local-files/")
            binding = bind(studio, meta, config, meta["project"]["root"] if local else None, relink)
            with ledger.conn:
                ledger.put_meta(label_studio=binding)  # before importing: a re-run finds the same project
            labeled = {row.image_id for row in store.labels(ledger.conn)}
            counts = push(studio, int(binding["project"]), meta["project"]["uid"], int(r), tasks, labeled)
            binding["pushed_round"] = r
            with ledger.conn:
                ledger.put_meta(label_studio=binding)
            return {"round": r, "url": studio.url, "project": binding["project"], **counts}
    finally:
        ledger.close()


def connect_for_select(url: str, key_file: str | None, project_dir: Path, replace: bool,
                       relink: bool) -> tuple[Studio, dict[str, Any] | None]:
    """``select --label-studio URL``, before any work (torchrun children never see the key):
    the checked connection, and, when the pending round is not in Label Studio yet (or is
    to be relinked) and not being replaced, the result of importing it: that select is
    then done."""
    studio = connect(url, key_file)
    state = link_state(project_dir)
    pending = state["pending_round"]
    if pending is not None and not replace and (state["pushed_round"] != pending or relink):
        return studio, sync_pending(project_dir, studio, relink)
    return studio, None


def sync_text(sync: dict[str, Any], project: str) -> str:
    """Two lines: what :func:`sync_pending` imported, and what to do next."""
    return (f"Label Studio {sync['url']} project {sync['project']}: round {sync['round']}: imported "
            f"{sync['imported']} tasks ({sync['present']} were there already"
            + (f", {sync['deleted']} unannotated tasks of the dropped batch deleted" if sync["deleted"] else "")
            + f")\nnext: label them there, then `activedet ingest --project {project} --label-studio {sync['url']}`")


def pull_and_ingest(project_dir: Path, url: str | None, key_file: str | None = None) -> tuple[Path, Any]:
    """Label Studio's export of the bound project, saved under ``rounds/`` and ingested
    with the same validation as a downloaded file. Returns (the file, the ingest result)."""
    from activedet.labeling.ingest import ingest, open_project

    project_dir = Path(project_dir)
    ledger, meta = open_project(project_dir)
    ledger.close()
    binding = meta.get("label_studio")
    if not binding:
        raise LabelingError(f"{project_dir} is not bound to a Label Studio project: run `activedet select CONFIG "
                            f"--project {project_dir} --budget N --label-studio URL` first, or ingest a file")
    if url is not None and url.rstrip("/") != binding["url"]:
        raise LabelingError(f"{project_dir} is bound to Label Studio at {binding['url']}, not {url}")
    studio = connect(binding["url"], key_file)
    pid = int(binding["project"])
    check_labels(studio, pid, list(meta["project"]["class_names"]))  # still there, with our labels
    path = pull(studio, pid, export_path(project_dir, (meta.get("labeling") or {}).get("pending_round")))
    return path, ingest(project_dir, path)


def describe(binding: dict[str, Any] | None, uid: str, pending: int | None,
             key_file: str | None = None) -> dict[str, Any] | None:
    """For ``status``: the binding, and how many of the pending round's tasks are labeled
    in Label Studio (``error`` instead when it cannot be asked)."""
    if not binding:
        return None
    out = {"url": binding["url"], "project": binding["project"], "pushed_round": binding.get("pushed_round")}
    if pending is None:
        return out
    try:
        studio = connect(binding["url"], key_file)
        out.update(round=pending, **progress(studio, int(binding["project"]), uid, int(pending)))
    except LabelingError as e:
        out["error"] = str(e)
    return out


__all__ = ["KEY_ENV", "Studio", "api_key", "bind", "connect", "describe", "export_path", "labels_of", "link_state", "progress", "pull", "pull_and_ingest", "push",
           "sync_pending"]
