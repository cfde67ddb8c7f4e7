"""ISAL: influence selection for active learning (Liu et al., ICCV 2021), and its ablation.

For an unlabeled image ``z'`` ISAL scores ``I(z', R) = -s_test · G_z'`` with
``s_test = H^{-1} ∇l(R)`` and selects the most negative influence first:

- ``∇l(R)``: the sum over reference images of the gradient of the full training loss with
  ground-truth labels, eval mode (batch-norm/dropout frozen), no flip. ``reference``:
  ``validation`` (a separately labeled split, ``dataset.reference``; the paper),
  ``initial`` (the first labeled set, ISAL_v2) or ``labeled`` (the current labeled set,
  ISAL_v3). Without a reference split, ``validation`` falls back to
  ``reference_fallback`` (``labeled`` | ``initial`` | ``error``), with a warning; the
  choice actually used is in the returned ``Selection.info``.
- ``s_test``: LiSSA (supplementary Alg. 3, no final division by scale, per-group scales;
  damping 0.01, 4 repeats; depth by default one pass over the labeled set, at most the
  authors' ≈1000 images for detection / 250 for classification) over labeled images
  sampled from a seeded generator, or the exact solve
  ``(H + damping·D)^{-1} D ∇l(R)`` that LiSSA converges to (``inverse: exact``, small
  parameter counts), ``D`` the diagonal of per-group scales.
- ``G_z'`` (UUIC): the gradient of the model's own training loss against its pseudo labels.
  Classification: top-``top_k`` classes; with ``top_k > 1`` each class's gradient is
  weighted by its probability (Eq. 3; ``prob_weight: always`` also weights ``top_k = 1``).
  Detection: post-NMS detections with score ≥ ``pseudo_score_threshold``, at most
  ``max_pseudo_boxes`` per image; images without one are unscored (they fill the budget
  at random, after every scored image).

Gradients are taken only for the adapter's ``gradient_parameters()`` (or the names in
``parameters``). Per-image gradients come from one batched pass where the model allows it
(closed form ``dY ⊗ X`` for the conv / linear weights of classifiers and of the final
convs of FCOS / RetinaNet, ``torch.func.vmap`` as a classifier fallback) and from a
per-image loop otherwise (``batched: false``, and Faster R-CNN). For FCOS / RetinaNet the
batched path takes the pseudo boxes and the gradients from the same forward pass
(:meth:`_Model.dense_image_grads`), so an image costs about one inference pass plus its
loss.

``Selection.scores`` holds ``-I`` (higher = selected first). ``grad_similarity`` is the same
with ``s_test = ∇l(R)`` (no inverse Hessian; paper Sec. 4.4.2).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from activedet import distributed
from activedet.data.pool import Pool
from activedet.data.stream import chunk_batches
from activedet.errors import ConfigError, StrategyError
from activedet.influence import (
    flat,
    grad,
    hessian_matrix,
    hvp,
    influence_scores,
    layer_grad_dots,
    layer_per_sample_grads,
    lissa_inverse_hvp,
    loop_per_sample_grads,
    per_sample_grads,
    random_index_batches,
    top_eigenvalue,
    unflat,
)
from activedet.settings import Settings, setting
from activedet.strategies.base import RankingSettings, Selection, Strategy
from activedet.strategies.diversity import BatchMode
from activedet.strategies.registry import register

if TYPE_CHECKING:
    from activedet.models.base import Adapter, DetectorAdapter

log = logging.getLogger(__name__)

#: ISAL authors' LiSSA scales for FCOS, by the parameter's layer name
FCOS_SCALES = {"cls_logits": 100.0, "bbox_reg": 8000.0, "bbox_ctrness": 5000.0}
CLASSIFICATION_SCALE = 10_000.0
DEFAULT_DEPTH = {"detection": 1000, "classification": 250}


# ===================================================================== pure maths
def topk_target_weights(probs: Tensor, k: int, prob_weight: str = "auto") -> Tensor:
    """UUIC pseudo labels of a classifier as target weights (ISAL Eq. 3).

    Args:
        probs: ``(N, C)`` softmax probabilities.
        k: number of top classes used as labels, ``1 <= k <= C``.
        prob_weight: ``auto`` — weight each class by its probability when ``k > 1``, weight
            1 when ``k = 1`` (the authors' code); ``always`` — Eq. 3 literally.

    Returns:
        ``(N, C)`` weights ``t``; the loss ``-sum_c t_c log softmax_c`` has gradient
        ``sum_{i<=k} w_i ∇ l(z, label_i)``.
    """
    if probs.dim() != 2:
        raise ValueError(f"probs must be (N, C), got {tuple(probs.shape)}")
    c = probs.shape[1]
    if not 1 <= k <= c:
        raise ConfigError(f"strategy key 'top_k' = {k} must be in 1..{c} (number of classes)")
    if k == c and (k > 1 or prob_weight == "always"):
        raise ConfigError(
            f"strategy key 'top_k' = {k} is every class: weighted by the model's own probabilities the "
            "pseudo labels equal its softmax, so every expected gradient is exactly zero and the "
            f"ranking would be float noise; use top_k < {c}")
    top_p, top_i = probs.topk(k, dim=1)
    if k == 1 and prob_weight == "auto":
        top_p = torch.ones_like(top_p)
    return torch.zeros_like(probs).scatter_(1, top_i, top_p)


def soft_cross_entropy(logits: Tensor, weights: Tensor) -> Tensor:
    """``sum_n sum_c -weights[n, c] * log_softmax(logits)[n, c]``: logits, weights (N, C) -> scalar."""
    return -(weights.to(logits.dtype) * F.log_softmax(logits, dim=-1)).sum()


def pseudo_boxes(boxes: Tensor, scores: Tensor, labels: Tensor, threshold: float,
                 max_boxes: int) -> dict[str, Tensor] | None:
    """Detections kept as pseudo ground truth: score ≥ ``threshold``, positive size, the
    ``max_boxes`` highest scores. boxes (K, 4) xyxy, scores (K,), labels (K,) ->
    ``{"boxes": (M, 4), "labels": (M,)}`` or None when M = 0."""
    keep = (scores >= threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    idx = torch.nonzero(keep).flatten()
    idx = idx[scores[idx].argsort(descending=True, stable=True)][:max_boxes]
    if idx.numel() == 0:
        return None
    return {"boxes": boxes[idx].float(), "labels": labels[idx].long()}


def lissa_gain(mu: float, scale: float, damping: float, depth: int) -> float:
    """How much LiSSA (``depth`` steps, no final division) multiplies an eigen-direction of
    the Hessian with eigenvalue ``mu``: ``Σ_{t=0}^{depth} r^t``, ``r = 1 − damping − mu/scale``
    (inf when ``|r| >= 1``: the recursion diverges along it)."""
    r = 1.0 - damping - mu / scale
    if abs(r) >= 1.0:
        return float("inf")
    return (1.0 - r ** (depth + 1)) / (1.0 - r)


def lissa_verdict(lam_max: float, scales: Sequence[float], damping: float, depth: int) -> tuple[str, float]:
    """Does LiSSA invert the Hessian? ``(verdict, spread)``.

    ``spread`` = gain of the flattest directions (eigenvalue 0) / gain of the sharpest
    (``lam_max``, the dominant eigenvalue) at the smallest scale, :func:`lissa_gain`:
    ``diverges`` when the sharpest direction grows without bound (``|r| >= 1``; a negative
    ``lam_max`` diverges unless ``damping × scale > |lam_max|``), ``inert`` when the spread
    is below 2 (H⁻¹ ≈ a multiple of the identity: the ranking is gradient similarity, e.g.
    the authors' scale 1e4 for a top eigenvalue ≈ 80), else ``inverts``.
    """
    s = min(scales)
    sharp = lissa_gain(lam_max, s, damping, depth)
    if not math.isfinite(sharp) or lissa_gain(0.0, s, damping, depth) == float("inf"):
        return "diverges", float("inf")
    spread = lissa_gain(0.0, s, damping, depth) / sharp
    return ("inert" if spread < 2.0 else "inverts"), spread


def scaled_exact_solve(hess: Tensor, v: Tensor, scales: Tensor, damping: float) -> Tensor:
    """The fixed point of the LiSSA recursion without final division:
    ``x = (H + damping * D)^{-1} D v``, D = diag(scales). hess (P, P), v (P,), scales (P,)."""
    hess = 0.5 * (hess + hess.T)
    a = hess + damping * torch.diag(scales.to(hess.dtype))
    return torch.linalg.solve(a, scales.to(hess.dtype) * v.to(hess.dtype))


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Every parameter of ``model`` with ``requires_grad`` False inside (restored after)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class _Model:
    """Losses of one adapter: summed per-image losses with given labels, in eval mode."""

    def __init__(self, adapter: Adapter, names: list[str], params: list[nn.Parameter]) -> None:
        self.adapter = adapter
        #: the same adapter seen as a detector (ISAL's detection path), or None
        self.detector: DetectorAdapter | None = cast("DetectorAdapter", adapter) if adapter.task == "detection" \
            else None
        self.model: nn.Module = adapter.model
        self.detection = adapter.task == "detection"
        self.names = names
        self.weights = params

    @property
    def _detector(self) -> DetectorAdapter:
        if self.detector is None:
            raise StrategyError(f"{self.adapter.arch} is not a detector")
        return self.detector

    def load(self, dataset: Any, ids: Sequence[int]) -> tuple[Any, Any]:
        return self.adapter.load_batch(dataset, list(ids), False)

    def losses(self, inputs: Any, targets: Any) -> Tensor:
        """(N,) per-image losses against ``targets`` (labels or weights (N, C) / box dicts)."""
        if self.detection:
            return self._detector.image_losses(inputs, targets)
        self.model.eval()
        logits = self.model(inputs)
        if targets.dim() == 1:
            return F.cross_entropy(logits, targets, reduction="none")
        return -(targets.to(logits.dtype) * F.log_softmax(logits, dim=-1)).sum(-1)

    def loss_sum(self, dataset: Any, ids: Sequence[int]) -> Tensor:
        return self.losses(*self.load(dataset, ids)).sum()

    def batches(self, dataset: Any, ids: Sequence[int], size: int) -> list[list[int]]:
        """``ids`` in batches of at most ``size``. A detector's hold images of one input size
        (:meth:`~activedet.models.detection_adapter.DetectionAdapter.batches`): a detector pads
        a batch to its largest image, and an image's loss and gradient would otherwise depend
        on its batch-mates."""
        return self._detector.batches(dataset, ids, size) if self.detection else _chunks(ids, size)

    def layers(self) -> list[nn.Module] | None:
        """Conv2d/Linear modules owning the chosen weights, or None (no closed form)."""
        out = []
        for name in self.names:
            owner, _, leaf = name.rpartition(".")
            module = self.model.get_submodule(owner) if owner else self.model
            if leaf != "weight" or not isinstance(module, (nn.Conv2d, nn.Linear)) or \
                    (isinstance(module, nn.Conv2d) and module.groups != 1):
                return None
            out.append(module)
        return out

    # ------------------------------------------------------------------ UUIC
    def pseudo_targets(self, dataset: Any, ids: list[int], settings: Any) -> tuple[list[int], Any, Any]:
        """Images that get a score and (inputs, pseudo targets) for them."""
        if not self.detection:
            inputs, _ = self.load(dataset, ids)
            self.model.eval()
            with torch.no_grad():
                probs = self.model(inputs).float().softmax(-1)
            return ids, inputs, topk_target_weights(probs, int(settings.top_k), settings.prob_weight)
        kept, images, targets = [], [], []
        infs = self.adapter.infer(dataset, ids, max(1, len(ids)), keep_anchors=False)
        for inf in infs:
            tgt = pseudo_boxes(inf.boxes, inf.scores, inf.labels, float(settings.pseudo_score_threshold),
                               int(settings.max_pseudo_boxes))
            if tgt is not None:
                kept.append(inf.image_id)
                images.append(dataset.load_image(inf.image_id).to(self.adapter.device))
                targets.append({k: v.to(self.adapter.device) for k, v in tgt.items()})
        return kept, images, targets

    def image_grads(self, dataset: Any, ids: list[int], settings: Any,
                    batched: bool) -> tuple[list[int], list[Tensor]]:
        """The images of ``ids`` that get a score, and their stacked per-image gradients
        ``[(n, *p.shape)]`` against their UUIC pseudo labels (:meth:`pseudo_targets`,
        :meth:`sample_grads`). Batched dense detectors take :meth:`dense_image_grads`:
        pseudo boxes and gradients from one forward pass."""
        if self.one_pass(batched):
            return self.dense_image_grads(dataset, ids, settings)
        kept, inputs, targets = self.pseudo_targets(dataset, ids, settings)
        if not kept:
            return [], []
        return kept, self.sample_grads(inputs, targets, len(kept), batched)

    def one_pass(self, batched: bool) -> bool:
        """Whether :meth:`image_dots` takes the one-pass path of a dense detector (which
        reads the images it is handed, so they can be decoded ahead)."""
        return batched and self.detection and self._detector.dense and self.layers() is not None

    def image_dots(self, dataset: Any, ids: list[int], settings: Any, batched: bool,
                   vectors: list[Tensor], images: list[Tensor] | None = None) -> tuple[list[int], Tensor]:
        """The images of ``ids`` that get a score and ``(n,)`` dots of their per-image
        gradients (:meth:`image_grads`) with ``vectors`` (one per chosen parameter). Batched
        dense detectors never form the gradients (:func:`layer_grad_dots`); ``images``: the
        images of ``ids`` already decoded (``dataset.load_image``), for that path."""
        if self.one_pass(batched):
            kept_rows, dots = self._dense_pass(dataset, ids, settings,
                                               lambda loss, layers, n: layer_grad_dots(loss, layers, vectors, n,
                                                                                       cut_below=True), images)
            return [int(ids[r]) for r in kept_rows], dots[kept_rows]
        kept, g = self.image_grads(dataset, ids, settings, batched)
        if not kept:
            return [], torch.zeros(0)
        return kept, -influence_scores(vectors, g)

    def dense_image_grads(self, dataset: Any, ids: list[int], settings: Any) -> tuple[list[int], list[Tensor]]:
        """:meth:`image_grads` of FCOS / RetinaNet from one forward pass over ``ids``
        (:meth:`_dense_pass`)."""
        kept, grads = self._dense_pass(dataset, ids, settings,
                                       lambda loss, layers, n: layer_per_sample_grads(loss, layers, n, cut_below=True))
        return [int(ids[r]) for r in kept], [g[kept] for g in grads]

    def _dense_pass(self, dataset: Any, ids: list[int], settings: Any,
                    consume: Callable[[Callable[[], Tensor], list[nn.Module], int], Any],
                    decoded: list[Tensor] | None = None) -> tuple[list[int], Any]:
        """One forward pass of FCOS / RetinaNet over ``ids``: the rows that get pseudo boxes,
        and ``consume(loss, final layers, n)`` of their summed training loss.

        The detections come from the adapter's own post-processing (``pass_detections``) of
        that pass (``dense_pass``), the pseudo boxes from them as in :meth:`pseudo_targets`, and each kept
        image's training loss from the same head outputs (batch-norm frozen, as in
        ``DetectionAdapter.image_losses``, which for these models computes what eval mode does), back to
        the final convs only (:func:`layer_per_sample_grads` with ``cut_below``, every
        parameter frozen during the pass, so no graph is kept below those convs). Equals
        the two-pass path (inference, then a loss pass over the kept images) for images of
        one input size, which is what scoring batches hold (:meth:`_Model.batches`).
        """
        model, device, detector = self.model, self.adapter.device, self._detector
        layers = self.layers()
        assert layers is not None
        images = [img.to(device) for img in (decoded if decoded is not None else map(dataset.load_image, ids))]
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        kept: list[int] = []

        def loss() -> Tensor:
            p = detector.dense_pass(images)  # graph-connected head outputs, for the losses
            dets = detector.pass_detections(p.detached(), original_sizes, keep_anchors=False)
            terms = []
            for row, (size, det) in enumerate(zip(original_sizes, dets)):
                tgt = pseudo_boxes(det.boxes, det.scores, det.labels, float(settings.pseudo_score_threshold),
                                   int(settings.max_pseudo_boxes))
                if tgt is None:
                    continue
                kept.append(row)
                target = {"boxes": detector.boxes_to_input(tgt["boxes"].to(device), size,
                                                           p.image_list.image_sizes[row]),
                          "labels": tgt["labels"].to(device)}
                terms.append(detector.pass_image_loss(p, target, row))
            return torch.stack(terms).sum() if terms else torch.zeros((), device=device)

        model.eval()
        with _frozen(model), torch.enable_grad():
            result = consume(loss, layers, len(ids))
        return kept, result

    def sample_grads(self, inputs: Any, targets: Any, n: int, batched: bool) -> list[Tensor]:
        """Stacked per-image gradients ``[(n, *p.shape)]`` of the chosen parameters.

        Batched: closed form from one forward + one backward to the outputs of the layers
        owning the weights (FCOS / RetinaNet heads, classifiers' conv / linear weights);
        classifiers fall back to ``torch.func.vmap``; otherwise (or ``batched=False``,
        Faster R-CNN) one backward pass per image.
        """
        if batched and (not self.detection or self._detector.dense):
            layers = self.layers()
            if layers is not None:
                try:
                    return layer_per_sample_grads(lambda: self.losses(inputs, targets).sum(), layers, n)
                except RuntimeError as exc:  # e.g. an in-place op on a layer output
                    log.warning("closed-form per-sample gradients failed (%s); falling back", exc)
            if not self.detection:
                self.model.eval()
                return per_sample_grads(self.model, soft_cross_entropy, inputs, targets, self.weights)
        if self.detection:
            return loop_per_sample_grads(lambda i: self.losses([inputs[i]], [targets[i]])[0], self.weights, n)
        return loop_per_sample_grads(lambda i: self.losses(inputs[i:i + 1], targets[i:i + 1])[0],
                                     self.weights, n)


def _chunks(ids: Sequence[int], size: int) -> list[list[int]]:
    ids = list(ids)
    return [ids[s:s + size] for s in range(0, len(ids), size)]


# ===================================================================== strategies
@dataclass(frozen=True)
class InfluenceSettings(Settings):
    """Keys of ``isal`` and ``grad_similarity``."""

    reference: Literal["validation", "initial", "labeled"] = setting(
        "validation", "images R whose loss gradient is the target: dataset.reference (paper), the "
                      "first labeled set (ISAL_v2) or the current labeled set (ISAL_v3)")
    reference_fallback: Literal["labeled", "initial", "error"] = setting(
        "labeled", "used (with a warning) when reference is validation and there is no dataset.reference")
    max_reference: int | None = setting(None, "cap on reference images (a seeded subset); null: all", ge=1)
    top_k: int = setting(1, "classifiers: top classes used as pseudo labels", ge=1)
    prob_weight: Literal["auto", "always"] = setting(
        "auto", "weight pseudo labels by probability: only when top_k > 1 (auto) or always (Eq. 3)",
        provenance="auto: the authors' code; always: the paper's Eq. 3")
    pseudo_score_threshold: float = setting(0.5, "detectors: detections scoring at least this are pseudo "
                                                 "boxes", ge=0, le=1, provenance="ISAL VOC: 0.5, COCO: 0.1")
    max_pseudo_boxes: int = setting(100, "detectors: at most this many pseudo boxes per image", ge=1)
    parameters: list[str] | None = setting(None, "names of the parameters whose gradients are used; "
                                                 "null: the adapter's default (final layers)", min_items=1)
    batched: bool = setting(True, "per-image gradients from one batched pass where the model allows it")
    batch_size: int = setting(8, "images per gradient batch", ge=1)


@dataclass(frozen=True)
class ISALSettings(InfluenceSettings, RankingSettings):
    batch: BatchMode = setting(
        "class_balanced", "the batch: the top scores (topk), or a diverse batch among the top preselect x "
                          "batch images: kcenter | kmeanspp on pooled features, class_balanced over "
                          "predicted classes",
        provenance="the paper: topk; activedet: class_balanced, since every image is ranked against one "
                   "s_test direction and topk fills a batch with same-class near-duplicates (Fashion-MNIST, "
                   "5 seeds: final top-1 0.606 topk vs 0.666 class_balanced, random 0.644)")
    inverse: Literal["lissa", "exact"] = setting("lissa", "inverse-HVP: LiSSA, or the exact solve it "
                                                          "converges to (small parameter counts)")
    depth: int | None = setting(None, "LiSSA recursion depth; null: one pass over the labeled set, at "
                                      "most 1000 (detection) / 250 (classification)", ge=1,
                                provenance="authors' code")
    repeats: int = setting(4, "LiSSA runs averaged", ge=1)
    damping: float = setting(0.01, "LiSSA damping", ge=0, lt=1)
    scale: float | list[float] | Literal["auto"] | None = setting(
        None, "LiSSA scale: one number, one per parameter, auto: scale_margin x the top Hessian "
              "eigenvalue (power iteration), or null: FCOS/RetinaNet cls 100, reg 8000, ctr 5000, "
              "else 10000", gt=0, provenance="null: the authors' code; auto: activedet")
    scale_margin: float = setting(2.0, "scale: auto sets scale to this x the estimated top eigenvalue "
                                       "(LiSSA converges for scale > eigenvalue / 2)", gt=0.5, le=1e6)
    power_iters: int = setting(20, "power-iteration steps estimating the top Hessian eigenvalue "
                                   "(scale: auto, and the LiSSA convergence check)", ge=1)
    power_images: int = setting(64, "labeled images (a seeded subset) whose mean Hessian the power "
                                     "iteration uses", ge=1)
    check_inverse: bool = setting(True, "inverse lissa: estimate the top eigenvalue and warn when LiSSA "
                                        "diverges or is inert (H^-1 ~ identity: gradient similarity)")
    lissa_batch_size: int = setting(1, "labeled images per LiSSA step", ge=1)
    exact_max_params: int = setting(5000, "inverse exact: refuse more parameters than this", ge=1)


class InfluenceStrategy(Strategy):
    """Shared machinery of ``isal`` and ``grad_similarity`` (they differ in :meth:`_s_test`)."""

    tasks = ("detection", "classification")
    archs = None  # any model that provides what it wants
    wants = frozenset({"image_losses"})
    settings_type = InfluenceSettings

    ranks = True  # its _select scores every unlabeled image, then ranks like the others

    def _select(self, adapter: Adapter, pool: Pool, budget: int, rng: np.random.Generator,
                batch: int) -> Selection:
        """Score every unlabeled image (:meth:`score`) and rank; the :class:`Selection`'s
        ``info`` says which reference set, parameters and LiSSA check were used."""
        info: dict[str, Any] = {}
        scores = self.score_all(adapter, pool, pool.unlabeled, rng, info=info)
        return self.rank(adapter, pool, pool.unlabeled, scores, budget, rng, batch, info)

    # ------------------------------------------------------------------ setup
    def _parameters(self, adapter: Adapter) -> tuple[list[str], list[nn.Parameter]]:
        names = self.settings.parameters
        if names is None:
            chosen = list(adapter.gradient_parameters())
        else:
            by_name = dict(adapter.model.named_parameters())
            missing = [n for n in names if n not in by_name]
            if missing:
                raise ConfigError(f"strategy key 'parameters': the model has no parameter {missing[0]!r}")
            chosen = [(n, by_name[n]) for n in names]
        frozen = [n for n, q in chosen if not q.requires_grad]
        if frozen:
            raise StrategyError(f"parameter {frozen[0]!r} is frozen (requires_grad=False); ISAL needs its gradient")
        return [n for n, _ in chosen], [q for _, q in chosen]

    def _reference(self, pool: Pool, rng: np.random.Generator) -> tuple[str, Any, list[int]]:
        which = self.settings.reference
        if which == "validation" and pool.reference is None:
            fallback = self.settings.reference_fallback
            if fallback == "error":
                raise ConfigError("strategy key 'reference' = 'validation' needs 'dataset.reference' "
                                  "(a labeled split apart from the test split)")
            log.warning("%s: no dataset.reference split; using the %s set as reference", self.name, fallback)
            which = fallback
        if which == "validation":
            dataset, ids = pool.reference, list(pool.reference.ids)  # type: ignore[union-attr]
        elif which == "initial":
            dataset, ids = pool.dataset, [i for i in pool.labeled if pool.round_of[i] == 0]
        else:
            dataset, ids = pool.dataset, list(pool.labeled)
        if not ids:
            raise StrategyError(f"{self.name}: the '{which}' reference set is empty")
        cap = self.settings.max_reference
        if cap is not None and len(ids) > cap:
            ids = sorted(ids[int(j)] for j in rng.choice(len(ids), size=cap, replace=False))
        return which, dataset, ids

    # ------------------------------------------------------------------ scoring
    def score(self, adapter: Adapter, pool: Pool, ids: list[int], rng: np.random.Generator,
              info: dict[str, Any] | None = None) -> dict[int, float]:
        """``-I`` per image of ``ids`` (higher first); ``info``, when given, receives what
        was used (reference set and size, parameters, scored counts, LiSSA check)."""
        info = {} if info is None else info
        if pool.dataset is None:
            raise StrategyError(f"{self.name} needs the pool's dataset (Pool.from_dataset)")
        if adapter.variant != "plain":
            raise StrategyError(f"{self.name} scores plain models, got variant {adapter.variant!r}")
        names, params = self._parameters(adapter)
        m = _Model(adapter, names, params)
        seed = int(rng.integers(0, 2**31 - 1))
        dev = torch.device(adapter.device)
        devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # Faster R-CNN samples anchors from the global RNG
            torch.manual_seed(seed)
            which, ref_ds, ref_ids = self._reference(pool, rng)
            bs = int(self.settings.batch_size)
            v = [torch.zeros_like(q).detach() for q in params]
            for chunk in m.batches(ref_ds, distributed.shard(ref_ids, bs), bs):  # each process its share of R
                v = [a + b for a, b in zip(v, grad(m.loss_sum(ref_ds, chunk), params))]
            v = distributed.all_reduce_sum(v)
            # the inverse-HVP once, on rank 0, handed to every process (identity in one process)
            s_test = [t.to(q.device) for t, q in zip(distributed.on_main(
                lambda: [t.detach().cpu() for t in self._s_test(m, pool, v, seed, info)]), params)]
            out: dict[int, float] = {}
            batched = bool(self.settings.batched)
            chunks = m.batches(pool.dataset, ids, bs)
            stream = (chunk_batches(pool.dataset, chunks, int(adapter.workers or 0))
                      if m.one_pass(batched) else ((c, None) for c in chunks))  # loader processes read ahead
            for chunk, images in stream:
                # s_test · G_z' per image: minus its influence on the reference loss (higher = more helpful)
                kept, dots = m.image_dots(pool.dataset, chunk, self.settings, batched, s_test, images)
                out.update({i: float(x) for i, x in zip(kept, dots.tolist())})
        info.update({"reference": which, "reference_images": len(ref_ids), "parameters": names,
                               "scored": len(out), "unscored": len(ids) - len(out)})
        return out

    def _s_test(self, m: _Model, pool: Pool, v: list[Tensor], seed: int, info: dict[str, Any]) -> list[Tensor]:
        """The vector sample gradients are dotted with; here ``∇l(R)`` itself (no H⁻¹).
        ``info`` receives what the choice of vector reports."""
        return v


@register
class ISALStrategy(InfluenceStrategy):
    """ISAL: ``-H^{-1}∇l(R) · G_z'``, LiSSA (or exact) inverse-HVP over the labeled set."""

    name = "isal"
    reference = "Liu et al., ICCV 2021 (Influence Selection for Active Learning)"
    settings_type = ISALSettings

    def scales(self, names: Sequence[str], task: str, arch: str, lam_max: float | None = None) -> list[float]:
        """LiSSA scale of each parameter group (see the ``scale`` key); ``auto`` needs
        ``lam_max``, the Hessian's dominant eigenvalue."""
        s = self.settings.scale
        if s == "auto":
            if lam_max is None or not math.isfinite(lam_max) or lam_max == 0:
                raise StrategyError(f"isal: strategy key 'scale' = 'auto' needs the top Hessian eigenvalue; "
                                    f"power iteration gave {lam_max!r}")
            return [float(self.settings.scale_margin) * abs(lam_max)] * len(names)
        if s is None:
            if task == "classification":
                return [CLASSIFICATION_SCALE] * len(names)
            out = []
            for n in names:
                layer = n.rsplit(".", 2)[-2] if "." in n else n
                out.append(FCOS_SCALES.get(layer, CLASSIFICATION_SCALE) if arch in ("fcos", "retinanet")
                           else CLASSIFICATION_SCALE)
            return out
        if isinstance(s, float):
            return [s] * len(names)
        if len(s) != len(names):  # the parameter count is known only with the model
            raise ConfigError(f"strategy key 'scale' = {s!r} must be a number or a list of "
                              f"{len(names)} numbers (one per parameter: {', '.join(names)})")
        return list(s)

    def depth(self, task: str, n_labeled: int) -> int:
        """LiSSA recursion depth: the ``depth`` key, or (None) one pass over the labeled set
        in ``lissa_batch_size`` batches, at most 1000 (detection) / 250 (classification)."""
        if self.settings.depth is not None:
            return int(self.settings.depth)
        per_pass = -(-n_labeled // int(self.settings.lissa_batch_size))
        return max(1, min(DEFAULT_DEPTH[task], per_pass))

    def _s_test(self, m: _Model, pool: Pool, v: list[Tensor], seed: int, info: dict[str, Any]) -> list[Tensor]:
        labeled = list(pool.labeled)
        if not labeled:
            raise StrategyError("isal needs a labeled set to estimate the Hessian")
        task = m.adapter.task
        damping = float(self.settings.damping)
        ds = pool.dataset
        lissa = self.settings.inverse == "lissa"
        lam = None
        if self.settings.scale == "auto" or (lissa and self.settings.check_inverse):
            lam = self.top_eigenvalue(m, ds, labeled, seed)
        scales = self.scales(m.names, task, m.adapter.arch, lam)
        info.update(lambda_max=lam, scales=scales)
        if self.settings.inverse == "exact":
            hess = None
            for chunk in m.batches(ds, labeled, int(self.settings.batch_size)):
                h = hessian_matrix(lambda c=chunk: m.loss_sum(ds, c), m.weights,
                                   max_params=int(self.settings.exact_max_params))
                hess = h if hess is None else hess + h
            assert hess is not None
            hess = hess / len(labeled)
            dvec = torch.cat([torch.full((q.numel(),), sc, dtype=hess.dtype, device=hess.device)
                              for q, sc in zip(m.weights, scales)])
            x = scaled_exact_solve(hess, flat(v).to(hess.dtype), dvec, damping)
            return [t.to(q.dtype) for t, q in zip(unflat(x, m.weights), m.weights)]
        depth = self.depth(task, len(labeled))
        batches = random_index_batches(len(labeled), batch_size=int(self.settings.lissa_batch_size),
                                       generator=torch.Generator().manual_seed(seed))

        def hvp_at(index: Tensor, h: list[Tensor]) -> list[Tensor]:
            chunk = [labeled[int(j)] for j in index]
            return hvp(lambda: m.loss_sum(ds, chunk) / len(chunk), m.weights, h)

        def source(run: int) -> Any:
            return ((lambda h, b=b: hvp_at(b, h)) for b in batches(run))

        s_test = lissa_inverse_hvp(v, source, depth=int(depth), repeats=int(self.settings.repeats),
                                   damping=damping, scale=scales, progress=False)
        if lam is not None:
            info.update(self._check_lissa(lam, scales, damping, int(depth), v, s_test))
        return s_test

    def top_eigenvalue(self, m: _Model, dataset: Any, labeled: list[int], seed: int) -> float:
        """Dominant eigenvalue of the mean per-image Hessian (the one LiSSA samples) over a
        seeded subset of ``power_images`` labeled images, by ``power_iters`` steps of power
        iteration on the same Hessian-vector products."""
        rng = np.random.default_rng(seed)
        n = min(len(labeled), int(self.settings.power_images))
        ids = sorted(labeled[int(j)] for j in rng.choice(len(labeled), size=n, replace=False))
        chunks = m.batches(dataset, ids, int(self.settings.batch_size))

        def mean_hvp(h: list[Tensor]) -> list[Tensor]:
            out = [torch.zeros_like(q) for q in m.weights]
            for c in chunks:
                out = [a + b for a, b in zip(out, hvp(lambda c=c: m.loss_sum(dataset, c), m.weights, h))]
            return [x / n for x in out]

        lam, _ = top_eigenvalue(mean_hvp, m.weights, generator=torch.Generator().manual_seed(seed),
                                iters=int(self.settings.power_iters))
        return lam

    def _check_lissa(self, lam: float, scales: list[float], damping: float, depth: int, v: list[Tensor],
                     s_test: list[Tensor]) -> dict[str, Any]:
        """Warn when LiSSA diverges or leaves ``∇l(R)`` nearly as it is; returns the verdict
        for the selection's ``info``."""
        if not math.isfinite(lam):
            log.warning("isal: power iteration gave a non-finite Hessian eigenvalue (%r); LiSSA not checked", lam)
            return {"lissa": "unknown"}
        verdict, spread = lissa_verdict(lam, scales, damping, depth)
        fv, fs = flat(v).double(), flat(s_test).double()
        cos = float(fv @ fs / (fv.norm() * fs.norm())) if fv.norm() > 0 and fs.norm() > 0 else float("nan")
        out = {"lissa": verdict, "lissa_spread": spread, "lissa_cosine": cos}
        where = (f"top Hessian eigenvalue {lam:.4g}, scale {min(scales):.4g}, damping {damping:g}, "
                 f"depth {depth}; cos(s_test, grad) = {cos:.3f}")
        if verdict == "diverges" or not bool(torch.isfinite(fs).all()):
            log.warning("isal: LiSSA diverges (%s); raise 'scale' (or use scale: auto)", where)
        elif verdict == "inert":
            log.warning("isal: LiSSA is nearly inert (%s): it reweights the sharpest and the flattest "
                        "directions by %.2fx only, so H^-1 ~ identity and the ranking is gradient "
                        "similarity; use scale: auto", where, spread)
        return out


@register
class GradSimilarityStrategy(InfluenceStrategy):
    """ISAL's ablation without ``H^{-1}``: score ``-∇l(R) · G_z'``."""

    name = "grad_similarity"
    reference = "ISAL ablation (Liu et al., ICCV 2021, Sec. 4.4.2): gradient similarity"


__all__ = [
    "GradSimilarityStrategy",
    "ISALStrategy",
    "InfluenceStrategy",
    "lissa_gain",
    "lissa_verdict",
    "pseudo_boxes",
    "scaled_exact_solve",
    "soft_cross_entropy",
    "topk_target_weights",
]
