"""Every image of the train, test and reference splits is decoded before a run records
anything; bad pool images are quarantined under ``dataset.bad_images: skip``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from activedet.cli import main
from activedet.data.coco import load_coco
from activedet.data.verify import VerifiedCache, find_unreadable, verify_images
from activedet.errors import DatasetError
from activedet.loop.ledger import Ledger
from tests.conftest import make_detection_dataset


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a PNG short: the header (and so width/height) stays readable."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def coco_splits(tmp: Path, n_train: int = 16) -> tuple[Path, Path]:
    train = make_detection_dataset(n=n_train, seed=1).export_coco(tmp / "train")
    test = make_detection_dataset(n=6, seed=2, start_id=1000).export_coco(tmp / "test")
    return train, test


def image_path(json_path: Path, image_id: int) -> Path:
    coco = json.loads(json_path.read_text())
    entry = next(im for im in coco["images"] if im["id"] == image_id)
    return json_path.parent / entry["file_name"]


def write_cfg(tmp: Path, train: Path, test: Path, **dataset) -> Path:
    cfg = {
        "seed": 3, "device": "cpu",
        "dataset": {"train": str(train), "test": str(test), **dataset},
        "model": {"arch": "fcos", "backbone": "mobilenet_v2", "pretrained": False, "image_size": 64},
        "train": {"epochs": 1, "batch_size": 4},
        "loop": {"initial": 4, "per_cycle": 3, "cycles": 1},
        "strategy": {"name": "random"},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_truncated_image_passes_the_loader_but_not_verification(tmp_path: Path) -> None:
    train, _ = coco_splits(tmp_path)
    truncate(image_path(train, 5))
    data = load_coco(train)  # header intact: the loader cannot tell
    bad = find_unreadable(data, "train", progress=False)
    assert [b.image_id for b in bad] == [5]
    with pytest.raises(DatasetError, match=r"image id 5") as e:
        verify_images(data, "train", "error", progress=False)
    assert str(image_path(train, 5)) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("split", ["train", "test", "reference"])
@pytest.mark.parametrize("damage", ["truncated", "zero-byte"])
def test_bad_image_stops_simulate_before_any_round(tmp_path: Path, capsys, split: str, damage: str) -> None:
    train, test = coco_splits(tmp_path)
    reference = make_detection_dataset(n=4, seed=5, start_id=2000).export_coco(tmp_path / "ref")
    json_path, iid = {"train": (train, 7), "test": (test, 1003), "reference": (reference, 2001)}[split]
    path = image_path(json_path, iid)
    if damage == "truncated":
        truncate(path)
    else:
        path.write_bytes(b"")
    policy = "error" if split == "train" else "skip"  # skip covers the pool only, never test/reference
    cfg = write_cfg(tmp_path, train, test, reference=str(reference), bad_images=policy)
    run_dir = tmp_path / "run"
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(path) in err and f"image id {iid}" in err, err
    assert not (run_dir / "ledger.sqlite").exists()


def test_skip_quarantines_bad_pool_images_and_status_lists_them(tmp_path: Path, capsys) -> None:
    train, test = coco_splits(tmp_path)
    truncate(image_path(train, 4))
    cfg = write_cfg(tmp_path, train, test, bad_images="error")
    assert main(["simulate", str(cfg), "--out", str(tmp_path / "r0"), "--quiet"]) == 2
    assert "image id 4" in capsys.readouterr().err
    cfg = write_cfg(tmp_path, train, test, bad_images="skip")
    run_dir = tmp_path / "run"
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--quiet"]) == 0
    capsys.readouterr()
    with Ledger(run_dir) as ledger:
        status = ledger.status()
    assert list(status["quarantined"]) == ["4"] and status["pool_size"] == 15
    assert all(4 not in r["selected"] for r in status["rounds"])
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "quarantined 1 unreadable pool image" in out and "4" in out
    # a resume sees the same quarantine and finishes without re-doing anything
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--resume", "--quiet"]) == 0
    capsys.readouterr()
    # repaired since: the resumed run keeps the pool it started with
    image_path(train, 4).write_bytes(image_path(train, 5).read_bytes())
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--resume", "--quiet", "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert list(resumed["quarantined"]) == ["4"] and resumed["rounds"] == status["rounds"]
    # broken since: resuming would change the pool, so it is refused, naming the image
    truncate(image_path(train, 6))
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train image id 6 became unreadable" in err and len(err.strip().splitlines()) == 1


def test_cache_skips_verified_files_until_they_change(tmp_path: Path, private_cache: Path, monkeypatch) -> None:
    import activedet.data.verify as verify

    train, _ = coco_splits(tmp_path, n_train=8)
    data = load_coco(train)
    decoded: list[Path] = []
    real = verify.decode_error

    def counting(path: Path) -> str | None:
        decoded.append(path)
        return real(path)

    monkeypatch.setattr(verify, "decode_error", counting)
    assert find_unreadable(data, "train", progress=False) == []
    assert len(decoded) == 8
    assert find_unreadable(data, "train", progress=False) == []
    assert len(decoded) == 8, "a second verification of unchanged files decodes nothing"
    path = image_path(train, 3)
    time.sleep(0.01)
    truncate(path, 0.7)  # size and mtime change: verified again, and found bad
    bad = find_unreadable(data, "train", progress=False)
    assert [b.image_id for b in bad] == [3] and decoded[-1] == path and len(decoded) == 9
    assert (private_cache / VerifiedCache.FILENAME).is_file()


def test_unwritable_cache_is_not_an_error(tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv("ACTIVEDET_CACHE_DIR", str(blocker / "sub"))
    train, _ = coco_splits(tmp_path, n_train=4)
    assert find_unreadable(load_coco(train), "train", progress=False) == []
