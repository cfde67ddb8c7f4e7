"""MIAL losses against hand-computed values on tiny tensors.

The fixture: one image, two pyramid levels holding 2 and 1 anchors, K = 3 output channels
(channel 0 = torchvision's background channel, never used; object classes 1 and 2, C = 2).
Logits are chosen so that sigmoids and class softmaxes are simple fractions:
σ(ln 3) = 3/4, σ(0) = 1/2, σ(-ln 3) = 1/4, σ(ln 4) = 4/5, σ(-ln 4) = 1/5.
"""

from __future__ import annotations

import math

import pytest
import torch

from activedet.models import mial_losses as L

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)
E = math.exp
TOL = dict(atol=1e-6, rtol=0)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# channel 0 gets wild values: any use of it would change every expected number below
CLS1 = [[7.0, LN3, 0.0], [-5.0, -LN3, LN4], [3.0, 0.0, 0.0]]  # σ(classes): [3/4, 1/2], [1/4, 4/5], [1/2, 1/2]
CLS2 = [[-9.0, 0.0, -LN3], [9.0, -LN3, 0.0], [-3.0, LN4, -LN4]]  # σ(classes): [1/2, 1/4], [1/4, 1/2], [4/5, 1/5]
MIL = [[5.0, 0.0, LN2], [-5.0, LN3, 0.0], [8.0, 0.0, LN3]]  # softmax over classes: [1/3, 2/3], [3/4, 1/4], [1/4, 3/4]
LEVELS = [2, 1]


