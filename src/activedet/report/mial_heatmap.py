"""MIAL heat maps (paper Fig. 6): instance uncertainty and MIL score over an image.

For one image, every anchor's value is added to each pixel its box covers, so a pixel
shows the summed value of the anchors over it (anchors in original image pixels, clipped
to the image). Two maps: the instance uncertainty ``mean_c |σ(f1) − σ(f2)|`` (or squared)
and the MIL instance score (Eq. 5) summed over classes. Both are nonnegative.

:func:`write_run_heatmaps` draws them for the top-scored images of a recorded ``mial`` run,
with the model that scored them (the checkpoint of the round before the selection).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from activedet.errors import ActivedetError

if TYPE_CHECKING:
    from activedet.models.base import Adapter

__all__ = ["box_sum_map", "image_heatmaps", "save_heatmap", "write_run_heatmaps"]


def box_sum_map(values: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``out[y, x] = Σ values[a]`` over anchors ``a`` whose box covers pixel (x, y): (H, W).

    Args:
        values: (A,) per-anchor values.
        boxes: (A, 4) xyxy boxes in pixels; pixel (x, y) is covered when
            ``x1 <= x + 0.5 < x2`` and ``y1 <= y + 0.5 < y2`` (its centre lies in the box).
            Boxes are clipped to the image; boxes outside it add nothing.
        image_size: (H, W).
    """
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    b = np.asarray(boxes, dtype=np.float64)
    if b.shape != (vals.size, 4):
        raise ValueError(f"boxes must be ({vals.size}, 4) for {vals.size} values, got {b.shape}")
    h, w = int(image_size[0]), int(image_size[1])
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive (H, W), got {image_size}")
    # first / one-past-last covered pixel along each axis
    x0 = np.clip(np.ceil(b[:, 0] - 0.5), 0, w).astype(np.int64)
    x1 = np.clip(np.ceil(b[:, 2] - 0.5), 0, w).astype(np.int64)
    y0 = np.clip(np.ceil(b[:, 1] - 0.5), 0, h).astype(np.int64)
    y1 = np.clip(np.ceil(b[:, 3] - 0.5), 0, h).astype(np.int64)
    keep = (x1 > x0) & (y1 > y0)
    diff = np.zeros((h + 1, w + 1), dtype=np.float64)  # 2-D difference array
    v = vals[keep]
    np.add.at(diff, (y0[keep], x0[keep]), v)
    np.add.at(diff, (y0[keep], x1[keep]), -v)
    np.add.at(diff, (y1[keep], x0[keep]), -v)
    np.add.at(diff, (y1[keep], x1[keep]), v)
    out = diff.cumsum(0).cumsum(1)[:h, :w]
    if (vals >= 0).all():
        out = np.maximum(out, 0.0)  # cumulative sums of nonnegative values: remove rounding
    return out


def image_heatmaps(adapter: Adapter, dataset: Any, image_id: int, squared: bool = False) -> dict[str, np.ndarray]:
    """Heat maps of one image from a MIAL adapter: ``{"uncertainty": (H, W),
    "mil": (H, W)}`` (``mil`` only with the MIL head), in the image's own pixels."""
    from activedet.strategies.mial import anchor_maps

    head = adapter.mial_head()
    if head is None:
        raise ActivedetError("heat maps need a model with the MIAL head (a 'mial' run)")
    inf = next(iter(adapter.infer(dataset, [image_id], batch_size=1, keep_anchors=True)))
    size = tuple(int(v) for v in dataset.load_image(image_id).shape[-2:])
    u, mil = anchor_maps(head, inf.extra, squared=squared)
    anchors = inf.extra["anchors"].double().numpy()
    maps = {"uncertainty": box_sum_map(u, anchors, size)}
    if mil is not None:
        maps["mil"] = box_sum_map(mil, anchors, size)
    return maps


def _as_hwc(image: Any) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        arr = image.detach().cpu().float().numpy()
        if arr.ndim == 3 and arr.shape[0] in (1, 3):
            arr = arr.transpose(1, 2, 0)
    else:
        arr = np.asarray(image)
    arr = arr.astype(np.float64)
    if arr.max(initial=0.0) > 1.0:
        arr = arr / 255.0
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return np.clip(arr, 0.0, 1.0)


