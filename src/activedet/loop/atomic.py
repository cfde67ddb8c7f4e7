"""Writes into the run directory that are all-or-nothing.

A file is written to a temporary name next to its destination, flushed and fsynced, then
renamed over the destination (``os.replace`` is atomic on POSIX) and the directory entry
fsynced. A crash, a signal or a full disk at any point leaves either the old file or the new
one, never half of one; the temporary file is removed when the write fails. An ``OSError``
(``ENOSPC``, ``EROFS``, ``EACCES``, ...) becomes a one-line :class:`RunDirError`.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from activedet.errors import RunDirError


def os_reason(e: OSError) -> str:
    """``No space left on device (ENOSPC)``: the error in words, with its errno name."""
    name = errno.errorcode.get(e.errno or 0, "")
    text = e.strerror or str(e) or type(e).__name__
    return f"{text} ({name})" if name else text


def write_failure(what: str, path: Path, e: OSError) -> RunDirError:
    return RunDirError(f"cannot write {what} {path}: {os_reason(e)}; nothing was half-written: free space or "
                       f"make the run directory writable, then continue with --resume")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not open directories; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, what: str = "file") -> None:
    """Replace ``path`` by ``data`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise write_failure(what, path, e) from None
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, what: str = "file") -> None:
    atomic_write_bytes(path, text.encode("utf-8"), what)


def make_dir(path: Path, what: str = "directory") -> None:
    """``mkdir -p`` with a one-line :class:`RunDirError` on failure."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create {what} {path}: {os_reason(e)}") from None


__all__ = ["atomic_write_bytes", "atomic_write_text", "make_dir", "os_reason", "write_failure"]
