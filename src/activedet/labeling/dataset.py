"""One dataset over a labeling project: the labeled set plus the unlabeled pool.

Strategies read images of every pool id from ``pool.dataset`` and trainers read the
labeled ids from the same object, exactly as in ``simulate``. Labeled images come from
``dataset.train`` (round 0) and from ingested batches; pool images are known by path only
and become an :class:`ImageRecord` (size read from the file header) the first time they
are asked for, so listing a 100,000-image pool decodes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from activedet.data.base import ClassificationDataset, DetectionDataset, ImageRecord, image_size


class _ProjectMixin:
    """Overrides the record lookup of a dataset class; everything else is inherited."""

    def _setup(self, base: Any, extra: Mapping[int, ImageRecord], pool: Mapping[int, str],
               root: str) -> None:
        self.name = f"project({base.name})" if base is not None else "project"
        self.source = getattr(base, "source", "")
        self._base = base
        self._extra = dict(extra)
        self._pool = dict(pool)
        self._root = root
        self._lazy: dict[int, ImageRecord] = {}
        base_ids = list(base.ids) if base is not None else []
        self._sorted_ids = sorted(set(base_ids) | set(self._extra) | set(self._pool))

    @property
    def ids(self) -> list[int]:
        return list(self._sorted_ids)

    def __len__(self) -> int:
        return len(self._sorted_ids)

    def __contains__(self, image_id: int) -> bool:
        return image_id in self._extra or image_id in self._pool or (
            self._base is not None and image_id in self._base)

    def record(self, image_id: int) -> ImageRecord:
        rec = self._extra.get(image_id)
        if rec is not None:
            return rec
        if image_id in self._pool:
            rec = self._lazy.get(image_id)
            if rec is None:
                path = self._pool[image_id]
                width, height = image_size(Path(path), f"unlabeled image id {image_id}")
                rec = ImageRecord(id=image_id, file_name=_relative(path, self._root), width=width,
                                  height=height, path=Path(path))
                self._lazy[image_id] = rec
            return rec
        if self._base is None:
            from activedet.errors import DatasetError

            raise DatasetError(f"{self.name}: unknown image id {image_id}")
        return self._base.record(image_id)

    def is_pool_image(self, image_id: int) -> bool:
        return image_id in self._pool


class ProjectDetectionDataset(_ProjectMixin, DetectionDataset):
    """Detection: labeled records with boxes; pool records with none (until ingested)."""

    def __init__(self, class_names: Iterable[str], base: DetectionDataset | None,
                 extra: Mapping[int, ImageRecord], pool: Mapping[int, str], root: str) -> None:
        self.class_names = list(class_names)
        self._setup(base, extra, pool, root)


class ProjectClassificationDataset(_ProjectMixin, ClassificationDataset):
    """Classification: labeled records carry ``label``; pool records carry None."""

    def __init__(self, class_names: Iterable[str], base: ClassificationDataset | None,
                 extra: Mapping[int, ImageRecord], pool: Mapping[int, str], root: str) -> None:
        self.class_names = list(class_names)
        self._setup(base, extra, pool, root)

    def num_boxes(self, image_id: int) -> int:
        return 1


def file_order(dataset: Any) -> list[int]:
    """Image ids in the order the labeled file lists them (the training order of round 0)."""
    records = getattr(dataset, "_records", None)
    return list(records) if isinstance(records, dict) else list(dataset.ids)


def _relative(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    return Path(path).as_posix() if rel.startswith("..") else Path(rel).as_posix()


def project_dataset(task: str, class_names: Iterable[str], base: Any, extra: Mapping[int, ImageRecord],
                    pool: Mapping[int, str], root: str) -> ProjectDetectionDataset | ProjectClassificationDataset:
    cls = ProjectDetectionDataset if task == "detection" else ProjectClassificationDataset
    return cls(class_names, base, extra, pool, root)
