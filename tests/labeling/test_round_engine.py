"""``select`` on the round engine (:mod:`activedet.loop.engine`), as ``simulate`` uses it:
the test split from its own image root, verified; checkpoints loaded only with the
checksum recorded when they were written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from activedet.cli import main
from tests.labeling.conftest import make_project_config

pytestmark = pytest.mark.slow


def _select(capsys, cfg: Path, project: Path, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["select", str(cfg), "--project", str(project), "--budget", "3", "--quiet", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def ids_of(res: dict) -> list[int]:
    return [r["image_id"] for r in res["batch"]]


def _moved_test_split(tmp_path: Path, trees_files: Path) -> Path:
    """The test tiles' json in one folder, their images in another (``dataset.test_images``)."""
    (tmp_path / "test_json").mkdir()
    shutil.copy(trees_files / "test" / "annotations.json", tmp_path / "test_json" / "annotations.json")
    shutil.copytree(trees_files / "test", tmp_path / "test_pixels")
    (tmp_path / "test_pixels" / "annotations.json").unlink()
    return tmp_path / "test_pixels"


def test_select_evaluates_on_test_images_and_verifies_them(tmp_path: Path, trees_files: Path, capsys) -> None:
    ids = [im["id"] for im in json.loads((trees_files / "all" / "annotations.json").read_text())["images"]]
    pixels = _moved_test_split(tmp_path, trees_files)
    cfg = make_project_config(tmp_path, trees_files, ids[:6], pool="text")
    data = yaml.safe_load(cfg.read_text())
    data["dataset"].update(test=str(tmp_path / "test_json" / "annotations.json"), test_images=str(pixels))
    cfg.write_text(yaml.safe_dump(data))

    first = _select(capsys, cfg, tmp_path / "project")
    assert first["trained"] and "AP50" in first["metrics"]  # evaluated on the images under test_images

    # a damaged test image is named before anything trains, and the project is left as it was
    victim = sorted((pixels / "images").iterdir())[0]
    victim.write_bytes(b"not an image")
    capsys.readouterr()
    assert main(["select", str(cfg), "--project", str(tmp_path / "other"), "--budget", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert victim.name in err and "test" in err
    assert not (tmp_path / "other" / "checkpoints").exists()


def test_select_never_loads_a_checkpoint_whose_checksum_differs(tmp_path: Path, trees_files: Path, capsys,
                                                                monkeypatch) -> None:
    ids = [im["id"] for im in json.loads((trees_files / "all" / "annotations.json").read_text())["images"]]
    cfg = make_project_config(tmp_path, trees_files, ids[:6], pool="text")
    project = tmp_path / "project"
    first = _select(capsys, cfg, project)
    assert first["trained"]
    again = _select(capsys, cfg, project, "--replace")
    assert not again["trained"] and ids_of(again) == ids_of(first)  # reused: the checksum matches

    # a valid checkpoint with other weights put in its place: trained again, never loaded
    ckpt = project / "checkpoints" / "round_000.pt"
    state = torch.load(ckpt, weights_only=True)
    state["model"] = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, ckpt)
    loaded = []
    import activedet.loop.engine as engine

    real = engine.load_checkpoint

    def spy(adapter, path, sha256=None):
        loaded.append(sha256)
        return real(adapter, path, sha256)

    monkeypatch.setattr(engine, "load_checkpoint", spy)
    third = _select(capsys, cfg, project, "--replace")
    assert third["trained"] and ids_of(third) == ids_of(first)  # the same seeds: the same model again
    assert loaded and all(s is not None for s in loaded)  # every load checked a recorded checksum
