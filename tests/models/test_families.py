"""Detector families: one module each in ``activedet.models.families``; a new family is one
new file there, and the config, the capability checks, the adapter factory and every
strategy that wants only what it provides take it from that file alone."""

from __future__ import annotations

import dataclasses
import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from activedet.data.pool import Pool
from activedet.errors import ConfigError, StrategyError
from activedet.models import families
from activedet.models.base import capabilities, known_archs
from activedet.models.detection_adapter import DenseDetectionAdapter, DetectionAdapter, detection_adapter
from activedet.models.factory import build_adapter
from activedet.strategies.base import Selection
from activedet.strategies.registry import build_strategy, get_strategy_class
from tests.conftest import make_detection_dataset, tiny_config

#: a fourth family, written as a user would: torchvision's RetinaNet with one square anchor per
#: location (a different detector from ``retinanet``'s nine), in one module and nothing else
ONEPOINT = '''
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator

from activedet.models.detection import anchor_sizes, build_backbone, transform_kwargs
from activedet.models.detection_adapter import DenseDetectionAdapter


class OnePointAdapter(DenseDetectionAdapter):
    arch = "onepoint"
    model_class = RetinaNet
    variants = ("plain",)
    gradient_names = ("head.classification_head.cls_logits.weight", "head.regression_head.bbox_reg.weight")

    @classmethod
    def build_model(cls, cfg, num_classes, head_factory=None):
        backbone = build_backbone(cfg.backbone, cfg.pretrained, "p6p7")
        gen = AnchorGenerator(tuple((s,) for s in anchor_sizes(cfg, 5)), ((1.0,),) * 5)
        return RetinaNet(backbone, num_classes + 1, anchor_generator=gen, score_thresh=cfg.score_thresh,
                         detections_per_img=cfg.detections_per_img, **transform_kwargs(cfg))

    def anchor_scores(self, head_out, b):
        return head_out["cls_logits"][b].sigmoid()

    def decode_boxes(self, regression, anchors):
        return self.model.box_coder.decode_single(regression, anchors)

    def loss_terms(self, targets, head_out, anchors, per_level):
        return self.model.compute_loss(targets, head_out, anchors)


Adapter = OnePointAdapter
'''


@pytest.fixture
def onepoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``onepoint.py`` in a folder added to the families package's path (as if dropped into
    ``src/activedet/models/families/``)."""
    (tmp_path / "onepoint.py").write_text(textwrap.dedent(ONEPOINT))
    monkeypatch.setattr(families, "__path__", [*families.__path__, str(tmp_path)])
    yield "onepoint"
    sys.modules.pop("activedet.models.families.onepoint", None)


def test_each_family_is_one_module_whose_adapter_names_it() -> None:
    assert families.names() == ("faster_rcnn", "fcos", "retinanet") == known_archs("detection")
    for arch in families.names():
        cls = families.adapter_class(arch)
        assert issubclass(cls, DetectionAdapter) and cls.arch == arch
        assert type(detection_adapter(tiny_config(**{"model.arch": arch}).model, 2)) is cls
    assert families.adapter_class("fcos").dense and not families.adapter_class("faster_rcnn").dense
    with pytest.raises(ConfigError, match=r"'small_cnn' is not a detector \(detectors: faster_rcnn, fcos, retinanet\)"):
        detection_adapter(dataclasses.replace(tiny_config().model, arch="small_cnn"), 2)


def test_a_fourth_family_is_one_file(onepoint: str) -> None:
    assert onepoint in families.names() and onepoint in known_archs("detection")
    # the config's model.arch choices read the folder
    cfg = tiny_config(**{"model.arch": onepoint, "model.score_thresh": 0.0})
    assert capabilities("detection", onepoint, "plain") >= {"det_probs", "anchor_probs", "box_features"}
    with pytest.raises(StrategyError, match="'mial_head'.*'onepoint'"):  # its module offers no MIAL head
        build_strategy("mial").check_model("detection", onepoint)
    assert onepoint not in get_strategy_class("mial").supported_archs()

    data = make_detection_dataset(n=12, size=64, num_classes=2, seed=5)
    pool = Pool.from_dataset(data)
    pool.add(pool.ids[:4], 0)
    for name, settings in (("entropy", {"min_score": 0.0}), ("ppal", {"min_score": 0.0, "pool_ratio": 2.0})):
        strategy = build_strategy(name, settings)
        strategy.check_model("detection", onepoint)
        adapter = build_adapter(cfg, data.num_classes, strategy)
        assert type(adapter).__name__ == "OnePointAdapter" and isinstance(adapter, DenseDetectionAdapter)
        adapter.reset(0)
        picked = strategy.select(adapter, pool, 3, np.random.default_rng(1))
        assert isinstance(picked, Selection) and len(set(picked.ids)) == 3 and set(picked.ids) <= set(pool.unlabeled)
        assert picked.scores and all(math.isfinite(v) for v in picked.scores.values())
    inf = next(iter(adapter.infer(data, data.ids[:1], 1)))
    assert inf.extra["cls_logits"].shape[0] == inf.extra["anchors"].shape[0]  # one anchor a location
    assert inf.extra["box_features"].shape[0] == len(inf.boxes)
    images, targets = adapter.load_batch(data, data.ids[:2], augment=False)
    assert torch.isfinite(adapter.image_losses(images, targets)).all()
    assert [n for n, _ in adapter.gradient_parameters()] == list(adapter.gradient_names)