def save_heatmap(image: Any, maps: dict[str, np.ndarray], path: str | Path, title: str = "",
                 panel_px: int = 256) -> Path:
    """PNG of the image followed by one overlay panel per map: (panel_px · (1 + len(maps)))
    × panel_px pixels. ``image``: (3, H, W) tensor in [0, 1] or (H, W, 3) array."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    img = _as_hwc(image)
    n = 1 + len(maps)
    dpi = 100
    fig = Figure(figsize=(panel_px * n / dpi, panel_px / dpi), dpi=dpi)
    panels = [("image" if not title else title, None)] + list(maps.items())
    for k, (name, m) in enumerate(panels):
        ax = fig.add_axes((k / n, 0.0, 1.0 / n, 1.0))
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        if m is not None:
            if m.shape != img.shape[:2]:
                raise ValueError(f"map '{name}' is {m.shape}, image is {img.shape[:2]}")
            ax.imshow(m, cmap="jet", alpha=0.5, interpolation="bilinear", vmin=0.0,
                      vmax=float(m.max()) if m.max() > 0 else 1.0)
            name = f"{name} (max {m.max():.3g})"
        ax.text(0.02, 0.98, name, transform=ax.transAxes, va="top", ha="left", fontsize=7, color="white",
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
        ax.set_axis_off()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def write_run_heatmaps(run_dir: str | Path, out_dir: str | Path, n: int = 5,
                       round_: int | None = None, squared: bool | None = None) -> list[Path]:
    """Heat maps for the ``n`` top-scored images of a ``mial`` run's selection round.

    ``round_``: the selection round (default: the last one with scores). The images are
    scored by the model of the round before, loaded from its checkpoint. ``squared``
    defaults to the run's ``uncertainty`` setting. Returns the PNG paths, best first.
    """
    from activedet.config import load_config
    from activedet.loop.ledger import Ledger
    from activedet.loop.runner import load_checkpoint, prepare
    from activedet.models.factory import build_adapter

    if n < 1:
        raise ActivedetError(f"number of heat maps must be >= 1, got {n}")
    run_dir = Path(run_dir)
    with Ledger(run_dir) as ledger:
        rounds = ledger.rounds()
        strategy = ledger.meta().get("strategy")
    if strategy != "mial":
        raise ActivedetError(f"heat maps are drawn for 'mial' runs; {run_dir} ran '{strategy}'")
    scored = [r for r in rounds if r["scores"]]
    if round_ is not None:
        scored = [r for r in scored if r["round"] == round_]
    if not scored:
        raise ActivedetError(f"{run_dir} has no scored round" + ("" if round_ is None else f" {round_}"))
    row = scored[-1]
    prev = {r["round"]: r for r in rounds}.get(row["round"] - 1)
    if prev is None or not prev.get("checkpoint"):
        raise ActivedetError(f"{run_dir}: no checkpoint of round {row['round'] - 1}, which scored round {row['round']}")
    cfg = load_config(run_dir / "config.yaml")
    exp = prepare(cfg)
    adapter = build_adapter(cfg, exp.train.num_classes, exp.strategy)
    adapter.reset(0)
    load_checkpoint(adapter, run_dir / prev["checkpoint"])
    adapter = adapter.scoring()  # MIAL detector: separate: the scorer's maps, which made the scores
    if squared is None:
        squared = exp.strategy.params.get("uncertainty") == "squared"
    top: Sequence[tuple[int, float]] = sorted(row["scores"].items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    paths = []
    for rank, (image_id, score) in enumerate(top, 1):
        maps = image_heatmaps(adapter, exp.train, image_id, squared=squared)
        title = f"round {row['round']} #{rank} id {image_id} score {score:.4g}"
        paths.append(save_heatmap(exp.train.load_image(image_id), maps,
                                  Path(out_dir) / f"round{row['round']:03d}_rank{rank:02d}_id{image_id}.png", title))
    return paths