def t(x: list, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor([x], dtype=torch.float64, requires_grad=requires_grad)  # (1, A, K)


def expected_paper_instances() -> list[list[float]]:
    # anchor factor, class by class: a = (σ1 + σ2) / 2
    # level 1, class 1: a = [(3/4 + 1/2)/2, (1/4 + 1/4)/2] = [0.625, 0.25]
    # level 1, class 2: a = [(1/2 + 1/4)/2, (4/5 + 1/2)/2] = [0.375, 0.65]
    # level 2 has one anchor: softmax over one value = 1
    z1 = E(0.625) + E(0.25)
    z2 = E(0.375) + E(0.65)
    return [
        [1 / 3 * E(0.625) / z1, 2 / 3 * E(0.375) / z2],
        [3 / 4 * E(0.25) / z1, 1 / 4 * E(0.65) / z2],
        [1 / 4 * 1.0, 3 / 4 * 1.0],
    ]


def expected_code_instances() -> list[list[float]]:
    # one anchor weight m_i = max_c σ((z1 + z2) / 2) over the object classes:
    # anchor 0: max(σ((ln3 + 0)/2), σ((0 - ln3)/2)) = σ(ln3 / 2)
    # anchor 1: max(σ((-ln3 - ln3)/2), σ((ln4 + 0)/2)) = σ(ln 2) = 2/3
    # anchor 2: max(σ((0 + ln4)/2), σ((0 - ln4)/2)) = 2/3 (alone in level 2: factor 1)
    m0, m1 = sig(LN3 / 2), 2 / 3
    f0, f1 = E(m0) / (E(m0) + E(m1)), E(m1) / (E(m0) + E(m1))
    return [[1 / 3 * f0, 2 / 3 * f0], [3 / 4 * f1, 1 / 4 * f1], [1 / 4, 3 / 4]]


def test_instance_mil_scores_paper_mode() -> None:
    got = L.instance_mil_scores(t(CLS1), t(CLS2), t(MIL), LEVELS, mode="paper")
    assert got.shape == (1, 3, 2)
    torch.testing.assert_close(got[0], torch.tensor(expected_paper_instances(), dtype=torch.float64), **TOL)


def test_instance_mil_scores_code_mode() -> None:
    got = L.instance_mil_scores(t(CLS1), t(CLS2), t(MIL), LEVELS, mode="code")
    torch.testing.assert_close(got[0], torch.tensor(expected_code_instances(), dtype=torch.float64), **TOL)


def test_first_class_zero_on_sliced_logits_matches() -> None:
    full = L.instance_mil_scores(t(CLS1), t(CLS2), t(MIL), LEVELS)
    sliced = L.instance_mil_scores(t(CLS1)[..., 1:], t(CLS2)[..., 1:], t(MIL)[..., 1:], LEVELS, first_class=0)
    torch.testing.assert_close(full, sliced, **TOL)


def test_image_class_scores_sum_within_level_max_over_levels() -> None:
    inst = expected_paper_instances()
    level1 = [inst[0][0] + inst[1][0], inst[0][1] + inst[1][1]]  # ≈ [0.5031, 0.4299]
    level2 = inst[2]  # [0.25, 0.75]
    expected = [max(level1[0], level2[0]), max(level1[1], level2[1])]
    assert expected == [level1[0], level2[1]]  # one class won on each level
    got = L.image_class_scores(torch.tensor([inst], dtype=torch.float64), LEVELS)
    torch.testing.assert_close(got[0], torch.tensor(expected, dtype=torch.float64), **TOL)


def test_image_class_scores_are_clamped() -> None:
    # class 1: level sums 1 and 0 -> clamped to 1 - 1e-5; class 2: all zero -> 1e-5
    inst = torch.tensor([[[0.5, 0.0], [0.5, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    got = L.image_class_scores(inst, LEVELS)
    torch.testing.assert_close(got[0], torch.tensor([1 - 1e-5, 1e-5], dtype=torch.float64), **TOL)


def test_mil_loss_hand_computed_with_empty_image() -> None:
    inst = expected_paper_instances()
    p1 = inst[0][0] + inst[1][0]  # class 1 score (level 1)
    p2 = inst[2][1]  # class 2 score (level 2) = 3/4
    scores = torch.tensor([[p1, p2], [p1, p2]], dtype=torch.float64)
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)  # image 2: no objects
    img1 = -math.log(p1) - math.log(1 - p2)
    img2 = -math.log(1 - p1) - math.log(1 - p2)
    torch.testing.assert_close(L.mil_loss(scores, labels), torch.tensor((img1 + img2) / 2, dtype=torch.float64), **TOL)
    # skip_empty: the all-zero image contributes 0 but still counts in N
    torch.testing.assert_close(L.mil_loss(scores, labels, skip_empty=True),
                               torch.tensor((img1 + 0.0) / 2, dtype=torch.float64), **TOL)
    # class_reduction="mean": each image's BCE divided by C = 2
    torch.testing.assert_close(L.mil_loss(scores, labels, class_reduction="mean"),
                               torch.tensor((img1 / 2 + img2 / 2) / 2, dtype=torch.float64), **TOL)


def test_full_mil_chain_matches_hand_value() -> None:
    scores = L.image_class_scores(L.instance_mil_scores(t(CLS1), t(CLS2), t(MIL), LEVELS), LEVELS)
    inst = expected_paper_instances()
    p1, p2 = inst[0][0] + inst[1][0], inst[2][1]
    labels = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    expected = -math.log(1 - p1) - math.log(p2)
    torch.testing.assert_close(L.mil_loss(scores, labels), torch.tensor(expected, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("mode", ["paper", "code"])
def test_anchor_factor_is_detached(mode: str) -> None:
    c1, c2, s = t(CLS1, True), t(CLS2, True), t(MIL, True)
    scores = L.image_class_scores(L.instance_mil_scores(c1, c2, s, LEVELS, mode=mode), LEVELS)
    loss = L.mil_loss(scores, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    g1, g2, gs = torch.autograd.grad(loss, [c1, c2, s], allow_unused=True)
    assert g1 is None and g2 is None  # no gradient reaches f1 / f2 through the MIL score
    assert gs is not None and gs[..., 1:].abs().sum() > 0
    assert torch.all(gs[..., 0] == 0)  # the background channel plays no part


def test_single_class_dataset() -> None:
    # K = 2: channel 0 background, one object class (C = 1)
    c1 = t([[4.0, 0.0], [4.0, LN3], [4.0, -LN3]], True)  # σ: 1/2, 3/4, 1/4
    c2 = t([[-4.0, 0.0], [-4.0, 0.0], [-4.0, LN3]])  # σ: 1/2, 1/2, 3/4
    s = t([[9.0, 0.0], [9.0, LN3], [9.0, -LN3]], True)  # σ(s): 1/2, 3/4, 1/4
    inst = L.instance_mil_scores(c1, c2, s, LEVELS)  # "auto" -> sigmoid class factor
    # a = (σ1 + σ2)/2 = [1/2, 5/8 | 1/2]; level 1 softmax over anchors 0, 1; level 2 alone
    z = E(0.5) + E(0.625)
    expected = [[1 / 2 * E(0.5) / z], [3 / 4 * E(0.625) / z], [1 / 4 * 1.0]]
    torch.testing.assert_close(inst[0], torch.tensor(expected, dtype=torch.float64), **TOL)
    score = L.image_class_scores(inst, LEVELS)
    level1 = expected[0][0] + expected[1][0]
    torch.testing.assert_close(score, torch.tensor([[max(level1, 0.25)]], dtype=torch.float64), **TOL)
    loss = L.mil_loss(score, torch.tensor([[1.0]], dtype=torch.float64))
    torch.testing.assert_close(loss, torch.tensor(-math.log(level1), dtype=torch.float64), **TOL)
    (gs,) = torch.autograd.grad(loss, [s])
    assert gs[..., 1].abs().sum() > 0  # the MIL branch learns with one class
    # forcing the softmax over one class shows the degenerate case the default avoids
    forced = L.image_class_scores(L.instance_mil_scores(c1, c2, s, LEVELS, class_activation="softmax"), LEVELS)
    torch.testing.assert_close(forced, torch.tensor([[1 - 1e-5]], dtype=torch.float64), **TOL)
    # pseudo labels and discrepancy with a width-1 class slice
    assert L.pseudo_image_labels(c1, c2).tolist() == [[1.0]]  # max a = 5/8 > 1/2
    d = L.discrepancy(c1, c2)  # |1/2-1/2| + |3/4-1/2| + |1/4-3/4| = 0 + 1/4 + 1/2
    torch.testing.assert_close(d, torch.tensor([0.75], dtype=torch.float64), **TOL)


def test_image_labels_from_targets() -> None:
    targets = [
        {"labels": torch.tensor([2, 2])},
        {"labels": torch.zeros(0, dtype=torch.int64)},  # no ground-truth boxes
        {"labels": torch.tensor([1, 2, 1])},
    ]
    got = L.image_labels_from_targets(targets, 2)
    assert got.tolist() == [[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    with pytest.raises(ValueError, match="label 0"):
        L.image_labels_from_targets([{"labels": torch.tensor([0])}], 2)
    with pytest.raises(ValueError, match="label 3"):
        L.image_labels_from_targets([{"labels": torch.tensor([3])}], 2)


def test_pseudo_image_labels_including_all_zero_image() -> None:
    # image 1 (fixture): class 1 max a = max(0.625, 0.25, 0.65) = 0.65 > 0.5 -> 1
    #                    class 2 max a = max(0.375, 0.65, 0.35) = 0.65 > 0.5 -> 1
    # image 2: class 1 a = 1/2 everywhere (not > 1/2) -> 0; class 2 a = 1/4 -> 0;
    #          channel 0 is very confident but is not an object class
    img2 = [[9.0, 0.0, -LN3]] * 3
    c1 = torch.tensor([CLS1, img2], dtype=torch.float64)
    c2 = torch.tensor([CLS2, img2], dtype=torch.float64)
    pseudo = L.pseudo_image_labels(c1, c2)
    assert pseudo.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert L.pseudo_image_labels(c1, c2, threshold=0.7).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    # the all-zero image contributes nothing with skip_empty (unlabeled images)
    s = torch.tensor([MIL, MIL], dtype=torch.float64)
    scores = L.image_class_scores(L.instance_mil_scores(c1, c2, s, LEVELS), LEVELS)
    p = scores[0].tolist()
    expected = (-math.log(p[0]) - math.log(p[1]) + 0.0) / 2
    torch.testing.assert_close(L.mil_loss(scores, pseudo, skip_empty=True),
                               torch.tensor(expected, dtype=torch.float64), **TOL)


def test_discrepancy_per_image() -> None:
    # |σ1 - σ2| per anchor: [1/4, 1/4], [0, 0.3], [0.3, 0.3]; class means 0.25, 0.15, 0.3
    torch.testing.assert_close(L.discrepancy(t(CLS1), t(CLS2)), torch.tensor([0.25 + 0.15 + 0.3],
                                                                             dtype=torch.float64), **TOL)
    # squared: [1/16, 1/16], [0, 0.09], [0.09, 0.09]
    sq = 0.0625 + (0.0 + 0.09) / 2 + 0.09
    torch.testing.assert_close(L.discrepancy(t(CLS1), t(CLS2), squared=True),
                               torch.tensor([sq], dtype=torch.float64), **TOL)
    w = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [0.5, 0.0]]], dtype=torch.float64)
    weighted = (0.25 * 1 + 0.25 * 2) / 2 + (0 * 3 + 0.3 * 4) / 2 + (0.3 * 0.5 + 0.3 * 0) / 2
    torch.testing.assert_close(L.discrepancy(t(CLS1), t(CLS2), w), torch.tensor([weighted], dtype=torch.float64), **TOL)
    # two images: one value each, not averaged
    two1 = torch.tensor([CLS1, CLS2], dtype=torch.float64)
    two2 = torch.tensor([CLS2, CLS1], dtype=torch.float64)
    torch.testing.assert_close(L.discrepancy(two1, two2), torch.tensor([0.7, 0.7], dtype=torch.float64), **TOL)


def test_min_and_max_step_losses() -> None:
    c1 = torch.tensor([CLS1, CLS2], dtype=torch.float64)  # image 2 swaps f1 and f2: same |σ1 - σ2|
    c2 = torch.tensor([CLS2, CLS1], dtype=torch.float64)
    lam = 0.5
    # none: min = λ Σ_images 0.7; max = λ Σ_images Σ_i mean_c(1 - d) = λ · 2 · (0.75 + 0.85 + 0.7)
    torch.testing.assert_close(L.min_step_unlabeled_loss(c1, c2, lam=lam, reweight="none"),
                               torch.tensor(lam * 2 * 0.7, dtype=torch.float64), **TOL)
    torch.testing.assert_close(L.max_step_unlabeled_loss(c1, c2, lam=lam, reweight="none"),
                               torch.tensor(lam * 2 * (0.75 + 0.85 + 0.7), dtype=torch.float64), **TOL)
    # f1 weights on image 1 only: w = σ1 = [3/4, 1/2], [1/4, 4/5], [1/2, 1/2]
    c1a, c2a = t(CLS1), t(CLS2)
    min_f1 = (0.25 * 0.75 + 0.25 * 0.5) / 2 + (0 * 0.25 + 0.3 * 0.8) / 2 + (0.3 * 0.5 + 0.3 * 0.5) / 2
    max_f1 = (0.75 * 0.75 + 0.75 * 0.5) / 2 + (1 * 0.25 + 0.7 * 0.8) / 2 + (0.7 * 0.5 + 0.7 * 0.5) / 2
    torch.testing.assert_close(L.min_step_unlabeled_loss(c1a, c2a, lam=lam, reweight="f1"),
                               torch.tensor(lam * min_f1, dtype=torch.float64), **TOL)
    torch.testing.assert_close(L.max_step_unlabeled_loss(c1a, c2a, lam=lam, reweight="f1"),
                               torch.tensor(lam * max_f1, dtype=torch.float64), **TOL)
    # MIL weights (Eq. 7): w = the instance scores of the paper mode
    w = expected_paper_instances()
    d = [[0.25, 0.25], [0.0, 0.3], [0.3, 0.3]]
    min_mil = sum((d[i][0] * w[i][0] + d[i][1] * w[i][1]) / 2 for i in range(3))
    max_mil = sum(((1 - d[i][0]) * w[i][0] + (1 - d[i][1]) * w[i][1]) / 2 for i in range(3))
    s = t(MIL, True)
    mil_scores = L.instance_mil_scores(c1a, c2a, s, LEVELS)
    got_min = L.min_step_unlabeled_loss(c1a, c2a, lam=lam, reweight="mil", mil_scores=mil_scores)
    got_max = L.max_step_unlabeled_loss(c1a, c2a, lam=lam, reweight="mil", mil_scores=mil_scores)
    torch.testing.assert_close(got_min, torch.tensor(lam * min_mil, dtype=torch.float64), **TOL)
    torch.testing.assert_close(got_max, torch.tensor(lam * max_mil, dtype=torch.float64), **TOL)
    assert not got_min.requires_grad  # MIL weights are detached: no gradient into f_mil
    with pytest.raises(ValueError, match="mil_scores"):
        L.min_step_unlabeled_loss(c1a, c2a, reweight="mil")


def test_max_step_gradient_pushes_discrepancy_up() -> None:
    c1, c2 = t(CLS1, True), t(CLS2, True)
    before = L.discrepancy(c1, c2).item()
    loss = L.max_step_unlabeled_loss(c1, c2, reweight="none")
    g1, g2 = torch.autograd.grad(loss, [c1, c2])
    after = L.discrepancy(c1 - 0.1 * g1, c2 - 0.1 * g2).item()
    assert after > before


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="sums to 4"):
        L.instance_mil_scores(t(CLS1), t(CLS2), t(MIL), [2, 2])
    with pytest.raises(ValueError, match="first_class"):
        L.discrepancy(t(CLS1), t(CLS2), first_class=3)
    with pytest.raises(ValueError, match="mode"):
        L.instance_mil_scores(t(CLS1), t(CLS2), t(MIL), LEVELS, mode="other")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reweight"):
        L.min_step_unlabeled_loss(t(CLS1), t(CLS2), reweight="bad")  # type: ignore[arg-type]
