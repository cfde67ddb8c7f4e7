"""The detection adapter against torchvision's own forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activedet.errors import ConfigError
from activedet.models.detection import anchor_sizes, packaged_weights_path
from activedet.models.detection_adapter import DetectionAdapter, pool_levels, detection_adapter
from tests.conftest import make_detection_dataset, make_mixed_size_dataset, tiny_config


@pytest.mark.parametrize("arch", ["retinanet", "fcos"])
def test_dense_inference_matches_torchvision(arch: str) -> None:
    cfg = tiny_config(**{"model.arch": arch})
    ds = make_detection_dataset(n=3)
    ad = detection_adapter(cfg.model, ds.num_classes, device="cpu")
    ad.reset(0)
    # random (tie-free) logits so the untrained model emits detections; the background
    # channel 0 is pushed down (our inference never reports it, torchvision's would)
    head = ad.model.head.classification_head
    with torch.no_grad():
        torch.manual_seed(0)
        for p in head.parameters():
            p.normal_(0, 0.03)
        head.cls_logits.bias[0::ds.num_classes + 1] = -30.0
    ours = list(ad.infer(ds, ds.ids, batch_size=2))
    ad.model.eval()
    with torch.no_grad():
        ref = ad.model([ds.load_image(i) for i in ds.ids])
    assert any(len(o.boxes) for o in ours)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o.boxes, r["boxes"], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(o.scores, r["scores"])
        assert torch.equal(o.labels, r["labels"])
        # probabilities of kept detections: the chosen class's probability is the score (RetinaNet)
        assert o.probs.shape == (len(o.boxes), ds.num_classes)
        if arch == "retinanet":
            torch.testing.assert_close(o.probs[torch.arange(len(o.labels)), o.labels - 1], o.scores)
        assert o.extra["cls_logits"].shape[1] == ds.num_classes
        assert o.extra["anchors"].shape == (o.extra["cls_logits"].shape[0], 4)


def test_faster_rcnn_inference_and_probs() -> None:
    """Faster R-CNN: the detections are torchvision's own, and each one's class
    probabilities are those of the RoI that produced its score (the probability of its
    label is its score, exactly), not probabilities re-pooled at the regressed box."""
    cfg = tiny_config(**{"model.arch": "faster_rcnn"})
    ds = make_detection_dataset(n=2)
    ad = detection_adapter(cfg.model, ds.num_classes)
    ad.reset(0)
    with torch.no_grad():  # a box regressor that moves boxes, so re-pooling at them would differ
        torch.manual_seed(0)
        ad.model.roi_heads.box_predictor.bbox_pred.weight.normal_(0, 0.05)
    out = list(ad.infer(ds, ds.ids))
    ad.model.eval()
    with torch.no_grad():
        ref = ad.model([ds.load_image(i) for i in ds.ids])
    assert [o.image_id for o in out] == ds.ids
    assert sum(len(o.boxes) for o in out) > 10
    for o, r in zip(out, ref):
        torch.testing.assert_close(o.boxes, r["boxes"], rtol=1e-5, atol=1e-4)
        assert torch.equal(o.scores, r["scores"]) and torch.equal(o.labels, r["labels"])
        assert o.probs.shape == (len(o.boxes), ds.num_classes)
        assert torch.all(o.probs.sum(1) <= 1 + 1e-5)
        assert torch.equal(o.probs[torch.arange(len(o.labels)), o.labels - 1], o.scores)


def test_reset_is_deterministic_and_leaves_global_rng() -> None:
    cfg = tiny_config()
    a, b = detection_adapter(cfg.model, 2), detection_adapter(cfg.model, 2)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a.reset(5)
    after = torch.rand(1)
    b.reset(5)
    assert torch.equal(before, after)
    for (n1, p1), (_, p2) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p1, p2), n1


def test_gradient_parameters_per_arch() -> None:
    for arch, n in [("retinanet", 2), ("fcos", 3), ("faster_rcnn", 4)]:
        ad = detection_adapter(tiny_config(**{"model.arch": arch}).model, 2)
        ad.reset(0)
        params = ad.gradient_parameters()
        assert len(params) == n and all(name.endswith("weight") for name, _ in params)


def test_features_shape_and_anchor_scaling() -> None:
    cfg = tiny_config()
    ds = make_detection_dataset(n=3)
    ad = detection_adapter(cfg.model, 2)
    ad.reset(0)
    f = ad.features(ds, ds.ids, batch_size=2)
    assert f.shape[0] == 3 and f.ndim == 2
    assert anchor_sizes(cfg.model, 5) == pytest.approx((16.0, 32.0, 64.0, 128.0, 256.0))  # clamped
    big = tiny_config(**{"model.image_size": 1000}).model
    assert anchor_sizes(big, 3) == pytest.approx((40.0, 80.0, 160.0))  # 32 px at 800, scaled
    own = tiny_config(**{"model.anchor_scale": 6.0}).model
    assert anchor_sizes(own, 2) == pytest.approx((6.0, 12.0))


@pytest.mark.parametrize("arch", ["retinanet", "fcos", "faster_rcnn"])
@pytest.mark.parametrize("pooling", ["mean", "foreground"])
def test_features_of_a_mixed_size_pool_in_batches_equal_one_by_one(arch: str, pooling: str) -> None:
    """A detector pads a batch to its largest image; features come from batches of one
    size, so a row is the image's own and rows come back in the order asked for."""
    ds = make_mixed_size_dataset()
    ad = detection_adapter(tiny_config(**{"model.arch": arch}).model, 2)
    ad.reset(0)
    ids = [6, 1, 3, 2, 5, 4]
    together = ad.features(ds, ids, batch_size=8, pooling=pooling)
    alone = np.concatenate([ad.features(ds, [i], 1, pooling=pooling) for i in ids])
    assert together.shape == alone.shape and together.shape[0] == len(ids)
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    other = ad.features(ds, ids, 8, pooling="mean" if pooling == "foreground" else "foreground")
    assert not np.allclose(together, other)


