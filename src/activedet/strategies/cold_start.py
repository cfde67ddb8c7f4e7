"""Round 0 without labels: ``loop.initial_strategy: random | typical | kcenter``.

With no label there is no model to ask, so a first batch can only use what the images look
like. Both label-free strategies embed the pool with ImageNet MobileNetV2 (torchvision's
``IMAGENET1K_V1`` weights: the hub cache, else the packaged copy, as the detectors load
them), globally pooled and L2-normalised, at a fixed 128 x 128 input:

- ``typical``: TypiClust (Hacohen et al., ICML 2022, "Active Learning on a Budget"):
  k-means into as many clusters as images to pick (scikit-learn's ``KMeans``); from each
  cluster, largest first, its most *typical* image, the inverse mean distance to its
  ``k`` nearest neighbours in the cluster (k = 20, fewer in small clusters). Beyond one per
  cluster (a budget in boxes may take more images) the ranking continues round-robin with
  each cluster's next most typical image.
- ``kcenter``: greedy k-center on the same embeddings (the first center seeded), then the
  rest in random order.

``rank`` returns every unlabeled id in order; the loop takes from the front as the budget
allows (:func:`activedet.loop.runner.fit_budget`).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from activedet.errors import ConfigError

log = logging.getLogger(__name__)

STRATEGIES = ("random", "typical", "kcenter")
SIZE = 128  # input side for the embedding
NEIGHBOURS = 20
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def embed(dataset: Any, ids: Sequence[int], device: str | torch.device = "cpu", batch_size: int = 64,
          workers: int = 0) -> np.ndarray:
    """(N, 1280) L2-normalised ImageNet MobileNetV2 features of ``ids``, in that order."""
    import torch.nn.functional as F
    import torchvision

    from activedet.data.stream import image_batches
    from activedet.models.detection import imagenet_state_dict

    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(imagenet_state_dict("mobilenet_v2"))
    net = net.features.eval().to(device)
    rows: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for chunk, images in image_batches(dataset, list(ids), batch_size, workers):
            x = torch.stack([F.interpolate(img[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False,
                                           antialias=True)[0] for img in images])
            x = ((x - _MEAN) / _STD).to(device)
            f = F.adaptive_avg_pool2d(net(x), 1).flatten(1)
            f = F.normalize(f, dim=1).cpu().numpy()
            rows.update(zip(chunk, f))
    return np.stack([rows[i] for i in ids]).astype(np.float32)


def typicality(x: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """(N,) the inverse mean Euclidean distance of each row of ``x`` (N, D) to its ``k``
    nearest other rows (k capped at N - 1; a single row gets +inf)."""
    from sklearn.neighbors import NearestNeighbors

    n = len(x)
    if n == 1:
        return np.array([np.inf])
    k = min(k, n - 1)
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    mean = dist[:, 1:].mean(axis=1)  # column 0 is the row itself
    with np.errstate(divide="ignore"):
        return 1.0 / mean


def typiclust(x: np.ndarray, budget: int, seed: int) -> list[int]:
    """Row indices of ``x`` (N, D) in TypiClust order (see the module docstring)."""
    from sklearn.cluster import KMeans

    n = len(x)
    k = max(1, min(budget, n))
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed % (2 ** 31)).fit_predict(x) if k > 1 \
        else np.zeros(n, dtype=int)
    clusters = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if members.size:
            typ = typicality(x[members])
            clusters.append(members[np.lexsort((members, -typ))])  # most typical first, ties by index
    clusters.sort(key=lambda m: (-len(m), m[0]))  # largest cluster first
    # round robin: every cluster's j-th most typical before any cluster's (j+1)-th
    keyed = [(j, c, int(i)) for c, members in enumerate(clusters) for j, i in enumerate(members)]
    return [i for _, _, i in sorted(keyed)]


def rank(name: str, dataset: Any, ids: Sequence[int], budget: int, rng: np.random.Generator,
         device: str | torch.device = "cpu", workers: int = 0) -> list[int]:
    """Every id of ``ids`` in round 0's order under initial strategy ``name``;
    ``budget``: the images the round is expected to take."""
    ids = list(ids)
    if name not in STRATEGIES:
        raise ConfigError(f"config key 'loop.initial_strategy' = {name!r} is not one of {', '.join(STRATEGIES)}")
    if name == "random" or not ids:
        return [ids[i] for i in rng.permutation(len(ids))]
    x = embed(dataset, ids, device, workers=workers)
    if name == "typical":
        order = typiclust(x, budget, int(rng.integers(2 ** 31)))
    else:
        from activedet.strategies.diversity import k_center_greedy

        picks, _ = k_center_greedy(x, np.zeros(len(ids), dtype=bool), min(budget, len(ids)), rng)
        chosen = set(picks)
        rest = [i for i in rng.permutation(len(ids)) if i not in chosen]
        order = list(picks) + [int(i) for i in rest]
    log.info("round 0: %s first batch from ImageNet MobileNetV2 features of %d images", name, len(ids))
    return [ids[i] for i in order]


__all__ = ["STRATEGIES", "embed", "rank", "typicality", "typiclust"]
