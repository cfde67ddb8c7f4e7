"""ISAL and grad_similarity: UUIC pseudo labels, reference sets, exact vs LiSSA, a 2-cycle run."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from activedet.config import ModelConfig, config_from_dict
from activedet.data.base import ClassificationDataset, ImageRecord
from activedet.data.pool import Pool
from activedet.errors import ConfigError
from activedet.loop.runner import run
from activedet.models.classifier import ClassificationAdapter
from activedet.models.factory import build_adapter
from activedet.influence import hessian_matrix, lissa_inverse_hvp
from activedet.strategies.isal import (lissa_gain, lissa_verdict, pseudo_boxes, soft_cross_entropy,
                                       topk_target_weights)
from activedet.strategies.registry import build_strategy
from tests.conftest import make_detection_dataset, tiny_config



def _cls_dataset(n: int, seed: int = 0, start: int = 1) -> ClassificationDataset:
    rng = np.random.default_rng(seed)
    records = []
    for k in range(n):
        label = int(rng.integers(0, 3))
        img = rng.integers(0, 100, (16, 16, 3), dtype=np.uint8)
        img[:, :, label] += 100
        records.append(ImageRecord(id=start + k, file_name=f"{k}.png", width=16, height=16,
                                   array=img, label=label))
    return ClassificationDataset(records, ["a", "b", "c"], name="tiny-cls")


@pytest.fixture(scope="module")
def cls_setup():
    data, ref = _cls_dataset(30), _cls_dataset(8, seed=1, start=101)
    ad = ClassificationAdapter(ModelConfig(arch="small_cnn", image_size=16), 3)
    ad.reset(0)
    opt = torch.optim.SGD(ad.model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(15):  # a few steps so that predictions are not uniform
        x, y = ad.load_batch(data, data.ids[:12], False)
        loss = ad.train_loss(x, y)["classification"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    pool = Pool.from_dataset(data)
    pool.reference = ref
    pool.add(data.ids[:8], 0)
    pool.add(data.ids[8:12], 1)
    return ad, pool


# --------------------------------------------------------------------- pure parts
def test_topk_target_weights():
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    assert torch.equal(topk_target_weights(probs, 1), torch.tensor([[0.0, 1, 0], [1, 0, 0]]))
    assert torch.allclose(topk_target_weights(probs, 1, "always"), torch.tensor([[0.0, 0.6, 0], [0.5, 0, 0]]))
    assert torch.allclose(topk_target_weights(probs, 2), torch.tensor([[0.0, 0.6, 0.3], [0.5, 0, 0.3]]))
    with pytest.raises(ConfigError, match="top_k"):
        topk_target_weights(probs, 4)


def test_pseudo_boxes_threshold_cap_and_degenerate():
    boxes = torch.tensor([[0, 0, 5, 5], [1, 1, 1, 4], [2, 2, 8, 8], [0, 0, 3, 3.0]])
    scores = torch.tensor([0.6, 0.9, 0.8, 0.4])
    labels = torch.tensor([1, 2, 1, 2])
    out = pseudo_boxes(boxes, scores, labels, 0.5, 100)
    assert torch.equal(out["labels"], torch.tensor([1, 1]))  # zero-width box dropped, sorted by score
    assert torch.equal(out["boxes"][0], boxes[2])
    assert pseudo_boxes(boxes, scores, labels, 0.5, 1)["boxes"].shape == (1, 4)
    assert pseudo_boxes(boxes, scores, labels, 0.95, 100) is None


# ------------------------------------------------------------------ classification
def test_isal_classifier_scores_finite_deterministic_and_complete(cls_setup):
    ad, pool = cls_setup
    params = {"depth": 6, "repeats": 2}
    a = build_strategy("isal", params)
    info: dict = {}
    sa = a.score(ad, pool, pool.unlabeled, np.random.default_rng(3), info=info)
    sb = build_strategy("isal", params).score(ad, pool, pool.unlabeled, np.random.default_rng(3))
    assert set(sa) == set(pool.unlabeled) and sa == sb
    assert all(math.isfinite(v) for v in sa.values()) and len(set(sa.values())) > 1
    assert info["reference"] == "validation" and info["reference_images"] == 8
    chosen = build_strategy("isal", {**params, "batch": "topk"}).select(ad, pool, 5, np.random.default_rng(3))
    picked = chosen.ids
    assert chosen.info["reference"] == "validation" and chosen.scores == sa
    assert picked == sorted(sa, key=lambda i: -sa[i])[:5]
    # the default batch takes turns over the predicted classes among the top 3 x 5
    balanced = build_strategy("isal", params).select(ad, pool, 5, np.random.default_rng(3)).ids
    top15 = sorted(sa, key=lambda i: -sa[i])[:15]
    assert set(balanced) <= set(top15) and balanced[0] == top15[0]
    predicted = {inf.image_id: int(inf.labels[0]) for inf in ad.infer(pool.dataset, top15, 16)}
    assert len({predicted[i] for i in balanced}) == len({predicted[i] for i in top15})


def test_grad_similarity_equals_brute_force(cls_setup):
    """score = -I = ∇l(R) · G_z, ∇l(R) summed over the labeled set, G_z at the top-1 label."""
    ad, pool = cls_setup
    st = build_strategy("grad_similarity", {"reference": "labeled", "parameters": ["fc.weight"]})
    info: dict = {}
    got = st.score(ad, pool, pool.unlabeled, np.random.default_rng(0), info=info)
    w = ad.model.fc.weight
    ad.model.eval()
    x, y = ad.load_batch(pool.dataset, pool.labeled, False)
    v = torch.autograd.grad(F.cross_entropy(ad.model(x), y, reduction="sum"), w)[0]
    for i in pool.unlabeled[:5]:
        xi, _ = ad.load_batch(pool.dataset, [i], False)
        logits = ad.model(xi)
        g = torch.autograd.grad(F.cross_entropy(logits, logits.argmax(1)), w)[0]
        assert got[i] == pytest.approx(float((v * g).sum()), rel=1e-4, abs=1e-6)
    assert info["reference_images"] == 12


def test_exact_and_lissa_rankings_agree_on_a_classifier(cls_setup):
    ad, pool = cls_setup
    common = {"parameters": ["fc.weight"], "scale": 50.0, "damping": 0.01}
    exact = build_strategy("isal", {**common, "inverse": "exact"}).score(ad, pool, pool.unlabeled,
                                                                        np.random.default_rng(0))
    lissa = build_strategy("isal", {**common, "depth": 400, "repeats": 2, "lissa_batch_size": 4}).score(
        ad, pool, pool.unlabeled, np.random.default_rng(0))
    ids = sorted(exact)
    e, s = np.array([exact[i] for i in ids]), np.array([lissa[i] for i in ids])
    assert spearmanr(e, s)[0] > 0.95
    assert np.linalg.norm(e - s) / np.linalg.norm(e) < 0.1
    top = set(sorted(ids, key=lambda i: -exact[i])[:5])
    assert len(top & set(sorted(ids, key=lambda i: -lissa[i])[:5])) >= 4


def test_reference_options_and_fallback(cls_setup):
    ad, pool = cls_setup
    common = {"depth": 2, "repeats": 1}
    st = build_strategy("isal", {**common, "reference": "initial"})
    info: dict = {}
    st.score(ad, pool, pool.unlabeled[:3], np.random.default_rng(0), info=info)
    assert info["reference"] == "initial" and info["reference_images"] == 8
    no_ref = Pool.from_dataset(pool.dataset)
    no_ref.add(pool.labeled, 0)
    st = build_strategy("isal", common)
    info = {}
    st.score(ad, no_ref, no_ref.unlabeled[:3], np.random.default_rng(0), info=info)
    assert info["reference"] == "labeled" and info["reference_images"] == 12
    with pytest.raises(ConfigError, match="dataset.reference"):
        build_strategy("isal", {**common, "reference_fallback": "error"}).score(
            ad, no_ref, no_ref.unlabeled[:3], np.random.default_rng(0))
    for bad in ({"inverse": "cg"}, {"reference": "test"}, {"top_k": 0}, {"depth": 0}, {"scale": [1.0, 2.0]}):
        with pytest.raises(ConfigError):
            s = build_strategy("isal", bad)
            s.score(ad, pool, pool.unlabeled[:2], np.random.default_rng(0))


# ----------------------------------------------------------------------- detection
def test_fcos_images_without_pseudo_boxes_are_unscored_and_fill_at_random():
    data = make_detection_dataset(10, seed=3)
    ad = build_adapter(tiny_config(**{"model.arch": "fcos"}), 2)
    ad.reset(0)
    pool = Pool.from_dataset(data)
    pool.reference = make_detection_dataset(3, seed=4, start_id=101)
    pool.add(pool.ids[:4], 0)
    st = build_strategy("isal", {"depth": 2, "repeats": 1, "pseudo_score_threshold": 1.0})
    chosen = st.select(ad, pool, 3, np.random.default_rng(0))
    assert chosen.scores == {} and chosen.info["unscored"] == 6 and len(set(chosen.ids)) == 3
    st = build_strategy("isal", {"depth": 2, "repeats": 1, "pseudo_score_threshold": 0.0})
    scores = st.score(ad, pool, pool.unlabeled, np.random.default_rng(0))
    assert len(scores) == 6 and all(math.isfinite(v) for v in scores.values())


def test_two_cycle_run_isal_fcos_on_coco_files(tmp_path: Path):
    train = make_detection_dataset(12, seed=5).export_coco(tmp_path / "train")
    test = make_detection_dataset(4, seed=6, start_id=201).export_coco(tmp_path / "test")
    ref = make_detection_dataset(3, seed=7, start_id=301).export_coco(tmp_path / "ref")
    cfg = tiny_config(**{"model.arch": "fcos", "loop.initial": 4, "loop.per_cycle": 2, "loop.cycles": 2})
    data = cfg.to_dict()
    data["dataset"] = {"train": str(train), "test": str(test), "reference": str(ref)}
    data["strategy"] = {"name": "isal", "pseudo_score_threshold": 0.05, "depth": 3, "repeats": 1}
    status = run(config_from_dict(data), tmp_path / "run", progress=False)
    assert status["complete"] and len(status["rounds"]) == 3
    assert [r["labeled_images"] for r in status["rounds"]] == [4, 6, 8]


# ------------------------------------------------------- top_k = C and the inverse's health
def test_top_k_of_every_class_is_refused_its_gradient_is_zero():
    logits = torch.tensor([[0.3, -1.0, 2.0], [1.5, 0.2, -0.4]], requires_grad=True)
    probs = logits.softmax(-1).detach()
    g = torch.autograd.grad(soft_cross_entropy(logits, probs), logits)[0]
    assert g.abs().max() < 1e-6  # the soft labels are the model's own softmax: no gradient
    for weight in ("auto", "always"):
        with pytest.raises(ConfigError, match="'top_k' = 3 is every class"):
            topk_target_weights(probs, 3, weight)
    assert topk_target_weights(probs, 2).sum() > 0  # below C is fine


def test_lissa_gain_is_what_the_recursion_does_on_a_diagonal_hessian():
    mus = torch.tensor([0.0, 1.0, 10.0, 80.0], dtype=torch.float64)
    v = [torch.ones(4, dtype=torch.float64)]
    for scale, depth in ((1e4, 250), (160.0, 50)):
        h = lissa_inverse_hvp(v, lambda r: iter(lambda: (lambda x: [mus * x[0]]), None), depth=depth,
                              repeats=1, damping=0.01, scale=scale)[0]
        want = torch.tensor([lissa_gain(float(m), scale, 0.01, depth) for m in mus], dtype=torch.float64)
        torch.testing.assert_close(h, want)


def test_lissa_verdict():
    assert lissa_verdict(80.0, [1e4], 0.01, 250)[0] == "inert"  # the authors' scale on a small CNN
    verdict, spread = lissa_verdict(80.0, [160.0], 0.01, 250)
    assert verdict == "inverts" and spread > 20
    assert lissa_verdict(80.0, [30.0], 0.01, 250)[0] == "diverges"  # 80 / 30 > 2 - damping
    assert lissa_verdict(-5.0, [100.0], 0.01, 250)[0] == "diverges"  # damping x scale = 1 < 5
    assert lissa_verdict(80.0, [1e4, 100.0], 0.01, 250)[0] == "inverts"  # the smallest scale counts


def test_scale_auto_inverts_and_matches_the_exact_solve(cls_setup, caplog):
    ad, pool = cls_setup
    fc = {"parameters": ["fc.weight"], "reference": "labeled"}
    w = ad.model.fc.weight
    ad.model.eval()
    x, y = ad.load_batch(pool.dataset, pool.labeled, False)
    hess = hessian_matrix(lambda: F.cross_entropy(ad.model(x), y), [w])
    top = float(torch.linalg.eigvalsh(hess.double())[-1])

    auto = build_strategy("isal", {**fc, "scale": "auto", "depth": 400, "repeats": 2, "lissa_batch_size": 4,
                                   "power_iters": 100})
    info: dict = {}
    got = auto.score(ad, pool, pool.unlabeled, np.random.default_rng(0), info=info)
    assert info["lambda_max"] == pytest.approx(top, rel=0.02)
    assert info["scales"] == [pytest.approx(2.0 * info["lambda_max"])]
    assert info["lissa"] == "inverts" and info["lissa_cosine"] < 0.99
    exact = build_strategy("isal", {**fc, "inverse": "exact", "scale": info["scales"][0]}).score(
        ad, pool, pool.unlabeled, np.random.default_rng(0))
    ids = sorted(exact)
    assert spearmanr([exact[i] for i in ids], [got[i] for i in ids])[0] > 0.95

    caplog.clear()
    authors = build_strategy("isal", {**fc, "depth": 50, "repeats": 1})  # scale 1e4
    said: dict = {}
    authors.score(ad, pool, pool.unlabeled, np.random.default_rng(0), info=said)
    assert said["lissa"] == "inert" and said["lissa_cosine"] > 0.99
    assert "LiSSA is nearly inert" in caplog.text and "scale: auto" in caplog.text
    with pytest.raises(ConfigError, match="'scale' = 'automatic'"):
        build_strategy("isal", {"scale": "automatic"})


def test_lissa_check_with_a_failed_eigenvalue_says_unknown(cls_setup, monkeypatch, caplog):
    ad, pool = cls_setup
    st = build_strategy("isal", {"parameters": ["fc.weight"], "depth": 2, "repeats": 1})
    monkeypatch.setattr(type(st), "top_eigenvalue", lambda self, *a: float("nan"))
    info: dict = {}
    st.score(ad, pool, pool.unlabeled[:3], np.random.default_rng(0), info=info)
    assert info["lissa"] == "unknown" and "non-finite Hessian eigenvalue" in caplog.text
    auto = build_strategy("isal", {"parameters": ["fc.weight"], "depth": 2, "repeats": 1, "scale": "auto"})
    from activedet.errors import StrategyError
    with pytest.raises(StrategyError, match="'scale' = 'auto'"):
        auto.score(ad, pool, pool.unlabeled[:3], np.random.default_rng(0))


@pytest.mark.parametrize("arch", ["fcos", "retinanet"])
def test_one_pass_gradients_equal_the_two_pass_path(arch: str):
    """ISAL's batched path for dense detectors takes pseudo boxes and per-image gradients
    from one forward pass; the former path ran inference, then a loss pass over the images
    with pseudo boxes. Same images, same kept ids, same gradients; images without pseudo
    boxes drop out; the model's parameters keep their requires_grad and no hook is left."""
    from activedet.strategies.isal import _Model

    data = make_detection_dataset(6, seed=2)
    ad = build_adapter(tiny_config(**{"model.arch": arch, "model.image_size": 80}), 2)  # 64 px images resized
    ad.reset(0)
    next(ad.model.backbone.parameters()).requires_grad_(False)  # a frozen part stays frozen
    flags = [p.requires_grad for p in ad.model.parameters()]
    st = build_strategy("isal", {"max_pseudo_boxes": 5})
    names, params = st._parameters(ad)
    m = _Model(ad, names, params)
    best = [float(inf.scores.max()) if inf.scores.numel() else 0.0 for inf in ad.infer(data, data.ids, 6)]
    threshold = sorted(best)[len(best) // 2]  # about half of the images keep a pseudo box
    p = dataclasses.replace(st.settings, pseudo_score_threshold=threshold)
    kept, grads = m.dense_image_grads(data, list(data.ids), p)
    ref_kept, inputs, targets = m.pseudo_targets(data, list(data.ids), p)
    assert kept == ref_kept and 0 < len(kept) < len(data.ids)
    ref = m.sample_grads(inputs, targets, len(kept), batched=True)
    assert len(grads) == len(ref) == len(m.layers())
    for a, b in zip(grads, ref):
        assert a.shape == b.shape and float(b.abs().max()) > 0
        assert float((a - b).abs().max()) <= 1e-6 * float(b.abs().max())
    assert [p.requires_grad for p in ad.model.parameters()] == flags
    assert not any(mod._forward_hooks for mod in ad.model.modules())
    assert m.image_grads(data, list(data.ids), p, batched=True)[0] == kept
    # the scores: the gradients' dots with s_test, never formed (layer_grad_dots)
    s_test = [torch.randn_like(g[0]) for g in grads]
    dot_kept, dots = m.image_dots(data, list(data.ids), p, True, s_test)
    want = sum((g * v).flatten(1).sum(1) for g, v in zip(ref, s_test))
    assert dot_kept == kept and float(want.abs().min()) > 0
    assert float((dots - want).abs().max()) <= 1e-6 * float(want.abs().max())


@pytest.mark.parametrize("arch", ["fcos", "retinanet"])
def test_scores_from_gradient_dots_equal_scores_from_the_gradients(arch: str, monkeypatch):
    """ISAL's scores with the per-image gradients never formed (``image_dots``) equal the
    scores from the stacked gradients, on a pool of four image sizes where some images get
    no pseudo box (no score)."""
    from activedet.data.pool import Pool
    from activedet.influence import influence_scores
    from activedet.strategies.isal import _Model
    from tests.conftest import make_mixed_size_dataset

    data = make_mixed_size_dataset()
    ad = build_adapter(tiny_config(**{"model.arch": arch, "model.image_size": 96}), 2)
    ad.reset(0)
    pool = Pool.from_dataset(data)
    pool.add([1, 2], 0)
    best = sorted({float(inf.scores.max()) if inf.scores.numel() else 0.0
                   for inf in ad.infer(data, pool.unlabeled, 4)})
    threshold = (best[0] + best[1]) / 2  # the images of the lowest best score get no pseudo box
    params = {"max_pseudo_boxes": 5, "pseudo_score_threshold": threshold, "depth": 2, "repeats": 1,
              "reference": "labeled"}
    new = build_strategy("isal", params).score(ad, pool, pool.unlabeled, np.random.default_rng(0))

    def from_gradients(self, dataset, ids, p, batched, vectors, images=None):
        kept, g = self.image_grads(dataset, ids, p, batched)
        return (kept, -influence_scores(vectors, g)) if kept else ([], torch.zeros(0))

    monkeypatch.setattr(_Model, "image_dots", from_gradients)
    old = build_strategy("isal", params).score(ad, pool, pool.unlabeled, np.random.default_rng(0))
    assert set(new) == set(old) and 0 < len(old) < len(pool.unlabeled)
    top = max(abs(v) for v in old.values())
    assert top > 0 and all(abs(new[i] - old[i]) <= 1e-6 * top for i in old)


def test_isal_scores_do_not_depend_on_loader_workers():
    """The one-pass path reads its images through loader processes when the adapter has
    them (``dataset.workers``); the scores are the same as read in this process."""
    from activedet.data.pool import Pool

    data = make_detection_dataset(10, seed=3)
    ad = build_adapter(tiny_config(**{"model.arch": "fcos"}), 2)
    ad.reset(0)
    pool = Pool.from_dataset(data)
    pool.add(list(data.ids[:3]), 0)
    params = {"pseudo_score_threshold": 0.0, "depth": 2, "repeats": 1, "reference": "labeled", "batch_size": 2}
    scores = []
    for workers in (0, 2):
        ad.workers = workers
        scores.append(build_strategy("isal", params).score(ad, pool, pool.unlabeled, np.random.default_rng(0)))
    assert len(scores[0]) == len(pool.unlabeled) and scores[0] == scores[1]
