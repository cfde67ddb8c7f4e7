"""Influence maths: Hessian-vector products, LiSSA, exact inverses, per-sample gradients.

No active learning inside; usable on any ``nn.Module`` + loss. Parameters are always an
explicit list chosen by the caller; vectors are *param-lists* (one tensor per parameter,
same shape). Sign convention: ``I(z, R) = -s_test · G_z`` with ``s_test = H^{-1} grad l(R)``;
the most negative influence is the most helpful sample.
"""

from activedet.influence.exact import exact_inverse_hvp, hessian_matrix
from activedet.influence.hvp import add, dot, flat, grad, hvp, scaled, top_eigenvalue, unflat, zeros_like
from activedet.influence.influence import (
    grad_similarity,
    influence_scores,
    reference_grad,
    sum_grads,
)
from activedet.influence.lissa import (
    HvpAt,
    HvpFn,
    HvpSource,
    hvp_source,
    lissa_inverse_hvp,
    loss_hvp_source,
    random_index_batches,
)
from activedet.influence.per_sample import (
    layer_grad_dots,
    layer_per_sample_grads,
    linear_ce_per_sample_grads,
    loop_per_sample_grads,
    per_sample_grads,
)

__all__ = [
    "HvpAt",
    "HvpFn",
    "HvpSource",
    "add",
    "dot",
    "exact_inverse_hvp",
    "flat",
    "grad",
    "grad_similarity",
    "hessian_matrix",
    "hvp",
    "hvp_source",
    "influence_scores",
    "layer_grad_dots",
    "layer_per_sample_grads",
    "linear_ce_per_sample_grads",
    "lissa_inverse_hvp",
    "loop_per_sample_grads",
    "loss_hvp_source",
    "per_sample_grads",
    "random_index_batches",
    "reference_grad",
    "scaled",
    "sum_grads",
    "top_eigenvalue",
    "unflat",
    "zeros_like",
]
