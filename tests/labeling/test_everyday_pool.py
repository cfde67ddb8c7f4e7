"""A pool of everyday files: phone photos with EXIF orientation, images in 16-bit and
float modes, files that are not images, the user's own category ids, and Ctrl-C."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from activedet.cli import main
from activedet.data.base import image_size, read_image_rgb
from activedet.data.coco import load_coco
from activedet.doctor import diagnose
from activedet.errors import DatasetError

CATEGORIES = [{"id": 3, "name": "car"}, {"id": 7, "name": "person"}, {"id": 42, "name": "tree"}]


def phone_photo(path: Path, orientation: int = 6) -> np.ndarray:
    """A JPEG stored 160 wide x 96 high with EXIF orientation tag ``orientation``: red in
    the stored top-left corner, the rest grey. Returns the stored pixels."""
    raw = np.full((96, 160, 3), 128, np.uint8)
    raw[:32, :48] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(raw).save(path, exif=exif, quality=95)
    return raw


def noise_png(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


# ---------------------------------------------------------------------------- reading
def test_exif_orientation_is_applied_as_a_browser_shows_it(tmp_path: Path) -> None:
    raw = phone_photo(tmp_path / "phone.jpg", 6)  # 6: shown turned 90 degrees clockwise
    assert image_size(tmp_path / "phone.jpg", "test") == (96, 160)
    shown = read_image_rgb(tmp_path / "phone.jpg")
    assert shown.shape == (160, 96, 3)
    expected = np.rot90(raw, k=-1)  # clockwise: the stored top-left corner goes to the top right
    assert np.abs(shown.astype(int) - expected.astype(int)).mean() < 2  # JPEG: close, not exact
    assert shown[:48, 64:, 0].mean() > 240 and shown[:48, :64, 0].mean() < 140  # red at the top right
    phone_photo(tmp_path / "upright.jpg", 1)
    assert image_size(tmp_path / "upright.jpg", "test") == (160, 96)


def test_wide_modes_keep_their_range_and_bad_ranges_are_refused(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 8).astype(np.uint16).reshape(8, 64)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # 16-bit grayscale
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
    got = read_image_rgb(tmp_path / "deep.png")
    assert got.shape == (8, 64, 3) and got.dtype == np.uint8
    assert np.abs(got[..., 0].astype(int) - np.rint(ramp / 257.0).astype(int)).max() <= 1  # not clipped at 255
    Image.fromarray(np.full((8, 8), 7.5, np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(DatasetError, match=r"float\.tiff.*mode F.*outside 0\.\.1"):
        read_image_rgb(tmp_path / "float.tiff")


def test_a_coco_file_in_the_stored_frame_is_explained(tmp_path: Path) -> None:
    phone_photo(tmp_path / "phone.jpg", 6)
    coco = {"images": [{"id": 1, "file_name": "phone.jpg", "width": 160, "height": 96}],
            "annotations": [], "categories": CATEGORIES}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match=r"phone\.jpg.*EXIF orientation 6 shows it as 96x160"):
        load_coco(tmp_path / "a.json")
    coco["images"][0].update(width=96, height=160)
    (tmp_path / "a.json").write_text(json.dumps(coco))
    assert load_coco(tmp_path / "a.json").record(1).width == 96


# ---------------------------------------------------------------------------- a project
def _project_config(tmp_path: Path, pool: Path, **dataset) -> Path:
    labeled = tmp_path / "labeled.json"  # the README's start from nothing: categories, no images
    labeled.write_text(json.dumps({"images": [], "annotations": [], "categories": CATEGORIES}))
    cfg = {"seed": 3, "device": "cpu", "task": "detection",
           "model": {"arch": "fcos", "backbone": "mobilenet_v2", "pretrained": False, "image_size": 64},
           "dataset": {"train": str(labeled), "unlabeled": str(pool), **dataset}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_phone_photos_round_trip_in_the_frame_the_annotator_sees(tmp_path: Path, capsys) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    phone_photo(pool / "phone.jpg", 6)
    noise_png(pool / "a.png", 1)
    cfg = _project_config(tmp_path, pool)
    project = tmp_path / "project"
    code, out, err = _run(capsys, "select", str(cfg), "--project", str(project), "--budget", "2", "--quiet",
                          "--json")
    assert code == 0, err
    batch = Path(json.loads(out)["dir"])
    coco = json.loads((batch / "batch.coco.json").read_text())
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in coco["images"]}
    assert sizes["phone.jpg"] == (96, 160)
    assert [c["id"] for c in coco["categories"]] == [3, 7, 42]  # the labeled file's own ids

    # what Label Studio exports for the phone photo: percentages of the frame it showed
    task = next(t for t in json.loads((batch / "labelstudio" / "tasks.json").read_text())
                if t["data"]["image"].endswith("phone.jpg"))
    box = {"x": 200 / 3, "y": 0.0, "width": 100 / 3, "height": 30.0, "rotation": 0, "rectanglelabels": ["tree"]}
    result = [{"type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": 96,
               "original_height": 160, "value": box}]
    export = [{"id": 1, "data": task["data"], "annotations": [{"id": 1, "result": result}]}]
    (tmp_path / "ls.json").write_text(json.dumps(export))
    code, out, err = _run(capsys, "ingest", "--project", str(project), str(tmp_path / "ls.json"), "--json")
    assert code == 0, err
    code, out, err = _run(capsys, "export", "--project", str(project), "--format", "coco",
                          str(tmp_path / "all.json"), "--json")
    assert code == 0, err
    data = json.loads((tmp_path / "all.json").read_text())
    (ann,) = data["annotations"]
    assert ann["bbox"] == pytest.approx([64.0, 0.0, 32.0, 48.0], abs=1e-3)  # in the shown 96x160 frame
    assert ann["category_id"] == 42 and [c["id"] for c in data["categories"]] == [3, 7, 42]
    # ... which is where the red corner is in the pixels training reads
    pixels = read_image_rgb(pool / "phone.jpg")
    assert pixels[:48, 64:, 0].mean() > 240 and pixels[48:, :, 0].mean() < 140

    # the same export in the stored frame is refused, saying why
    result[0].update(original_width=160, original_height=96)
    (tmp_path / "raw.json").write_text(json.dumps(export))
    code, out, err = _run(capsys, "ingest", "--project", str(project), str(tmp_path / "raw.json"))
    assert code == 2 and "EXIF orientation 6" in err and "shown" in err


def test_bad_pool_files_are_found_before_anything_runs(tmp_path: Path, capsys) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    for k in range(3):
        noise_png(pool / f"good{k}.png", k)
    (pool / "x.jpg").write_text("this is not an image")
    (pool / "empty.png").write_bytes(b"")
    cfg = _project_config(tmp_path, pool)

    problems, _ = diagnose(cfg)
    assert sum("x.jpg" in p for p in problems) == 1 and sum("empty.png" in p for p in problems) == 1
    assert not any("no images" in p for p in problems)  # an empty labeled set is how a project starts

    code, out, err = _run(capsys, "select", str(cfg), "--project", str(tmp_path / "p1"), "--budget", "2",
                          "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "bad_images: skip" in err and ("x.jpg" in err or "empty.png" in err)
    assert not (tmp_path / "p1" / "rounds").exists()

    data = yaml.safe_load(cfg.read_text())
    data["dataset"]["bad_images"] = "skip"
    cfg.write_text(yaml.safe_dump(data))
    code, out, err = _run(capsys, "select", str(cfg), "--project", str(tmp_path / "p2"), "--budget", "3",
                          "--quiet", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert sorted(Path(w.split(":")[0]).name for w in res["quarantined"].values()) == ["empty.png", "x.jpg"]
    assert sorted(Path(r["path"]).name for r in res["batch"]) == ["good0.png", "good1.png", "good2.png"]


def test_doctor_accepts_the_start_from_nothing_config(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    noise_png(pool / "a.png", 0)
    problems, checked = diagnose(_project_config(tmp_path, pool))
    assert problems == [] and "unlabeled 1 images" in checked


def test_ctrl_c_in_select_says_what_works(tmp_path: Path, capsys, monkeypatch) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    noise_png(pool / "a.png", 0)
    cfg = _project_config(tmp_path, pool)
    import activedet.labeling.project as project

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(project, "select", interrupted)
    code, out, err = _run(capsys, "select", str(cfg), "--project", str(tmp_path / "p"), "--budget", "1")
    assert code == 130 and "--resume" not in err and "run the same command again" in err
