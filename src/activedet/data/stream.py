"""Images streamed from a dataset in batches, decoded on demand.

A pool is a list of image ids whose records hold paths, not pixels; scoring, feature
extraction and evaluation read it through :func:`image_batches`, so at most a bounded
number of decoded batches exist at any time whatever the pool's size:

- ``workers = 0``: batches are decoded in this process, one at a time (the next batch is
  decoded after the consumer asked for it);
- ``workers = W > 0``: a :class:`torch.utils.data.DataLoader` with ``W`` worker processes,
  each at most ``prefetch`` batches ahead: at most ``W * prefetch`` batches are decoded
  and waiting, plus the one being consumed.

Batches come in the order of ``ids`` in both modes, with the same pixels, so the scores
computed from them do not depend on ``workers``. With ``group`` every batch holds images of
one group (:func:`size_batches`): a detector pads a batch to its largest image, and an
image's features near its border would otherwise depend on its batch-mates.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from activedet.errors import ActivedetError, ConfigError

#: batches each worker process decodes ahead of the consumer (``DataLoader.prefetch_factor``)
PREFETCH = 2


def size_batches(dataset: Any, ids: Sequence[int], batch_size: int,
                 group: Callable[[int, int], Hashable] | None = None) -> list[list[int]]:
    """``ids`` in batches of at most ``batch_size`` images that share ``group(height, width)``
    (default: the size (H, W) itself; groups in order of first appearance), so that no image
    is padded for the sake of a batch-mate: the features near an image's border, and so its
    score, are those it has alone. A detector's ``group`` is the size its transform resizes
    an image to (:meth:`~activedet.models.detection_adapter.DetectionAdapter.input_size`)."""
    key = group or (lambda h, w: (h, w))
    groups: dict[Hashable, list[int]] = {}
    for i in ids:
        rec = dataset.record(i)
        groups.setdefault(key(int(rec.height), int(rec.width)), []).append(i)
    return [g[s:s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]


class _Batches(Dataset):
    """Item ``k``: (ids, pixels) of the ``k``-th chunk of ids."""

    def __init__(self, dataset: Any, chunks: list[list[int]], pixels: str) -> None:
        self.dataset, self.chunks = dataset, chunks
        self.load = dataset.load_image if pixels == "image" else dataset.load_array

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> tuple[list[int], list[torch.Tensor]]:
        chunk = self.chunks[k]
        return chunk, [self.load(i) for i in chunk]


class _InWorker(_Batches):
    """:class:`_Batches` in a loader process: an :class:`ActivedetError` comes back as a
    value, so the caller re-raises it with its type and message (a DataLoader would wrap
    it in a worker traceback)."""

    def __getitem__(self, k: int) -> Any:
        try:
            return super().__getitem__(k)
        except ActivedetError as e:
            return _Failed(type(e), str(e))


class _Failed:
    def __init__(self, kind: type, message: str) -> None:
        self.kind, self.message = kind, message


def _as_is(item: Any) -> Any:
    return item


def image_batches(dataset: Any, ids: Sequence[int], batch_size: int, workers: int = 0,
                  prefetch: int = PREFETCH, pixels: str = "image",
                  group: Callable[[int, int], Hashable] | None = None) -> Iterator[tuple[list[int], list[Any]]]:
    """Yield ``(chunk, images)`` for consecutive blocks of ``batch_size`` of ``ids``:
    ``images[j]`` is ``dataset.load_image(chunk[j])``, (3, H, W) float32 in [0, 1] on the
    CPU (``pixels="image"``), or ``dataset.load_array(chunk[j])``, (H, W, 3) uint8
    (``pixels="array"``). ``workers`` processes decode ahead (see the module docstring); errors raised
    while decoding (:class:`~activedet.errors.DatasetError`) reach the caller unchanged.
    ``group``: the blocks of :func:`size_batches` with that grouping instead (ids grouped)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
    ids = list(ids)
    chunks = (size_batches(dataset, ids, batch_size, group) if group is not None
              else [ids[s:s + batch_size] for s in range(0, len(ids), batch_size)])
    yield from chunk_batches(dataset, chunks, workers, prefetch, pixels)


def chunk_batches(dataset: Any, chunks: Sequence[Sequence[int]], workers: int = 0, prefetch: int = PREFETCH,
                  pixels: str = "image") -> Iterator[tuple[list[int], list[Any]]]:
    """:func:`image_batches` over the given ``chunks`` of ids (e.g. an epoch's shuffled
    training batches), in their order."""
    if workers < 0:
        raise ConfigError(f"the number of image-loading workers must be >= 0, got {workers!r}")
    if pixels not in ("image", "array"):
        raise ConfigError(f"pixels must be 'image' or 'array', got {pixels!r}")
    chunks = [list(c) for c in chunks]
    batches = _Batches(dataset, chunks, pixels)
    if workers == 0 or len(batches) <= 1:
        for k in range(len(batches)):
            yield batches[k]
        return
    loader = DataLoader(_InWorker(dataset, chunks, pixels), batch_size=None, shuffle=False, num_workers=min(workers, len(batches)),
                        prefetch_factor=prefetch, collate_fn=_as_is, persistent_workers=False)
    for item in loader:
        if isinstance(item, _Failed):
            raise item.kind(item.message)
        chunk, images = item
        yield list(chunk), list(images)


__all__ = ["PREFETCH", "chunk_batches", "image_batches", "size_batches"]
