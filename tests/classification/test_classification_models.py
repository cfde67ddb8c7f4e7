"""Classifier networks and ClassificationAdapter (plain and MIAL two-head variants)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from activedet.config import ModelConfig
from activedet.data.base import ClassificationDataset
from activedet.data.classification import load_digits
from activedet.errors import ActivedetError, ConfigError
from activedet.models.classifier import ClassificationAdapter, resnet18_cifar, small_cnn


@pytest.fixture(scope="module")
def digits() -> ClassificationDataset:
    return load_digits("train", {"n_train": 200, "size": 16, "seed": 0})


def _adapter(variant: str = "plain", arch: str = "small_cnn", size: int = 16) -> ClassificationAdapter:
    return ClassificationAdapter(ModelConfig(arch=arch, image_size=size), 10, variant=variant)


# ---------------------------------------------------------------------- networks
def test_resnet18_cifar_forward_on_32px() -> None:
    net = resnet18_cifar(10).eval()
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert net(x).shape == (2, 10)
        f = net.features(x)
        assert f.shape == (2, 512)
        torch.testing.assert_close(net.fc(f), net(x))


def test_small_cnn_features_and_fc() -> None:
    net = small_cnn(7).eval()
    x = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        f = net.features(x)
        assert f.shape == (3, 128) and isinstance(net.fc, nn.Linear)
        torch.testing.assert_close(net(x), net.fc(f))


# ----------------------------------------------------------------------- adapter
def test_reset_is_deterministic_and_leaves_global_rng_alone() -> None:
    a, b = _adapter(), _adapter()
    state = torch.get_rng_state()
    a.reset(5)
    assert torch.equal(torch.get_rng_state(), state)
    b.reset(5)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    b.reset(6)
    assert not torch.equal(a.model.fc.weight, b.model.fc.weight)


def test_load_batch_shapes_normalisation_and_augmentation(digits: ClassificationDataset) -> None:
    ad = _adapter(size=24)  # digits are 16 px: resized to 24
    ids = digits.ids[:6]
    x, y = ad.load_batch(digits, ids, augment=False)
    assert x.shape == (6, 3, 24, 24) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [digits.label(i) for i in ids]
    black = (0.0 - 0.485) / 0.229  # digits' background is 0
    assert x[:, 0].min().item() == pytest.approx(black, abs=1e-5)
    x1, _ = ad.load_batch(digits, ids, augment=True, generator=torch.Generator().manual_seed(3))
    x2, _ = ad.load_batch(digits, ids, augment=True, generator=torch.Generator().manual_seed(3))
    x3, _ = ad.load_batch(digits, ids, augment=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(x1, x2) and not torch.equal(x1, x3) and not torch.equal(x1, x)
    assert x1.shape == x.shape


def test_augmentation_is_a_padded_crop_and_flip(digits: ClassificationDataset) -> None:
    ad = _adapter(size=16)
    ids = digits.ids[:16]
    plain, _ = ad.load_batch(digits, ids, augment=False)
    aug, _ = ad.load_batch(digits, ids, augment=True, generator=torch.Generator().manual_seed(0))
    pad = 2  # 4 px per 32 px
    black = plain.amin(dim=(0, 2, 3)).view(3, 1, 1)
    for k in range(len(ids)):
        padded = F.pad(plain[k] - black, (pad, pad, pad, pad)) + black
        candidates = [padded[:, dy:dy + 16, dx:dx + 16] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
        assert any(torch.allclose(aug[k], c, atol=1e-5) or torch.allclose(aug[k], c.flip(-1), atol=1e-5)
                   for c in candidates)


def test_sgd_steps_reduce_training_loss(digits: ClassificationDataset) -> None:
    ad = _adapter()
    ad.reset(0)
    opt = torch.optim.SGD(ad.model.parameters(), lr=0.05, momentum=0.9)
    x, y = ad.load_batch(digits, digits.ids[:128], augment=False)
    first = ad.train_loss(x, y)["classification"].item()
    for _ in range(30):
        loss = ad.train_loss(x, y)["classification"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = ad.train_loss(x, y)["classification"].item()
    assert last < 0.5 * first


def test_infer_evaluate_features_shapes(digits: ClassificationDataset) -> None:
    ad = _adapter()
    ids = digits.ids[:10]
    out = list(ad.infer(digits, ids, batch_size=4))
    assert [o.image_id for o in out] == ids
    o = out[0]
    assert o.probs.shape == (1, 10) and o.labels.shape == (1,) and o.scores.shape == (1,)
    assert o.boxes.shape == (0, 4)
    assert o.probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert o.labels.item() == o.probs.argmax().item() and o.scores.item() == pytest.approx(o.probs.max().item())
    assert o.extra["logits"].shape == (10,) and o.extra["features"].shape == (128,)
    assert all(t.device.type == "cpu" for t in (o.probs, o.labels, o.extra["features"]))
    metrics = ad.evaluate(digits, ids)
    assert set(metrics) == {"top1", "per_class_accuracy"} and 0.0 <= metrics["top1"] <= 1.0
    assert set(metrics["per_class_accuracy"]) == {digits.class_names[digits.label(i)] for i in ids}
    feats = ad.features(digits, ids, batch_size=3)
    assert feats.shape == (10, 128) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[0], o.extra["features"].numpy(), rtol=1e-4, atol=1e-5)
    assert ad.features(digits, [], batch_size=3).shape == (0, 128)


def test_gradient_parameters_are_exactly_the_multi_dim_weights() -> None:
    for arch in ("small_cnn", "resnet18"):
        ad = _adapter(arch=arch)
        names = [n for n, _ in ad.gradient_parameters()]
        expected = [n for n, p in ad.model.named_parameters() if p.dim() >= 2]
        assert names == expected and "fc.weight" in names
        assert not any(n.endswith("bias") or "bn" in n for n in names)


def test_state_dict_round_trip_and_mismatch(digits: ClassificationDataset) -> None:
    a, b = _adapter(), _adapter()
    a.reset(1)
    b.reset(2)
    b.load_state_dict(a.state_dict())
    ids = digits.ids[:4]
    np.testing.assert_array_equal(a.features(digits, ids), b.features(digits, ids))
    other = ClassificationAdapter(ModelConfig(arch="small_cnn", image_size=16), 3)
    with pytest.raises(ActivedetError, match="3 classes"):
        other.load_state_dict(a.state_dict())


def test_bad_arch_and_variant_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="retinanet"):
        ClassificationAdapter(ModelConfig(arch="retinanet", image_size=32), 10)
    with pytest.raises(ConfigError, match="ensemble"):
        ClassificationAdapter(ModelConfig(arch="small_cnn", image_size=32), 10, variant="ensemble")


def test_resnet18_adapter_on_32px(digits: ClassificationDataset) -> None:
    ad = _adapter(arch="resnet18", size=32)
    out = list(ad.infer(digits, digits.ids[:2], batch_size=2))
    assert out[1].probs.shape == (1, 10) and out[1].extra["features"].shape == (512,)


# ---------------------------------------------------------------------- MIAL
def test_mial_variant_heads_loss_and_infer(digits: ClassificationDataset) -> None:
    ad = _adapter("mial")
    ad.reset(0)
    head = ad.head_parameters()
    feat = ad.feature_parameters()
    assert len(head) == 4  # fc1 and fc2: weight + bias each
    assert {id(p) for p in head} | {id(p) for p in feat} == {id(p) for p in ad.model.parameters()}
    assert not {id(p) for p in head} & {id(p) for p in feat}
    assert not torch.equal(ad.model.fc1.weight, ad.model.fc2.weight)
    x, y = ad.load_batch(digits, digits.ids[:8], augment=False)
    l1, l2 = ad.head_logits(x)
    expected = (F.cross_entropy(l1, y) + F.cross_entropy(l2, y)) / 2
    torch.testing.assert_close(ad.train_loss(x, y)["classification"], expected)
    o = next(ad.infer(digits, digits.ids[:1]))
    p1, p2 = o.extra["probs1"], o.extra["probs2"]
    assert p2.shape == (10,) and o.extra["logits2"].shape == (10,)
    torch.testing.assert_close(o.probs[0], (p1 + p2) / 2)
    names = [n for n, _ in ad.gradient_parameters()]
    assert "fc1.weight" in names and "fc2.weight" in names
    assert set(ad.evaluate(digits, digits.ids[:5])) == {"top1", "per_class_accuracy"}


def test_plain_head_and_feature_parameters_partition() -> None:
    ad = _adapter()
    assert [p.shape for p in ad.head_parameters()] == [(10, 128), (10,)]
    assert len(ad.feature_parameters()) + 2 == len(list(ad.model.parameters()))
