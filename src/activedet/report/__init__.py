"""Reports over finished or running runs: learning curves, timing bars, tables, HTML."""

from activedet.report.html import write_report
from activedet.report.mial_heatmap import save_heatmap, write_run_heatmaps
from activedet.report.plots import plot_curves, plot_seconds
from activedet.report.tables import (
    aggregate,
    boxes_table,
    markdown_boxes_table,
    markdown_table,
    metric_table,
    primary_metric,
)

__all__ = [
    "aggregate",
    "boxes_table",
    "markdown_boxes_table",
    "markdown_table",
    "metric_table",
    "plot_curves",
    "plot_seconds",
    "primary_metric",
    "save_heatmap",
    "write_report",
    "write_run_heatmaps",
]
