"""Decode every image of a split before a run commits to it.

Loaders read only image headers (width/height), so a file cut short after its header
loads fine and kills a run hours later when training first decodes it. :func:`verify_images`
decodes each on-disk image of a dataset in parallel (threads: Pillow releases the GIL while
it inflates), remembers files that decoded in a small SQLite cache keyed by
``(absolute path, size, mtime_ns)`` so a resumed or repeated run pays only for new or
changed files, and either raises (``policy="error"``) or returns the unreadable ids to
quarantine (``policy="skip"``). In-memory images (built-in datasets) need no check.

The cache lives in ``$ACTIVEDET_CACHE_DIR``, else ``$XDG_CACHE_HOME/activedet``, else
``~/.cache/activedet``. It only ever speeds things up: when it cannot be opened or written,
every image is simply decoded.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from PIL import Image
from tqdm.auto import tqdm

from activedet.data.base import WIDE_MODES, to_rgb
from activedet.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

CACHE_ENV = "ACTIVEDET_CACHE_DIR"
POLICIES = ("error", "skip")
#: Show a progress bar when a split has at least this many on-disk images.
PROGRESS_MIN = 500

Key = tuple[str, int, int]  # absolute path, size in bytes, mtime in ns


@dataclass(frozen=True)
class BadImage:
    """An image that cannot be decoded; ``message()`` is the one-line report."""

    split: str
    image_id: int
    path: Path
    reason: str

    def message(self) -> str:
        return f"{self.split} split: cannot decode image {self.path} (image id {self.image_id}): {self.reason}"


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "activedet"


class VerifiedCache:
    """The set of ``(path, size, mtime_ns)`` keys of files that decoded, in SQLite."""

    FILENAME = "verified-images.sqlite"

    def __init__(self, directory: Path | None = None) -> None:
        self.path = (directory or cache_dir()) / self.FILENAME
        self.conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=10)
            self.conn.execute("CREATE TABLE IF NOT EXISTS verified "
                              "(path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL)")
        except (OSError, sqlite3.Error) as e:
            log.info("image verification cache %s unavailable (%s); decoding every image", self.path, e)
            self.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def known(self, keys: list[Key]) -> set[Key]:
        """The subset of ``keys`` recorded as decoded (same path, size and mtime)."""
        if self.conn is None or not keys:
            return set()
        want = set(keys)
        found: set[Key] = set()
        try:
            paths = [k[0] for k in keys]
            for start in range(0, len(paths), 500):
                chunk = paths[start:start + 500]
                rows = self.conn.execute(
                    f"SELECT path, size, mtime_ns FROM verified WHERE path IN ({','.join('?' * len(chunk))})",
                    chunk)
                found.update(k for k in map(tuple, rows) if k in want)  # type: ignore[misc]
        except sqlite3.Error as e:
            log.info("image verification cache unreadable (%s)", e)
            return set()
        return found

    def add(self, keys: Iterable[Key]) -> None:
        if self.conn is None:
            return
        try:
            with self.conn:
                self.conn.executemany("INSERT OR REPLACE INTO verified VALUES (?, ?, ?)", list(keys))
        except sqlite3.Error as e:  # disk full, read-only: the cache is an optimisation only
            log.info("image verification cache not updated (%s)", e)


def decode_error(path: Path) -> str | None:
    """None when ``path`` decodes completely, else the reason in a few words."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.width < 1 or im.height < 1:
                return f"empty image ({im.width}x{im.height})"
            if im.mode in WIDE_MODES:  # their range is checked as training will read them
                to_rgb(im, Path(path), "")
    except DatasetError as e:
        return str(e).split(": ", 1)[-1][:200]
    except Exception as e:  # Pillow's plugins raise many types; any of them means unreadable
        text = " ".join(str(e).split()) or type(e).__name__
        return text[:200]
    return None


def _file_key(path: Path) -> Key | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.resolve()), int(st.st_size), int(st.st_mtime_ns))


def _on_disk(dataset: Any) -> Iterator[tuple[int, Path]]:
    for i in dataset.ids:
        r = dataset.record(i)
        if r.array is None and r.path is not None:
            yield i, Path(r.path)


def _workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1) + 2))


#: images checked per step (stat, cache look-up, decoding, cache update): what verification
#: holds at a time, so its memory does not grow with the pool
CHUNK = 4096


