"""``activedet predict --label-studio``: the whole pool's predictions in bulk into a real Label
Studio (``make test-integration``): progress lines, a run cut off after two chunks, the same
command again sending only the rest, and no task ever holding the model version twice."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from activedet.labeling import studio as studio_mod
from tests.labeling.conftest import annotator_export
from tests.labeling.ls_server import TOKEN, LabelStudio
from tests.labeling.test_labelstudio_api import ls_tasks, run, trees_project

pytestmark = pytest.mark.integration


def predictions_of(ls: LabelStudio, pid: int, version: str) -> Counter:
    listed = ls.get(f"/api/predictions?project={pid}")
    listed = listed if isinstance(listed, list) else listed.get("results", [])
    return Counter(p["task"] for p in listed if p["model_version"] == version)


def test_bulk_predictions_resume_without_duplicates(tmp_path: Path, tmp_path_factory, trees_files: Path, capsys,
                                                    monkeypatch) -> None:
    t0 = time.time()
    root = tmp_path_factory.getbasetemp()  # Label Studio's document root: the pool is below it
    ls = LabelStudio(tmp_path / "ls-data", root, tmp_path / "label-studio.log")
    try:
        ls.wait()
        monkeypatch.setenv(studio_mod.KEY_ENV, TOKEN)
        truth, by_name, pool_root, cfg, project = trees_project(tmp_path, trees_files)
        code, first, err = run(capsys, "select", str(cfg), "--project", str(project), "--budget", "6", "--quiet",
                               "--local-files-root", str(root), "--label-studio", ls.url)
        assert code == 0, err
        pid = first["label_studio"]["project"]
        batch = {Path(r["path"]).name for r in first["batch"]}
        # a pool image imported some other way (as a storage sync would): matched by its URL
        labeled = {im["file_name"].split("/", 1)[1] for im in truth["images"][:8]}  # trees_project's labeled set
        other = sorted(n for n in by_name if n not in batch and n not in labeled)[0]
        rel = (pool_root / other).relative_to(root).as_posix()
        ls.post(f"/api/projects/{pid}/import", [{"image": f"/data/local-files/?d={rel}"}])
        pool = len(truth["images"]) - 8

        # cut off after two chunks (the connection drops): one line, the two chunks are there
        real = studio_mod.Studio.import_predictions
        calls = []

        def cut_off(self, p, preds):
            if len(calls) == 2:
                raise studio_mod.LabelingError("Label Studio at ... does not answer (ReadTimeout) while importing")
            calls.append(len(preds))
            real(self, p, preds)

        monkeypatch.setattr(studio_mod.Studio, "import_predictions", cut_off)
        argv = ["predict", "--project", str(project), "--label-studio", ls.url, "--local-files-root", str(root),
                "--chunk", "5", "--prelabel-score", "0"]
        code, _, err = run(capsys, *argv)
        assert code == 2 and "does not answer" in err
        monkeypatch.setattr(studio_mod.Studio, "import_predictions", real)
        code, res, err = run(capsys, *argv)
        assert code == 0, err
        assert res["pool"] == pool and res["already"] == 10 and res["sent"] == pool - 10
        assert f"{pool - 10}/{pool - 10} images sent" in err  # progress lines
        version = res["model_version"]

        tasks = ls_tasks(ls, pid)
        held = predictions_of(ls, pid, version)
        assert len(tasks) == pool  # 6 of the batch, 1 imported by hand, the rest new
        assert set(held) == {t["id"] for t in tasks} and set(held.values()) == {1}  # each once

        code, again, err = run(capsys, *argv)
        assert code == 0 and again["sent"] == 0 and again["already"] == pool
        assert predictions_of(ls, pid, version) == held and len(ls_tasks(ls, pid)) == pool
        full = ls.get(f"/api/tasks/{tasks[-1]['id']}")
        assert any(p["model_version"] == version and p["result"] for p in full["predictions"])

        # the next round: its images' tasks made by predict give way to the round's own tasks
        export = annotator_export(trees_files, sorted(batch), tmp_path / "labels.json")
        code, _, err = run(capsys, "ingest", "--project", str(project), str(export))
        assert code == 0, err
        code, second, err = run(capsys, "select", str(cfg), "--project", str(project), "--budget", "3", "--quiet",
                                "--local-files-root", str(root), "--label-studio", ls.url)
        assert code == 0, err
        chosen = {r["image_id"] for r in second["batch"]}
        made_by_predict = {t["data"].get("activedet_pool_id") for t in tasks} - {None}
        assert second["label_studio"]["imported"] == 3 and chosen & made_by_predict  # some had predict's task
        assert second["label_studio"]["deleted"] == len(chosen & made_by_predict)
        shown = Counter(t["data"].get("activedet_image_id", t["data"].get("activedet_pool_id"))
                        for t in ls_tasks(ls, pid))
        assert all(shown[i] == 1 for i in chosen)  # one task per image of the round
    finally:
        ls.stop()
    print(f"bulk predictions live: {time.time() - t0:.0f} s")
