"""Batched per-sample gradients equal the per-sample loop (the reference path) to 1e-5."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from activedet.config import ModelConfig
from activedet.influence import (
    layer_grad_dots,
    layer_per_sample_grads,
    linear_ce_per_sample_grads,
    loop_per_sample_grads,
    per_sample_grads,
)
from activedet.models.classifier import ClassificationAdapter
from activedet.models.factory import build_adapter
from activedet.strategies.isal import _Model, soft_cross_entropy, topk_target_weights
from tests.conftest import make_detection_dataset, tiny_config

TOL = 1e-5



def _assert_close(batched: list[torch.Tensor], loop: list[torch.Tensor]) -> None:
    assert len(batched) == len(loop)
    for a, b in zip(batched, loop):
        assert a.shape == b.shape
        assert float(b.abs().max()) > 0  # the comparison is not trivially between zeros
        assert float((a - b).abs().max()) <= TOL * max(1.0, float(b.abs().max()))


def _conv_bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))


def test_vmap_grads_equal_loop_for_hard_and_soft_targets():
    torch.manual_seed(0)
    net = _conv_bn_net().eval()
    params = [p for p in net.parameters() if p.dim() >= 2]
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        probs = net(x).softmax(-1)
    for targets in (topk_target_weights(probs, 1), topk_target_weights(probs, 3)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # the vmap path must not fall back
            batched = per_sample_grads(net, soft_cross_entropy, x, targets, params)
        _assert_close(batched, per_sample_grads(net, soft_cross_entropy, x, targets, params, batched=False))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    _assert_close(per_sample_grads(net, F.cross_entropy, x, y, params),
                  per_sample_grads(net, F.cross_entropy, x, y, params, batched=False))


def test_classifier_batched_grads_equal_loop_small_cnn_and_resnet18():
    for arch, size in (("small_cnn", 16), ("resnet18", 8)):
        ad = ClassificationAdapter(ModelConfig(arch=arch, image_size=size), 5)
        names, params = zip(*ad.gradient_parameters())
        m = _Model(ad, list(names), list(params))
        assert m.layers() is not None  # every >= 2-dim weight belongs to a conv / linear layer
        x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            weights = topk_target_weights(ad.model.eval()(x).softmax(-1), 2)
        _assert_close(m.sample_grads(x, weights, 4, batched=True), m.sample_grads(x, weights, 4, batched=False))


class _Shared(nn.Module):
    """One conv applied to two 'levels' (as an FPN head), then a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.stem(x))
        levels = [self.head(f), self.head(F.avg_pool2d(f, 2))]
        pooled = torch.stack([lv.mean((2, 3)) for lv in levels]).sum(0)  # (N, 5)
        return self.fc(torch.tanh(pooled))


def test_layer_closed_form_equals_loop_with_shared_conv_and_linear():
    torch.manual_seed(1)
    net = _Shared().double()
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    layers = [net.head, net.fc]
    batched = layer_per_sample_grads(lambda: F.cross_entropy(net(x), y, reduction="sum"), layers, 5)
    loop = loop_per_sample_grads(lambda i: F.cross_entropy(net(x[i:i + 1]), y[i:i + 1]),
                                 [net.head.weight, net.fc.weight], 5)
    _assert_close(batched, loop)


def test_layer_grad_dots_equal_the_dots_of_the_gradients():
    """<V, dW_i> by one more pass of each layer (a conv with V as its weight, X @ V.T) equals
    the per-sample gradients dotted with V; a strided, dilated conv called twice, a linear."""
    torch.manual_seed(3)
    net = _Shared().double()
    net.head = nn.Conv2d(4, 5, 3, padding=2, dilation=2, stride=2).double()
    x = torch.randn(5, 3, 9, 7, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    layers = [net.head, net.fc]
    loss = lambda: F.cross_entropy(net(x), y, reduction="sum")  # noqa: E731
    vectors = [torch.randn_like(net.head.weight), torch.randn_like(net.fc.weight)]
    grads = layer_per_sample_grads(loss, layers, 5)
    want = sum((g * v).flatten(1).sum(1) for g, v in zip(grads, vectors))
    got = layer_grad_dots(loss, layers, vectors, 5)
    assert got.shape == (5,) and float(want.abs().min()) > 0
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="expected"):
        layer_grad_dots(loss, layers, vectors[::-1], 5)


def test_linear_ce_closed_form_equals_loop():
    torch.manual_seed(2)
    fc = nn.Linear(7, 4)
    feats = torch.randn(6, 7)
    weights = topk_target_weights(fc(feats).softmax(-1).detach(), 2)
    closed = linear_ce_per_sample_grads(feats, fc(feats), weights, with_bias=True)
    loop = loop_per_sample_grads(lambda i: soft_cross_entropy(fc(feats[i:i + 1]), weights[i:i + 1]),
                                 [fc.weight, fc.bias], 6)
    _assert_close(closed, loop)


def test_fcos_head_batched_grads_equal_loop():
    ds = make_detection_dataset(2, seed=1, empty_every=0)
    ad = build_adapter(tiny_config(**{"model.arch": "fcos"}), 2)
    ad.reset(0)
    names, params = zip(*ad.gradient_parameters())
    m = _Model(ad, list(names), list(params))
    images, targets = ad.load_batch(ds, ds.ids, False)
    _assert_close(m.sample_grads(images, targets, 2, batched=True),
                  m.sample_grads(images, targets, 2, batched=False))
