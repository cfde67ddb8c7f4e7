"""MIAL's RetinaNet head: two adversarial classifiers f1, f2, a box regressor and a MIL
classifier (paper Sec. 3.2–3.3, Fig. 3–4), as a drop-in ``head`` for torchvision's RetinaNet::

    head = MIALHead(backbone.out_channels, anchor_gen.num_anchors_per_location()[0], C + 1)
    model = torchvision.models.detection.RetinaNet(backbone, C + 1, anchor_generator=anchor_gen, head=head)

Train mode: ``model(images, targets)`` returns ``{"classification", "bbox_regression", "mil"}``.
Eval mode: detections come from f1 alone (torchvision's postprocessing reads only
``cls_logits`` and ``bbox_regression``).

Pyramid levels. The MIL scores (Eq. 5) need a softmax over the anchors of each level, but
torchvision hands ``compute_loss`` the anchors of all levels concatenated. ``forward``
therefore records ``num_anchors_per_level = [H_l * W_l * A for each feature map]`` on the
head (the same split torchvision's eval path computes); ``compute_loss`` and the helpers
use it and check that it matches the outputs they are given, or take an explicit
``num_anchors_per_level`` when outputs come from elsewhere.

FCOS. :class:`MIALFCOSHead` is the same head for torchvision's FCOS, where every location
is an instance (one "anchor" per location): FCOS's box and centerness branch and labeled
losses, everything else inherited.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.fcos import FCOSHead, FCOSRegressionHead
from torchvision.models.detection.retinanet import RetinaNetRegressionHead
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops import sigmoid_focal_loss

from activedet.models import mial_losses as L

__all__ = ["MIALHead", "MIALFCOSHead", "MIALClassificationTower", "MIALRegressionHead", "PARAMETER_GROUPS"]

#: parameter group -> the head's submodules in it (names are prefixes of named_parameters)
PARAMETER_GROUPS: dict[str, tuple[str, ...]] = {
    "f1_f2": ("f1", "f2"),
    "mil": ("f_mil",),
    "regression": ("regression_head",),
}

_NormLayer = Callable[..., nn.Module] | None


def _conv_tower(in_channels: int, depth: int, norm_layer: _NormLayer) -> nn.Sequential:
    """``depth`` × (3×3 conv + [norm] + ReLU), weights N(0, 0.01²), biases 0 (torchvision's init)."""
    tower = nn.Sequential(
        *[misc_nn_ops.Conv2dNormActivation(in_channels, in_channels, norm_layer=norm_layer) for _ in range(depth)]
    )
    for layer in tower.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return tower


def _to_anchor_rows(x: Tensor, width: int) -> Tensor:
    """(N, A*width, H, W) -> (N, H*W*A, width), torchvision's anchor order."""
    n, _, h, w = x.shape
    return x.view(n, -1, width, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, width)


class MIALClassificationTower(nn.Module):
    """A classification tower: ``conv_depth`` × (3×3 conv + ReLU), then a 3×3 conv to A·K.

    Initialised like torchvision's ``RetinaNetClassificationHead``: conv weights
    N(0, 0.01²), tower biases 0, final bias ``-log((1 - p) / p)`` with p =
    ``prior_probability`` (None: final bias 0, used for the MIL classifier, whose softmax
    over classes ignores a shared bias).
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        *,
        conv_depth: int = 4,
        prior_probability: float | None = 0.01,
        norm_layer: _NormLayer = None,
    ) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.num_classes = num_classes
        self.conv = _conv_tower(in_channels, conv_depth, norm_layer)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        bias = 0.0 if prior_probability is None else -math.log((1 - prior_probability) / prior_probability)
        nn.init.constant_(self.cls_logits.bias, bias)

    def forward(self, x: list[Tensor]) -> Tensor:
        """Feature maps [(N, in_channels, H_l, W_l)] -> logits (N, Σ_l H_l·W_l·A, K)."""
        return torch.cat([_to_anchor_rows(self.cls_logits(self.conv(f)), self.num_classes) for f in x], dim=1)


class MIALRegressionHead(RetinaNetRegressionHead):
    """torchvision's RetinaNet box regressor with the loss MIAL asks for.

    ``loss="smooth_l1"`` (paper, Eq. 1; ``beta`` 0.11 as in Detectron/MMDetection RetinaNet)
    or ``"l1"`` (authors' code, torchvision's default). Both on encoded deltas, summed
    over foreground anchors, divided by their count per image, averaged over images.
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        *,
        loss: Literal["smooth_l1", "l1"] = "smooth_l1",
        beta: float = 0.11,
        conv_depth: int = 4,
        norm_layer: _NormLayer = None,
    ) -> None:
        super().__init__(in_channels, num_anchors, norm_layer=norm_layer)
        if conv_depth != len(self.conv):
            self.conv = _conv_tower(in_channels, conv_depth, norm_layer)
        self._loss_type = loss
        self.beta = beta

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> Tensor:
        """Box loss, scalar. ``head_outputs["bbox_regression"]``: (N, HWA, 4); anchors (HWA, 4) each."""
        losses = []
        for tgt, reg, anc, matched in zip(targets, head_outputs["bbox_regression"], anchors, matched_idxs):
            fg = torch.where(matched >= 0)[0]
            target_deltas = self.box_coder.encode_single(tgt["boxes"][matched[fg]], anc[fg])
            if self._loss_type == "l1":
                loss = F.l1_loss(reg[fg], target_deltas, reduction="sum")
            else:
                loss = F.smooth_l1_loss(reg[fg], target_deltas, reduction="sum", beta=self.beta)
            losses.append(loss / max(1, fg.numel()))
        return torch.stack(losses).sum() / max(1, len(targets))


