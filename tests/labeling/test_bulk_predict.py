"""``activedet predict``: the current model's predictions for the whole pool, in chunks,
scoring one chunk while the previous one is written, resumable after a kill and
idempotent (here: the files form; Label Studio itself in test_bulk_predict_live.py)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from activedet.errors import LabelingError
from activedet.labeling import bulk
from tests.labeling.conftest import gt, make_project_config
from tests.labeling.test_everyday_pool import _run


def test_scoring_and_writing_overlap_and_errors_stop_both() -> None:
    second_scored = threading.Event()
    calls: list[str] = []

    def score(ids):
        calls.append(f"score {ids[0]}")
        if ids[0] == 2:
            second_scored.set()
        return ids

    def write(item):
        if item[0] == 0:  # the first chunk is written while the second is scored
            assert second_scored.wait(10), "the second chunk was not scored while the first was written"
        calls.append(f"write {item[0]}")

    lines: list[str] = []
    assert bulk.pipeline(list(range(6)), score, write, 2, lines.append) == 6
    assert calls.index("score 2") < calls.index("write 0") and len(lines) == 3 and "6/6 images sent" in lines[-1]

    def broken(item):
        raise LabelingError("Label Studio at ... does not answer")

    with pytest.raises(LabelingError, match="does not answer"):
        bulk.pipeline(list(range(100)), lambda ids: ids, broken, 2, lines.append)


@pytest.mark.slow
def test_predict_files_resume_after_a_kill_without_duplicates(tmp_path: Path, trees_files: Path, capsys,
                                                               monkeypatch) -> None:
    ids = [im["id"] for im in gt(trees_files)["images"]]
    cfg = make_project_config(tmp_path, trees_files, ids[:8])
    project = tmp_path / "project"
    code, out, err = _run(capsys, "select", str(cfg), "--project", str(project), "--budget", "4", "--quiet")
    assert code == 0, err
    pool = len(ids) - 8  # the pending batch is still unlabeled: it is predicted too

    real_write = bulk.FileSink.write
    written = []

    def killed(self, images):  # the process dies after two chunks
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(len(images))
        real_write(self, images)

    monkeypatch.setattr(bulk.FileSink, "write", killed)
    code, out, err = _run(capsys, "predict", "--project", str(project), "--chunk", "5", "--prelabel-score", "0")
    assert code == 130 and "run the same command again" in err and f"10/{pool} images sent" in err
    monkeypatch.setattr(bulk.FileSink, "write", real_write)
    code, out, err = _run(capsys, "predict", "--project", str(project), "--chunk", "5", "--prelabel-score", "0",
                          "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["already"] == 10 and res["sent"] == pool - 10 and res["pool"] == pool
    assert f"{pool - 10}/{pool - 10} images sent" in err  # progress lines
    files = sorted(Path(res["where"]).glob("chunk-*.json"))
    tasks = [t for f in files for t in json.loads(f.read_text())]
    assert len(tasks) == pool and len({t["data"]["activedet_pool_id"] for t in tasks}) == pool  # no duplicate
    assert all(t["predictions"][0]["model_version"] == res["model_version"] for t in tasks)
    assert any(t["predictions"][0]["result"] for t in tasks)  # boxes at --prelabel-score 0
    assert all(t["data"]["image"].startswith("/data/local-files/?d=") for t in tasks)

    code, out, err = _run(capsys, "predict", "--project", str(project), "--json", "--quiet")
    again = json.loads(out)
    assert code == 0 and again["sent"] == 0 and again["already"] == pool  # idempotent
    code, out, err = _run(capsys, "predict", "--project", str(project), "--ids", "999999")
    assert code == 2 and "999999" in err