def find_unreadable(dataset: Any, split: str, progress: bool = True,
                    cache: VerifiedCache | None = None) -> list[BadImage]:
    """Decode every on-disk image of ``dataset`` not already in the cache, :data:`CHUNK`
    images at a time (each chunk's good files are recorded in the cache before the next
    starts); the unreadable ones in image-id order."""
    return _find(_on_disk(dataset), len(dataset), split, progress, cache)


def _find(items: Iterator[tuple[int, Path]], total: int, split: str, progress: bool,
          cache: VerifiedCache | None) -> list[BadImage]:
    first = list(itertools.islice(items, CHUNK))
    if not first:
        return []
    own = cache is None
    cache = cache or VerifiedCache()
    pool = ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="verify")
    bar = tqdm(total=total, desc=f"verifying {split} images", unit="img",
               disable=not progress or total < PROGRESS_MIN, leave=False)
    try:
        bad: list[BadImage] = []
        chunk = first
        while chunk:
            keyed: list[tuple[int, Path, Key]] = []
            for i, path in chunk:
                key = _file_key(path)
                if key is None:
                    bad.append(BadImage(split, i, path, "file not found"))
                else:
                    keyed.append((i, path, key))
            known = cache.known([k for *_, k in keyed])
            todo = [t for t in keyed if t[2] not in known]
            good: list[Key] = []
            for (i, path, key), reason in zip(todo, pool.map(lambda t: decode_error(t[1]), todo)):
                if reason is None:
                    good.append(key)
                else:
                    bad.append(BadImage(split, i, path, reason))
            cache.add(good)
            bar.update(len(chunk))
            chunk = list(itertools.islice(items, CHUNK))
        return sorted(bad, key=lambda b: b.image_id)
    finally:  # Ctrl-C: drop queued work instead of decoding the rest first
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        if own:
            cache.close()


def verify_images(dataset: Any, split: str, policy: str = "error", progress: bool = True) -> dict[int, str]:
    """Decode every image of ``dataset``. ``policy="error"`` raises :class:`DatasetError`
    naming the first unreadable file and its image id; ``"skip"`` returns
    ``{image id: reason}`` of the unreadable ones (to quarantine)."""
    _check_policy(policy)
    return _verdict(find_unreadable(dataset, split, progress), policy)


def find_unreadable_files(files: Mapping[int, Path], split: str, progress: bool = True) -> list[BadImage]:
    """:func:`find_unreadable` for images known by path only (``{image id: path}``)."""
    return _find(iter(files.items()), len(files), split, progress, None)


def verify_files(files: Mapping[int, Path], split: str, policy: str = "error",
                 progress: bool = True) -> dict[int, str]:
    """:func:`verify_images` for images known by path only (``{image id: path}``, e.g. a
    labeling project's unlabeled pool)."""
    _check_policy(policy)
    return _verdict(find_unreadable_files(files, split, progress), policy)


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ConfigError(f"bad_images policy {policy!r} is not one of {', '.join(POLICIES)}")


#: up to this many unreadable images are named in the error itself; more go to a file it names
NAMED_IN_MESSAGE = 5


def unreadable_message(bad: list[BadImage]) -> str:
    """One line naming every image of ``bad`` (non-empty): each one's report when there are
    up to :data:`NAMED_IN_MESSAGE`, else the count, the first one's report and a file (in
    :func:`cache_dir`, named by its content) that lists them all, one report a line."""
    if len(bad) == 1:
        return bad[0].message()
    head = f"{len(bad)} images cannot be decoded"
    if len(bad) <= NAMED_IN_MESSAGE:
        return f"{head}: " + "; ".join(b.message() for b in bad)
    text = "".join(b.message() + "\n" for b in bad)
    listing = cache_dir() / "unreadable" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.txt"
    try:
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text(text)
    except OSError as e:  # the list cannot be written: still one line, the first ones named
        return (f"{head} (cannot write their list to {listing}: {e.strerror or e}); the first "
                f"{NAMED_IN_MESSAGE}: " + "; ".join(b.message() for b in bad[:NAMED_IN_MESSAGE]))
    return f"{head}, every one listed in {listing} (the first: {bad[0].message()})"


def _verdict(bad: list[BadImage], policy: str) -> dict[int, str]:
    if bad and policy == "error":
        raise DatasetError(unreadable_message(bad))
    for b in bad:
        log.warning("quarantined: %s", b.message())
    return {b.image_id: f"{b.path}: {b.reason}" for b in bad}


__all__ = ["NAMED_IN_MESSAGE", "BadImage", "unreadable_message", "VerifiedCache", "decode_error", "find_unreadable", "find_unreadable_files", "verify_files", "verify_images", "cache_dir"]
