"""select → ingest → select on real photos (built-in trees), equivalence with simulate,
kill -9 during select, an interrupted ingest, and bad input at the command line."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from activedet.cli import main
from activedet.data.coco import load_coco
from activedet.labeling import store
from activedet.loop.ledger import Ledger
from tests.labeling.conftest import annotator_export, gt, make_project_config, tiny_detector, write_subset

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def cli_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def select(capsys, cfg: Path, project: Path, budget: int, *extra: str) -> dict:
    return cli_json(capsys, "select", str(cfg), "--project", str(project), "--budget", str(budget), "--quiet",
                    *extra)


def batch_files(res: dict) -> list[str]:
    return [Path(r["path"]).name for r in res["batch"]]


def test_select_ingest_select_on_trees(tmp_path: Path, trees_files: Path, capsys) -> None:
    ids = [im["id"] for im in gt(trees_files)["images"]]
    cfg = make_project_config(tmp_path, trees_files, ids[:8])
    project = tmp_path / "project"
    first = select(capsys, cfg, project, 6)
    assert first["round"] == 1 and first["trained"] and len(first["batch"]) == 6
    batch1 = [r["image_id"] for r in first["batch"]]
    assert not set(batch1) & set(ids[:8])  # the labeled tiles sit in the pool folder: excluded by path
    out = project / "rounds" / "001"
    rows = list(csv.DictReader((out / "batch.csv").open()))
    assert [int(r["image_id"]) for r in rows] == batch1 and all(r["score"] for r in rows)
    coco = json.loads((out / "batch.coco.json").read_text())
    assert [im["id"] for im in coco["images"]] == batch1 and all("score" in a for a in coco["annotations"])
    tasks = json.loads((out / "labelstudio" / "tasks.json").read_text())
    assert [t["predictions"][0]["model_version"] for t in tasks] == ["entropy-round001"] * 6
    assert '<Label value="tree"/>' in (out / "labelstudio" / "config.xml").read_text()
    assert cli_json(capsys, "status", str(project))["labeling"]["pending_round"] == 1
    assert main(["status", str(project)]) == 0
    assert "PENDING: 0 of 6 labeled" in capsys.readouterr().out

    # a second select while round 1 is pending is refused and says how to proceed
    capsys.readouterr()
    assert main(["select", str(cfg), "--project", str(project), "--budget", "6", "--quiet"]) == 2
    assert "--replace" in capsys.readouterr().err
    # --replace with nothing labeled: round 1 again, same model (reused), same ranking
    again = select(capsys, cfg, project, 4, "--replace")
    assert again["round"] == 1 and not again["trained"] and again["dropped"] == 6
    assert [r["image_id"] for r in again["batch"]] == batch1[:4]
    batch1 = batch1[:4]

    export = annotator_export(trees_files, batch_files(again), tmp_path / "labels.json")
    truth = json.loads(export.read_text())
    res = cli_json(capsys, "ingest", "--project", str(project), str(export))
    base_boxes = sum(1 for a in gt(trees_files)["annotations"] if a["image_id"] in set(ids[:8]))
    assert res["added"] == 4 and res["remaining"] == 0 and res["round"] == 1
    assert res["labeled_images"] == 8 + 4 and res["labeled_boxes"] == base_boxes + len(truth["annotations"])
    twice = cli_json(capsys, "ingest", "--project", str(project), str(export))
    assert twice["added"] == twice["updated"] == 0 and twice["unchanged"] == 4  # idempotent
    status = cli_json(capsys, "status", str(project))
    assert status["labeling"]["pending_round"] is None
    assert [r["labeled_images"] for r in status["rounds"]] == [8, 12]

    # the labeled set as one COCO file: exactly the labeled tiles and their boxes
    counts = cli_json(capsys, "export", "--project", str(project), "--format", "coco", str(tmp_path / "out" / "all.json"))
    exported = load_coco(tmp_path / "out" / "all.json")
    assert counts["images"] == len(exported) == 12 and sum(exported.num_boxes(i) for i in exported.ids) == \
        base_boxes + len(truth["annotations"])
    rounds = {im["id"]: im["activedet_round"] for im in json.loads((tmp_path / "out" / "all.json").read_text())["images"]}
    assert sorted(i for i, r in rounds.items() if r == 1) == sorted(batch1)

    second = select(capsys, cfg, project, 5)
    batch2 = [r["image_id"] for r in second["batch"]]
    assert second["round"] == 2 and second["trained"] and len(batch2) == 5
    assert not set(batch2) & (set(batch1) | set(ids[:8]))

    # a budget in boxes: images are taken in rank order while their predicted boxes fit
    boxes = select(capsys, cfg, project, 3, "--replace", "--unit", "boxes")
    rows = list(csv.DictReader((Path(boxes["dir"]) / "batch.csv").open()))
    assert boxes["round"] == 2 and not boxes["trained"] and 1 <= len(rows) <= 3
    assert sum(max(1, int(r["predicted_boxes"])) for r in rows) <= 3
    assert [r["image_id"] for r in boxes["batch"]] == batch2[:len(rows)]  # the same ranking

    # a correction to a closed round's box is applied and recorded as a revision, in the
    # same file as the pending round's new labels (the whole project exported again)
    export2 = annotator_export(trees_files, batch_files(boxes), tmp_path / "labels2.json")
    changed = json.loads(export.read_text())
    new = json.loads(export2.read_text())
    changed["annotations"][0]["bbox"][2] += 3.0
    offset = max(a["id"] for a in changed["annotations"])
    changed["images"] += new["images"]
    changed["annotations"] += [dict(a, id=a["id"] + offset) for a in new["annotations"]]
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    res = cli_json(capsys, "ingest", "--project", str(project), str(tmp_path / "changed.json"))
    assert res["corrected"] == 1 and res["added"] == len(new["images"]) and res["remaining"] == 0
    with Ledger(project) as ledger:
        (rev,) = store.revisions(ledger.conn)
        now = {row.image_id: row for row in store.labels(ledger.conn)}
    assert rev["round"] == 1 and rev["source"].endswith("changed.json")
    assert rev["boxes"] == now[rev["image_id"]].boxes != rev["old_boxes"]
    assert cli_json(capsys, "ingest", "--project", str(project), str(tmp_path / "changed.json"))["corrected"] == 0


def test_select_matches_simulate_and_survives_kill_9(tmp_path: Path, trees_files: Path, capsys) -> None:
    """The same seed and labeled set give simulate's round-1 batch, even when select is
    killed -9 once after training and run again."""
    sim_cfg = tmp_path / "sim.yaml"
    sim_cfg.write_text(yaml.safe_dump(tiny_detector(
        dataset={"train": str(trees_files / "all" / "annotations.json"),
                 "test": str(trees_files / "test" / "annotations.json")},
        loop={"initial": 8, "per_cycle": 5, "cycles": 1})))
    assert main(["simulate", str(sim_cfg), "--out", str(tmp_path / "sim"), "--quiet"]) == 0
    with Ledger(tmp_path / "sim") as ledger:
        rounds = ledger.rounds()
    round0, round1 = rounds[0]["selected"], rounds[1]["selected"]

    cfg = make_project_config(tmp_path, trees_files, round0, pool="coco")  # labeled file in round-0 order
    project = tmp_path / "project"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "activedet.cli", "select", str(cfg), "--project", str(project), "--budget", "5",
            "--quiet", "--json"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = project / "checkpoints" / "round_000.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert ckpt.exists(), "select never reached its checkpoint"
    with Ledger(project) as ledger:
        killed_before_recording = not any(r["round"] == 1 for r in ledger.rounds())
    if killed_before_recording:
        res = select(capsys, cfg, project, 5)
    else:  # it finished before the kill landed: its recorded batch is the answer
        with Ledger(project) as ledger:
            res = {"batch": [{"image_id": b.image_id} for b in store.batch(ledger.conn, 1)]}
    assert [r["image_id"] for r in res["batch"]] == round1


def test_interrupted_ingest_leaves_nothing_half_merged(tmp_path: Path, trees_files: Path, capsys,
                                                       monkeypatch) -> None:
    ids = [im["id"] for im in gt(trees_files)["images"]]
    cfg = make_project_config(tmp_path, trees_files, ids[:6], pool="text")
    project = tmp_path / "project"
    res = select(capsys, cfg, project, 4)
    export = annotator_export(trees_files, batch_files(res), tmp_path / "labels.json")
    before = cli_json(capsys, "status", str(project))

    calls = []

    def crash_on_second(conn, row):
        calls.append(row.image_id)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C mid-merge
        real_put(conn, row)

    real_put = store.put_label
    monkeypatch.setattr(store, "put_label", crash_on_second)
    assert main(["ingest", "--project", str(project), str(export)]) == 130
    monkeypatch.setattr(store, "put_label", real_put)
    assert len(calls) == 2
    with Ledger(project) as ledger:
        assert store.labels(ledger.conn) == []
    assert cli_json(capsys, "status", str(project)) == before

    # an image of the pool that is not in the batch: rejected, nothing merged
    outsider = next(im for im in gt(trees_files)["images"]
                    if im["id"] not in set(ids[:6]) | {r["image_id"] for r in res["batch"]})
    bad = json.loads(export.read_text())
    bad["images"].append(dict(outsider, file_name=outsider["file_name"].split("/", 1)[1]))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    capsys.readouterr()
    assert main(["ingest", "--project", str(project), str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert "is not in any batch of this project" in err and "bad.json" in err and len(err.strip().splitlines()) == 1
    assert cli_json(capsys, "status", str(project)) == before

    done = cli_json(capsys, "ingest", "--project", str(project), str(export))
    assert done["added"] == 4 and done["labeled_images"] == 10


def test_bad_project_input_exits_2_with_one_line(tmp_path: Path, trees_files: Path, capsys) -> None:
    ids = [im["id"] for im in gt(trees_files)["images"]]
    labeled = write_subset(trees_files, f"labeled_{tmp_path.name}.json", ids[:4])
    no_pool = tmp_path / "no_pool.yaml"
    no_pool.write_text(yaml.safe_dump(tiny_detector(dataset={"train": str(labeled)})))
    (tmp_path / "pool.txt").write_text("all/images/does_not_exist.png\n")
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump(tiny_detector(dataset={"train": str(labeled),
                                                             "unlabeled": str(tmp_path / "pool.txt")})))
    cases = [
        (["select", str(no_pool), "--project", str(tmp_path / "p"), "--budget", "2"], "dataset.unlabeled"),
        (["select", str(missing), "--project", str(tmp_path / "p"), "--budget", "2"], "line 1: image file not found"),
        (["select", str(missing), "--project", str(tmp_path / "p"), "--budget", "0"], "--budget must be a positive"),
        (["ingest", "--project", str(tmp_path / "nothing"), str(labeled)], "no labeling project"),
        (["export", "--project", str(tmp_path / "nothing"), str(tmp_path / "o.json")], "no labeling project"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)
    assert not (tmp_path / "p" / "ledger.sqlite").exists()

    # a budget larger than the pool is refused before anything trains
    capsys.readouterr()
    pool_size = len(ids) - 4
    whole = make_project_config(tmp_path, trees_files, ids[:4], name="whole.yaml")
    assert main(["select", str(whole), "--project", str(tmp_path / "big"), "--budget", "500", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--budget 500 but only {pool_size} pool images are unlabeled" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "big" / "checkpoints").exists()

    # an unreadable pool image is named before anything trains; no batch is recorded
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    names = {im["id"]: im["file_name"] for im in gt(trees_files)["images"]}
    (tmp_path / "pool.txt").write_text(f"{trees_files / 'all' / names[ids[5]]}\nbroken.png\n")
    capsys.readouterr()
    assert main(["select", str(missing), "--project", str(tmp_path / "p"), "--budget", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot decode image" in err and "broken.png" in err and len(err.splitlines()) == 1
    assert "bad_images: skip" in err and not (tmp_path / "p" / "checkpoints").exists()
    with Ledger(tmp_path / "p") as ledger:
        assert (ledger.meta().get("labeling") or {}).get("pending_round") is None