def _check_head_arguments(in_channels: int, num_anchors: int, num_classes: int, conv_depth: int,
                          prior_probability: float, first_class: int, **choices: str) -> None:
    """ValueError naming the first bad argument of :class:`MIALHead` (``choices``: its
    string options by keyword)."""
    allowed = {"det_reduction": ("mean", "sum"), "regression_loss": ("smooth_l1", "l1"),
               "mil_weighting": ("paper", "code"), "mil_class_activation": ("auto", "softmax", "sigmoid"),
               "mil_class_reduction": ("sum", "mean")}
    for name, value in choices.items():
        _check_choice(name, value, allowed[name])
    if in_channels < 1 or num_anchors < 1 or conv_depth < 0:
        raise ValueError(
            f"in_channels, num_anchors must be >= 1 and conv_depth >= 0, got {in_channels}, "
            f"{num_anchors}, {conv_depth}"
        )
    if not 0 <= first_class < num_classes:
        raise ValueError(
            f"first_class must be in [0, num_classes - 1] = [0, {num_classes - 1}], got {first_class} "
            f"(num_classes counts torchvision's background channel: C + 1)"
        )
    if not 0.0 < prior_probability < 1.0:
        raise ValueError(f"prior_probability must be in (0, 1), got {prior_probability}")


