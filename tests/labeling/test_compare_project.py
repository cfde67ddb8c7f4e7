"""``activedet compare --project DIR``: the protocol replayed on a labeling project's labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from activedet.cli import main


@pytest.mark.slow
def test_compare_replays_on_the_labels_of_a_select_project(tmp_path: Path, trees_files: Path, capsys) -> None:
    from tests.labeling.conftest import annotator_export, tiny_detector

    labeled = tmp_path / "none.json"  # start from nothing: round 0 is drawn at random, no training
    labeled.write_text(json.dumps({"images": [], "annotations": [],
                                   "categories": json.loads((trees_files / "all" / "annotations.json").read_text())[
                                       "categories"]}))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_detector(
        dataset={"train": str(labeled), "unlabeled": str(trees_files / "all" / "images"),
                 "test": str(trees_files / "test" / "annotations.json")},
        loop={"initial": 3, "per_cycle": 3, "cycles": 1})))
    project = tmp_path / "project"
    capsys.readouterr()
    assert main(["select", str(cfg), "--project", str(project), "--budget", "8", "--quiet", "--json"]) == 0
    batch = [Path(r["path"]).name for r in json.loads(capsys.readouterr().out)["batch"]]
    assert main(["ingest", "--project", str(project), str(annotator_export(trees_files, batch,
                                                                            tmp_path / "labels.json"))]) == 0
    out = tmp_path / "cmp"
    capsys.readouterr()
    assert main(["compare", str(cfg), "--project", str(project), "--strategies", "random", "--seeds", "1",
                 "--out", str(out), "--quiet", "--json", "--unit", "images"]) == 0  # detection's default: boxes
    summary = json.loads(capsys.readouterr().out)
    rounds = summary["strategies"]["random"]
    assert rounds["images"] == [3.0, 6.0]  # the protocol replayed on the 8 ingested images
    data = json.loads((out / "data" / "labeled.json").read_text())
    assert sorted(Path(im["file_name"]).name for im in data["images"]) == sorted(batch)
