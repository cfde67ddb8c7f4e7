"""MIAL heat maps (paper Fig. 6): box sums against a brute-force loop, maps from a MIAL
detector, and the PNG they are drawn into."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from activedet.errors import ActivedetError
from activedet.models.detection_adapter import DetectionAdapter, detection_adapter
from activedet.report.mial_heatmap import box_sum_map, image_heatmaps, save_heatmap, write_run_heatmaps
from tests.conftest import make_detection_dataset, tiny_config



def _brute_force(values: np.ndarray, boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w))
    for v, (x1, y1, x2, y2) in zip(values, boxes):
        for y in range(h):
            for x in range(w):
                if x1 <= x + 0.5 < x2 and y1 <= y + 0.5 < y2:
                    out[y, x] += v
    return out


def test_box_sum_map_matches_a_pixel_loop() -> None:
    rng = np.random.default_rng(0)
    h, w = 9, 13
    xy = rng.uniform(-4, 16, (40, 2))
    wh = rng.uniform(0.3, 8, (40, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    boxes[0] = [2, 3, 5, 4]  # integer edges
    boxes[1] = [20, 20, 30, 30]  # outside the image
    vals = rng.uniform(0, 1, 40)
    got = box_sum_map(vals, boxes, (h, w))
    assert got.shape == (h, w)
    np.testing.assert_allclose(got, _brute_force(vals, boxes, h, w), atol=1e-12)
    signed = vals - 0.5  # negative values are summed too
    np.testing.assert_allclose(box_sum_map(signed, boxes, (h, w)), _brute_force(signed, boxes, h, w), atol=1e-12)
    with pytest.raises(ValueError, match="boxes"):
        box_sum_map(vals, boxes[:3], (h, w))


def _mial_adapter(num_classes: int) -> DetectionAdapter:
    ad = detection_adapter(tiny_config().model, num_classes, "mial", "cpu", {})
    ad.reset(0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # spread f1 / f2 apart so the uncertainty map is not rounding noise
        for name, p in ad.model.head.named_parameters():
            if name.startswith(("f1.", "f2.")) and name.endswith("bias") and "cls_logits" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    return ad


@pytest.mark.parametrize("num_classes", [1, 3])
def test_heatmaps_of_an_image_are_nonnegative_and_drawn_to_size(num_classes: int, tmp_path) -> None:
    ds = make_detection_dataset(n=2, size=48, num_classes=num_classes)
    ad = _mial_adapter(num_classes)
    maps = image_heatmaps(ad, ds, 1)
    assert set(maps) == {"uncertainty", "mil"}
    for name, m in maps.items():
        assert m.shape == (48, 48), name
        assert np.isfinite(m).all() and (m >= 0).all() and m.max() > 0, name
    # the map's total is each anchor's value times the pixels its box covers
    inf = next(iter(ad.infer(ds, [1], keep_anchors=True)))
    p1, p2 = torch.sigmoid(inf.extra["cls_logits"]), torch.sigmoid(inf.extra["cls_logits2"])
    u = (p1 - p2).abs().double().mean(1).numpy()
    a = inf.extra["anchors"].double().numpy()
    areas = np.array([box_sum_map(np.ones(1), a[i:i + 1], (48, 48)).sum() for i in range(len(u))])
    assert maps["uncertainty"].sum() == pytest.approx(float(u @ areas), rel=1e-5)

    path = save_heatmap(ds.load_image(1), maps, tmp_path / "sub" / "h.png", title="t", panel_px=120)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.size == (360, 120)  # image + two overlays, 120 px each
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 0  # something was drawn


def test_save_heatmap_rejects_a_map_of_the_wrong_size(tmp_path) -> None:
    with pytest.raises(ValueError, match="map"):
        save_heatmap(np.zeros((10, 12, 3)), {"u": np.zeros((12, 10))}, tmp_path / "x.png")


def test_run_heatmaps_need_a_mial_run(tmp_path) -> None:
    from activedet.loop.ledger import Ledger

    with Ledger(tmp_path, create=True) as ledger:
        ledger.set_meta(strategy="random")
    with pytest.raises(ActivedetError, match="mial"):
        write_run_heatmaps(tmp_path, tmp_path / "out", 2)
    with pytest.raises(ActivedetError, match=">= 1"):
        write_run_heatmaps(tmp_path, tmp_path / "out", 0)
