"""Evaluation: COCO detection metrics (pycocotools) and their text rendering."""

from activedet.evaluation.detection import (
    STAT_KEYS,
    coco_metrics,
    detections_to_coco,
    evaluate_files,
    format_metrics,
)

__all__ = ["STAT_KEYS", "coco_metrics", "detections_to_coco", "evaluate_files", "format_metrics"]


def headline(metrics: dict, keys: tuple[str, ...] = ("AP", "AP50", "AP75", "top1"), sep: str = "  ") -> str:
    """The ``keys`` present in ``metrics`` as percentages, ``n/a`` for pycocotools' -1 (no
    ground truth); the empty string when none is present."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None or v < 0 else f"{100 * v:.1f}%"

    return sep.join(f"{k} {pct(metrics[k])}" for k in keys if k in metrics)
