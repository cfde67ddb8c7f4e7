"""Pool edges found before any training, by `doctor` and `select` alike: one file reached
by two paths (a link to a listed file, one file under two COCO ids), a link that points out
of the pool folder (its path under the pool root is kept), and the budget against the pool."""

from __future__ import annotations

import json
import os
from pathlib import Path

from activedet.cli import main
from activedet.doctor import diagnose
from activedet.labeling.sources import list_unlabeled

from tests.labeling.test_everyday_pool import _project_config, _run, noise_png


def _pool(tmp_path: Path, n: int = 3) -> Path:
    pool = tmp_path / "pool"
    pool.mkdir()
    for k in range(n):
        noise_png(pool / f"im{k}.png", k)
    return pool


def _nothing_written(project: Path) -> bool:
    return not (project / "rounds").exists() and not (project / "checkpoints").exists()


def test_a_link_to_a_listed_file_is_named_by_doctor_and_select(tmp_path: Path, capsys) -> None:
    pool = _pool(tmp_path)
    (pool / "sub").mkdir()
    os.symlink(pool / "im1.png", pool / "sub" / "again.png")
    cfg = _project_config(tmp_path, pool)

    problems, _ = diagnose(cfg)
    (dup,) = [p for p in problems if "same file" in p]
    assert "im1.png and sub/again.png" in dup and "remove the extra link" in dup

    code, out, err = _run(capsys, "doctor", str(cfg), "--quiet")
    assert code == 1 and "sub/again.png" in out

    project = tmp_path / "project"
    code, out, err = _run(capsys, "select", str(cfg), "--project", str(project), "--budget", "1", "--quiet")
    assert code == 2 and "im1.png and sub/again.png are the same file" in err
    assert _nothing_written(project)


def test_one_file_under_two_ids_of_a_coco_pool_is_named(tmp_path: Path, capsys) -> None:
    pool = _pool(tmp_path)
    (tmp_path / "pool.json").write_text(json.dumps({"images": [
        {"id": 5, "file_name": "pool/im0.png"}, {"id": 6, "file_name": "pool/im1.png"},
        {"id": 9, "file_name": "pool/./im0.png"}]}))
    cfg = _project_config(tmp_path, tmp_path / "pool.json")
    problems, _ = diagnose(cfg)
    assert any("image id 5 (pool/im0.png) and image id 9 (pool/im0.png) are the same file" in p for p in problems)
    project = tmp_path / "project"
    code, out, err = _run(capsys, "select", str(cfg), "--project", str(project), "--budget", "1", "--quiet")
    assert code == 2 and "image id 9" in err and _nothing_written(project)
    assert list_unlabeled(str(pool)).duplicates == []  # distinct files: nothing to name


def test_a_link_out_of_the_pool_keeps_the_path_under_the_pool_root(tmp_path: Path, capsys) -> None:
    pool = _pool(tmp_path, 2)
    (tmp_path / "elsewhere").mkdir()
    noise_png(tmp_path / "elsewhere" / "real.png", 7)
    os.symlink(tmp_path / "elsewhere" / "real.png", pool / "linked.png")

    listing = list_unlabeled(str(pool))
    assert str(pool / "linked.png") in listing.paths
    assert listing.real_path(str(pool / "linked.png")) == os.path.realpath(tmp_path / "elsewhere" / "real.png")

    cfg = _project_config(tmp_path, pool)
    assert diagnose(cfg)[0] == []
    code, out, err = _run(capsys, "select", str(cfg), "--project", str(tmp_path / "project"), "--budget", "3",
                          "--quiet", "--json")
    assert code == 0, err
    res = json.loads(out)
    batch = Path(res["dir"])
    assert sorted(Path(r["path"]).name for r in res["batch"]) == ["im0.png", "im1.png", "linked.png"]
    assert str(pool / "linked.png") in [r["path"] for r in res["batch"]]
    for f in (batch / "batch.csv", batch / "batch.coco.json", batch / "labelstudio" / "tasks.json"):
        assert "elsewhere" not in f.read_text(), f  # no path outside the pool root is handed out
    tasks = json.loads((batch / "labelstudio" / "tasks.json").read_text())
    assert "/data/local-files/?d=pool/linked.png" in [t["data"]["image"] for t in tasks]


def test_doctor_checks_the_budget_select_would_refuse(tmp_path: Path, capsys) -> None:
    pool = _pool(tmp_path, 6)
    cfg = _project_config(tmp_path, pool)
    code, out, err = _run(capsys, "doctor", str(cfg), "--budget", "500", "--quiet")
    assert code == 1 and "--budget 500 but only 6 pool images are unlabeled" in out
    code, out, err = _run(capsys, "doctor", str(cfg), "--budget", "6", "--quiet")
    assert code == 0 and "budget 6" in out

    # an image of the labeled set found in the pool folder is not counted
    labeled = json.loads((tmp_path / "labeled.json").read_text())
    labeled["images"] = [{"id": 1, "file_name": "pool/im0.png", "width": 64, "height": 48}]
    (tmp_path / "labeled.json").write_text(json.dumps(labeled))
    problems, _ = diagnose(cfg, budget=6)
    assert any("--budget 6 but only 5 pool images" in p for p in problems)
    code, out, err = _run(capsys, "select", str(cfg), "--project", str(tmp_path / "p"), "--budget", "6", "--quiet")
    assert code == 2 and "only 5 pool images" in err  # what select says, before it trains
    assert main(["doctor", str(cfg), "--budget", "0", "--quiet"]) == 2


def test_serve_reads_a_local_files_image_through_its_link(tmp_path: Path) -> None:
    from activedet.labeling.backend import Backend

    pool = _pool(tmp_path, 1)
    (tmp_path / "elsewhere").mkdir()
    noise_png(tmp_path / "elsewhere" / "real.png", 7)
    os.symlink(tmp_path / "elsewhere" / "real.png", pool / "linked.png")
    backend = Backend.__new__(Backend)  # only what _image_path reads
    backend.uid, backend.local_root = "u", os.path.realpath(tmp_path)
    task = {"id": 1, "data": {"image": "/data/local-files/?d=pool/linked.png"}}
    assert backend._image_path(task, {}, []) == str(pool / "linked.png")
    task = {"id": 2, "data": {"image": "/data/local-files/?d=pool/../../x.png"}}
    assert backend._image_path(task, {}, []) is None  # nothing above the document root