class MIALHead(nn.Module):
    """RetinaNet head with f1, f2 (instance classifiers), f_r (boxes) and f_mil (MIL).

    Args:
        in_channels: channels of every feature map.
        num_anchors: anchors per location (A).
        num_classes: output channels K, torchvision's count including background
            (K = C + 1 for labels 1..C).
        conv_depth: 3×3 conv + ReLU layers in each tower (4 in the paper).
        prior_probability: initial foreground probability of f1 and f2 (bias init).
        regression_loss: ``"smooth_l1"`` (paper, default) or ``"l1"`` (authors' code).
        smooth_l1_beta: beta of the smooth L1 loss.
        focal_alpha, focal_gamma: focal loss of f1 and f2 (0.25, 2).
        use_mil: build f_mil and add the MIL loss (IUR on); False: no ``mil_logits``,
            no ``"mil"`` loss, no MIL parameters.
        mil_weighting: anchor factor of Eq. 5, ``"paper"`` (default) or ``"code"``
            (see :func:`activedet.models.mial_losses.instance_mil_scores`).
        mil_class_activation: ``"auto"`` | ``"softmax"`` | ``"sigmoid"`` (single-class fix).
        mil_class_reduction: BCE over classes, ``"sum"`` (paper Eq. 6) or ``"mean"`` (code).
        mil_loss_weight: factor on the MIL loss.
        first_class: first object-class channel (1: torchvision's unused channel 0 is skipped).
        norm_layer: optional normalisation in the towers (None, like torchvision's v1 head).
        det_reduction: ``sum`` (paper Eq. 1, default) or ``mean`` (authors' code) of the two
            focal losses; ``sum`` gives each classifier the gradient a plain RetinaNet head gets.
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        *,
        conv_depth: int = 4,
        prior_probability: float = 0.01,
        regression_loss: Literal["smooth_l1", "l1"] = "smooth_l1",
        smooth_l1_beta: float = 0.11,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        use_mil: bool = True,
        mil_weighting: L.MILMode = "paper",
        mil_class_activation: L.ClassActivation = "auto",
        mil_class_reduction: Literal["sum", "mean"] = "sum",
        mil_loss_weight: float = 1.0,
        first_class: int = 1,
        norm_layer: _NormLayer = None,
        det_reduction: Literal["mean", "sum"] = "sum",
    ) -> None:
        super().__init__()
        _check_head_arguments(in_channels, num_anchors, num_classes, conv_depth, prior_probability, first_class,
                              det_reduction=det_reduction, regression_loss=regression_loss,
                              mil_weighting=mil_weighting, mil_class_activation=mil_class_activation,
                              mil_class_reduction=mil_class_reduction)
        self.num_anchors = num_anchors
        self.num_classes = num_classes
        self.first_class = first_class
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.use_mil = use_mil
        self.mil_weighting: L.MILMode = mil_weighting
        self.mil_class_activation: L.ClassActivation = mil_class_activation
        self.mil_class_reduction: Literal["sum", "mean"] = mil_class_reduction
        self.mil_loss_weight = mil_loss_weight
        self.det_reduction = det_reduction
        tower = dict(conv_depth=conv_depth, norm_layer=norm_layer)
        # f1 and f2 are built one after the other from the same generator: independent draws
        self.f1 = MIALClassificationTower(in_channels, num_anchors, num_classes,
                                          prior_probability=prior_probability, **tower)
        self.f2 = MIALClassificationTower(in_channels, num_anchors, num_classes,
                                          prior_probability=prior_probability, **tower)
        self.f_mil: MIALClassificationTower | None = (
            MIALClassificationTower(in_channels, num_anchors, num_classes, prior_probability=None, **tower)
            if use_mil else None
        )
        self.regression_head: nn.Module = self._regression_head(in_channels, num_anchors, conv_depth, norm_layer,
                                                                regression_loss, smooth_l1_beta)
        #: anchors per pyramid level of the last forward: [H_l * W_l * A]
        self.num_anchors_per_level: list[int] = []

    @property
    def num_object_classes(self) -> int:
        """C: the object classes (channels ``first_class:``)."""
        return self.num_classes - self.first_class

    # ------------------------------------------------------------------ forward / losses

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        """Feature maps [(N, in_channels, H_l, W_l)] -> head outputs.

        Returns ``cls_logits`` (N, HWA, K) from f1 (the only classifier torchvision's
        postprocessing reads), ``cls_logits2`` (N, HWA, K) from f2, ``bbox_regression``
        (N, HWA, 4) and, with ``use_mil``, ``mil_logits`` (N, HWA, K). Records
        ``self.num_anchors_per_level``.
        """
        self.num_anchors_per_level = [int(f.shape[-2] * f.shape[-1]) * self.num_anchors for f in x]
        out = {"cls_logits": self.f1(x), "cls_logits2": self.f2(x), **self._box_outputs(x)}
        if self.f_mil is not None:
            out["mil_logits"] = self.f_mil(x)
        return out

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
        num_anchors_per_level: Sequence[int] | None = None,
    ) -> dict[str, Tensor]:
        """Labeled-batch losses (what ``RetinaNet.compute_loss`` calls).

        ``classification``: mean (``det_reduction="mean"``, authors' code) or sum (``"sum"``,
        paper Eq. 1) of the focal losses of f1 and f2, each normalised like
        torchvision (per image by its foreground anchors, then averaged over images);
        ``bbox_regression``: see :class:`MIALRegressionHead`; ``mil`` (with ``use_mil``):
        ``mil_loss_weight`` × MIL loss against the targets' image labels (an image
        without boxes has all-zero labels and still contributes).

        Args:
            targets: per image ``boxes`` (B, 4), ``labels`` (B,) in 1..C.
            head_outputs: :meth:`forward`'s dict, (N, HWA, ·) each.
            anchors: per image (HWA, 4).
            matched_idxs: per image (HWA,), GT index, -1 background, -2 ignored.
            num_anchors_per_level: overrides the split recorded by :meth:`forward`.
        """
        cls1 = self._focal_loss(targets, head_outputs["cls_logits"], matched_idxs)
        cls2 = self._focal_loss(targets, head_outputs["cls_logits2"], matched_idxs)
        losses = {
            "classification": (cls1 + cls2) / (2 if self.det_reduction == "mean" else 1),
            **self._box_losses(targets, head_outputs, anchors, matched_idxs),
        }
        if self.use_mil:
            labels = L.image_labels_from_targets(targets, self.num_object_classes, first_class=self.first_class,
                                                 device=head_outputs["cls_logits"].device)
            scores = self.image_class_scores(head_outputs, num_anchors_per_level)
            losses["mil"] = self.mil_loss_weight * L.mil_loss(scores, labels, class_reduction=self.mil_class_reduction)
        return losses

    # the detector-specific parts (RetinaNet here; :class:`MIALFCOSHead` overrides them)

    def _regression_head(self, in_channels: int, num_anchors: int, conv_depth: int, norm_layer: _NormLayer,
                         loss: Literal["smooth_l1", "l1"], beta: float) -> nn.Module:
        """The box branch f_r."""
        return MIALRegressionHead(in_channels, num_anchors, loss=loss, beta=beta, conv_depth=conv_depth,
                                  norm_layer=norm_layer)

    def _box_outputs(self, x: list[Tensor]) -> dict[str, Tensor]:
        """The box branch's outputs: ``bbox_regression`` (N, HWA, 4)."""
        return {"bbox_regression": self.regression_head(x)}

    def _box_losses(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
                    anchors: list[Tensor], matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        """The box branch's labeled losses: ``bbox_regression`` (see :class:`MIALRegressionHead`)."""
        return {"bbox_regression": self.regression_head.compute_loss(targets, head_outputs, anchors, matched_idxs)}

    def _focal_loss(self, targets: list[dict[str, Tensor]], logits: Tensor, matched_idxs: list[Tensor]) -> Tensor:
        """torchvision's RetinaNet classification loss with this head's alpha, gamma; scalar."""
        losses = []
        for tgt, logits_i, matched in zip(targets, logits, matched_idxs):
            fg = matched >= 0
            gt = torch.zeros_like(logits_i)  # (HWA, K)
            gt[fg, tgt["labels"][matched[fg]]] = 1.0
            valid = matched != -2  # Matcher.BETWEEN_THRESHOLDS: ignored anchors
            loss = sigmoid_focal_loss(logits_i[valid], gt[valid], alpha=self.focal_alpha,
                                      gamma=self.focal_gamma, reduction="sum")
            losses.append(loss / max(1, int(fg.sum())))
        return torch.stack(losses).sum() / max(1, len(targets))

    # ------------------------------------------------------------------ MIL helpers

    def levels(self, head_outputs: dict[str, Tensor], num_anchors_per_level: Sequence[int] | None = None) -> list[int]:
        """The per-level anchor split for ``head_outputs``: explicit, else recorded by forward.

        Raises ``RuntimeError`` when it does not add up to the outputs' anchor count (the
        outputs did not come from the last forward of this head).
        """
        levels = list(num_anchors_per_level) if num_anchors_per_level is not None else self.num_anchors_per_level
        total = head_outputs["cls_logits"].shape[1]
        if not levels or sum(levels) != total:
            raise RuntimeError(
                f"anchors per level {levels} do not match the {total} anchors of these head outputs; "
                "pass num_anchors_per_level or compute the outputs with this head's forward"
            )
        return [int(n) for n in levels]

    def instance_mil_scores(
        self, head_outputs: dict[str, Tensor], num_anchors_per_level: Sequence[int] | None = None,
        valid: Tensor | None = None,
    ) -> Tensor:
        """MIL instance scores (Eq. 5) with this head's settings: (N, HWA, C); 0 at anchors
        outside ``valid`` (N, HWA) (batch padding)."""
        if "mil_logits" not in head_outputs:
            raise RuntimeError("this MIALHead was built with use_mil=False: no MIL scores")
        return L.instance_mil_scores(
            head_outputs["cls_logits"], head_outputs["cls_logits2"], head_outputs["mil_logits"],
            self.levels(head_outputs, num_anchors_per_level), mode=self.mil_weighting,
            first_class=self.first_class, class_activation=self.mil_class_activation, valid=valid,
        )

    def image_class_scores(
        self, head_outputs: dict[str, Tensor], num_anchors_per_level: Sequence[int] | None = None
    ) -> Tensor:
        """Image class scores from the MIL branch: (N, C) in [1e-5, 1 - 1e-5]."""
        levels = self.levels(head_outputs, num_anchors_per_level)
        return L.image_class_scores(self.instance_mil_scores(head_outputs, levels), levels)

    def unlabeled_loss(
        self,
        head_outputs: dict[str, Tensor],
        stage: Literal["max", "min"],
        *,
        lam: float = 0.5,
        reweight: L.Reweight | None = None,
        squared: bool = False,
        pseudo_threshold: float = 0.5,
        num_anchors_per_level: Sequence[int] | None = None,
        valid: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Losses of an unlabeled batch in the max or min stage (Eq. 8, 9).

        ``discrepancy``: :func:`~activedet.models.mial_losses.max_step_unlabeled_loss` or
        ``min_step_unlabeled_loss`` (summed over images); ``mil`` (min stage with
        ``use_mil``): MIL loss against pseudo labels (Eq. 10), images without a positive
        pseudo label contributing 0. ``reweight`` defaults to ``"mil"`` with ``use_mil``,
        else ``"none"``. ``valid`` (N, HWA) bool: anchors outside it (batch padding,
        :func:`~activedet.models.mial_losses.anchors_inside`) take no part in any term.
        Freezing the right parameters is the trainer's job.
        """
        _check_choice("stage", stage, ("max", "min"))
        if reweight is None:
            reweight = "mil" if self.use_mil else "none"
        cls1, cls2 = head_outputs["cls_logits"], head_outputs["cls_logits2"]
        needs_mil = reweight == "mil" or (stage == "min" and self.use_mil)
        mil_scores = self.instance_mil_scores(head_outputs, num_anchors_per_level, valid) if needs_mil else None
        step = L.max_step_unlabeled_loss if stage == "max" else L.min_step_unlabeled_loss
        out = {"discrepancy": step(cls1, cls2, lam=lam, reweight=reweight, mil_scores=mil_scores,
                                   squared=squared, first_class=self.first_class, valid=valid)}
        if stage == "min" and self.use_mil and mil_scores is not None:
            pseudo = L.pseudo_image_labels(cls1, cls2, pseudo_threshold, first_class=self.first_class,
                                           valid=valid)
            scores = L.image_class_scores(mil_scores, self.levels(head_outputs, num_anchors_per_level))
            out["mil"] = self.mil_loss_weight * L.mil_loss(scores, pseudo, skip_empty=True,
                                                           class_reduction=self.mil_class_reduction)
        return out

    # ------------------------------------------------------------------ parameter groups

    def named_parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """``{"f1_f2": [...], "mil": [...], "regression": [...]}``: (name, parameter) pairs,
        names relative to the head (prefix ``head.`` inside RetinaNet). The groups
        partition the head's parameters."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in PARAMETER_GROUPS}
        for name, p in self.named_parameters():
            top = name.split(".", 1)[0]
            group = next(g for g, mods in PARAMETER_GROUPS.items() if top in mods)
            groups[group].append((name, p))
        return groups

    def f1_f2_parameters(self) -> list[nn.Parameter]:
        """Parameters of f1 and f2 (towers and final convs): what the max step trains."""
        return [p for _, p in self.named_parameter_groups()["f1_f2"]]

    def mil_parameters(self) -> list[nn.Parameter]:
        """Parameters of f_mil (empty when ``use_mil`` is False)."""
        return [p for _, p in self.named_parameter_groups()["mil"]]

    def regression_parameters(self) -> list[nn.Parameter]:
        """Parameters of the box regressor f_r."""
        return [p for _, p in self.named_parameter_groups()["regression"]]

    def set_trainable(self, group: str, trainable: bool) -> None:
        """``requires_grad_(trainable)`` on every parameter of ``group`` (a PARAMETER_GROUPS key)."""
        _check_choice("group", group, tuple(PARAMETER_GROUPS))
        for _, p in self.named_parameter_groups()[group]:
            p.requires_grad_(trainable)



def _group_norm_32(channels: int) -> nn.Module:
    """FCOS's tower normalisation (torchvision's ``FCOSHead`` default): GroupNorm, 32 groups."""
    return nn.GroupNorm(32, channels)


class MIALFCOSHead(MIALHead):
    """MIAL on FCOS: every location is an instance. A drop-in ``head`` for torchvision's FCOS::

        head = MIALFCOSHead(backbone.out_channels, 1, C + 1)
        model = torchvision.models.detection.FCOS(backbone, C + 1, anchor_generator=gen, head=head)

    f1, f2 and f_mil are :class:`MIALClassificationTower` s (one "anchor" per location,
    GroupNorm towers like FCOS's classification head); the box branch f_r is torchvision's
    ``FCOSRegressionHead`` (boxes and centerness), so ``model.box_prior``
    (:func:`activedet.models.detection.init_box_prior`) applies to it unchanged. Everything
    MIAL computes on the classifiers (MIL scores, discrepancies, pseudo labels, selection)
    is :class:`MIALHead` 's, on the (N, HW, K) location arrays.

    Labeled loss: FCOS's own. ``classification``: the focal losses of f1 and f2, each
    torchvision FCOS's (summed over the locations of the batch, divided by the batch's
    foreground count), combined by ``det_reduction``; ``bbox_regression`` (GIoU) and
    ``bbox_ctrness`` (BCE) straight from ``FCOSHead.compute_loss``; ``mil`` as in
    :class:`MIALHead`. Eval mode: detections from f1 and the centerness (torchvision's
    FCOS postprocessing reads ``cls_logits``, ``bbox_regression``, ``bbox_ctrness``).
    The RetinaNet-only keys ``regression_loss`` and ``smooth_l1_beta`` do not exist here.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, *,
                 norm_layer: _NormLayer = _group_norm_32, **kwargs: Any) -> None:
        """``kwargs``: :class:`MIALHead` 's, but RetinaNet's ``regression_loss`` and ``smooth_l1_beta``."""
        for key in ("regression_loss", "smooth_l1_beta"):
            if key in kwargs:
                raise TypeError(f"MIALFCOSHead has no {key!r}: FCOS keeps its GIoU box and centerness losses")
        super().__init__(in_channels, num_anchors, num_classes, norm_layer=norm_layer, **kwargs)
        self.box_coder = det_utils.BoxLinearCoder(normalize_by_size=True)  # FCOSHead.compute_loss reads it

    def _regression_head(self, in_channels: int, num_anchors: int, conv_depth: int, norm_layer: _NormLayer,
                         loss: Literal["smooth_l1", "l1"], beta: float) -> nn.Module:
        """torchvision's ``FCOSRegressionHead`` (``loss``, ``beta``: RetinaNet's, unused)."""
        return FCOSRegressionHead(in_channels, num_anchors, num_convs=conv_depth, norm_layer=norm_layer)

    def _box_outputs(self, x: list[Tensor]) -> dict[str, Tensor]:
        """``bbox_regression`` (N, HW, 4) and ``bbox_ctrness`` (N, HW, 1)."""
        reg, ctrness = self.regression_head(x)
        return {"bbox_regression": reg, "bbox_ctrness": ctrness}

    def _box_losses(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor],
                    anchors: list[Tensor], matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        """FCOS's ``bbox_regression`` (GIoU) and ``bbox_ctrness`` losses (torchvision's code)."""
        tv = FCOSHead.compute_loss(self, targets, head_outputs, anchors, matched_idxs)  # type: ignore[arg-type]
        return {"bbox_regression": tv["bbox_regression"], "bbox_ctrness": tv["bbox_ctrness"]}

    def _focal_loss(self, targets: list[dict[str, Tensor]], logits: Tensor, matched_idxs: list[Tensor]) -> Tensor:
        """torchvision FCOS's classification loss with this head's alpha, gamma; scalar.

        logits (N, HW, K); matched_idxs per image (HW,), GT index or -1. Summed over all
        locations of the batch and divided by the batch's foreground count (at least 1).
        """
        gt = torch.zeros_like(logits)
        num_fg = 0
        for b, (tgt, matched) in enumerate(zip(targets, matched_idxs)):
            fg = torch.where(matched >= 0)[0]
            gt[b, fg, tgt["labels"][matched[fg]]] = 1.0
            num_fg += fg.numel()
        loss = sigmoid_focal_loss(logits, gt, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum")
        return loss / max(1, num_fg)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