def test_pool_levels_by_hand() -> None:
    x = torch.arange(8.0).reshape(1, 2, 2, 2)  # one image, D = 2 channels, 2 x 2 locations
    p = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]]])  # foreground probability per location
    (mean,) = pool_levels([x], None)
    (fg,) = pool_levels([x], [p])
    torch.testing.assert_close(mean, torch.tensor([[1.5, 5.5]]))
    # channel 0 holds 0 1 2 3: (1·0 + 0.5·2) / 4; channel 1 holds 4 5 6 7: (1·4 + 0.5·6) / 4
    torch.testing.assert_close(fg, torch.tensor([[0.25, 1.75]]))
    (none,) = pool_levels([x], [torch.zeros_like(p)])  # nothing the detector sees: the origin
    assert torch.equal(none, torch.zeros(1, 2))


def test_features_refuse_an_unknown_pooling() -> None:
    ds = make_detection_dataset(n=1)
    ad = detection_adapter(tiny_config().model, 2)
    ad.reset(0)
    with pytest.raises(ConfigError, match="'max'"):
        ad.features(ds, ds.ids, pooling="max")


def test_packaged_mobilenet_weights_are_torchvisions_checkpoint() -> None:
    path = packaged_weights_path("mobilenet_v2")
    assert path is not None and path.name == "mobilenet_v2-b0353104.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)


def test_offline_backbone_is_never_replaced_without_offline_fallback(monkeypatch, tmp_path, caplog) -> None:
    import activedet.models.detection as det
    from activedet.errors import ConfigError
    from activedet.models.factory import build_adapter

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(det.torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    monkeypatch.setattr(det.torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict",
                        offline, raising=False)
    assert det.packaged_weights_path("mobilenet_v2") is not None  # installed by `make`
    # the default: a hard error naming the missing file and the ways out
    with pytest.raises(ConfigError) as err:
        det.resolve_backbone("resnet18", True)
    msg = str(err.value)
    assert "backbone 'resnet18'" in msg and "resnet18-f37072fd.pth" in msg
    assert "model.backbone: mobilenet_v2" in msg and "model.offline_fallback: true" in msg
    cfg = tiny_config(**{"model.backbone": "resnet18", "model.pretrained": True})
    with pytest.raises(ConfigError, match="resnet18"):
        detection_adapter(cfg.model, 2)
    assert det.resolve_backbone("resnet18", False) == "resnet18"
    # asked for explicitly: the packaged MobileNetV2, and the config records what is built
    with caplog.at_level("WARNING"):
        assert det.resolve_backbone("resnet18", True, offline_fallback=True) == "mobilenet_v2"
    assert "offline_fallback" in caplog.text
    cfg = tiny_config(**{"model.backbone": "resnet18", "model.pretrained": True, "model.offline_fallback": True})
    ad = build_adapter(cfg, 2)
    assert ad.cfg.backbone == "mobilenet_v2" and cfg.model.backbone == "mobilenet_v2"
    monkeypatch.setattr(det, "packaged_weights_path", lambda backbone: None)
    with pytest.raises(ConfigError, match="no pretrained ImageNet weights for backbone 'resnet18'"):
        det.resolve_backbone("resnet18", True, offline_fallback=True)
