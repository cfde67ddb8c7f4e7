"""Evaluation: COCO detection metrics (pycocotools) and their text rendering."""

from activedet.evaluation.detection import (
    STAT_KEYS,
    coco_metrics,
    detections_to_coco,
    evaluate_files,
    format_metrics,
)

__all__ = ["STAT_KEYS", "coco_metrics", "detections_to_coco", "evaluate_files", "format_metrics"]
