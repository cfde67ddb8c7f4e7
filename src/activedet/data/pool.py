"""The active-learning pool: which image is labeled, in which round, at what box cost."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from activedet.errors import PoolExhaustedError, ActivedetError


class Pool:
    """Labeled/unlabeled bookkeeping over a fixed set of image ids.

    ``costs[id]`` is the annotation cost of an image in boxes (revealed by the oracle);
    ``dataset`` is the training dataset the ids come from (strategies read images from it).
    """

    def __init__(self, ids: Sequence[int], costs: Mapping[int, int] | None = None,
                 dataset: object | None = None) -> None:
        self.ids: list[int] = sorted(int(i) for i in ids)
        if len(set(self.ids)) != len(self.ids):
            raise ActivedetError("pool ids must be distinct")
        self._id_set = set(self.ids)
        self.costs = dict(costs) if costs is not None else {i: 1 for i in self.ids}
        self.dataset = dataset
        self.reference: object | None = None  # labeled reference split (ISAL's R), if any
        self.round_of: dict[int, int] = {}  # image id -> round it was labeled in
        self.labeled: list[int] = []  # in the order they were added
        #: image id -> annotator seconds it cost when labeled (simulate; unknown in older runs)
        self.seconds: dict[int, float] = {}

    @classmethod
    def from_dataset(cls, dataset, ids: Iterable[int] | None = None) -> "Pool":
        ids = dataset.ids if ids is None else list(ids)
        return cls(ids, {i: dataset.num_boxes(i) for i in ids}, dataset)

    @property
    def unlabeled(self) -> list[int]:
        """Unlabeled ids in sorted order (deterministic)."""
        return [i for i in self.ids if i not in self.round_of]

    @property
    def labeled_boxes(self) -> int:
        return sum(self.costs[i] for i in self.labeled)

    @property
    def labeled_seconds(self) -> float:
        return sum(self.seconds.get(i, 0.0) for i in self.labeled)

    def cost(self, ids: Iterable[int]) -> int:
        return sum(self.costs[i] for i in ids)

    def is_labeled(self, image_id: int) -> bool:
        return image_id in self.round_of

    def add(self, ids: Iterable[int], round_: int) -> None:
        """Mark ``ids`` labeled in ``round_``. Unknown or already-labeled ids raise."""
        ids = list(ids)
        for i in ids:
            if i not in self._id_set:
                raise ActivedetError(f"image id {i} is not in the pool")
            if i in self.round_of:
                raise ActivedetError(f"image id {i} is already labeled (round {self.round_of[i]})")
        if len(set(ids)) != len(ids):
            raise ActivedetError("selection contains duplicate image ids")
        for i in ids:
            self.round_of[i] = round_
            self.labeled.append(i)

    def check_budget(self, n: int) -> None:
        """Raise :class:`PoolExhaustedError` if fewer than ``n`` images are unlabeled."""
        left = len(self.ids) - len(self.labeled)
        if n > left:
            raise PoolExhaustedError(f"asked for {n} images but only {left} are unlabeled")
