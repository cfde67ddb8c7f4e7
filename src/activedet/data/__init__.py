"""Datasets (COCO, VOC, built-in), the pool, and one loader for config spec strings."""

from activedet.data.base import ClassificationDataset, DetectionDataset, ImageRecord, read_image_rgb
from activedet.data.builtin import BUILTINS, BuiltinInfo, export_builtin, load_builtin
from activedet.data.coco import load_coco
from activedet.data.loading import load_dataset
from activedet.data.pool import Pool
from activedet.data.voc import VOC_CLASSES, load_voc

__all__ = [
    "BUILTINS",
    "BuiltinInfo",
    "ClassificationDataset",
    "DetectionDataset",
    "ImageRecord",
    "Pool",
    "VOC_CLASSES",
    "export_builtin",
    "load_builtin",
    "load_coco",
    "load_dataset",
    "load_voc",
    "read_image_rgb",
]
