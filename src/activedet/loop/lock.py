"""One writer per run directory.

:func:`run_lock` holds an exclusive ``flock`` on ``RUN_DIR/activedet.lock`` for as long as
its ``with`` block runs and writes the holder's PID and command into the file. A second
writer (``simulate``, ``select``, ``ingest``) is refused at once with a
:class:`RunInUseError` naming that PID. The kernel drops a ``flock`` when its holder dies
(even by ``SIGKILL``), so a lock left by a killed process is simply taken over; the stale
PID in the file is overwritten. Readers (``status``, ``report``) take no lock: the ledger is
SQLite in WAL mode and every step is one transaction.

The lock is per open file, not per process: nesting two ``run_lock`` blocks on one directory
in one process is refused like a second process would be. On filesystems without
``flock`` (some network mounts) the lock is not taken and a warning is logged.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from activedet.errors import RunDirError, RunInUseError
from activedet.loop.atomic import make_dir, os_reason

log = logging.getLogger(__name__)

LOCK_NAME = "activedet.lock"


def lock_holder(run_dir: str | Path) -> str:
    """What the lock file says about its holder (``PID <n> (<command>)``), or ``unknown``."""
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text(errors="replace").strip()
    except OSError:
        return "unknown"
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return "PID unknown"
    return f"PID {pid} ({command})" if command else f"PID {pid}"


@contextmanager
def run_lock(run_dir: str | Path, command: str = "activedet") -> Iterator[Path]:
    """Hold the run directory's writer lock (creating the directory); yields the lock file's path."""
    run_dir = Path(run_dir)
    make_dir(run_dir, "run directory")
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirError(f"cannot create lock file {path}: {os_reason(e)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise RunInUseError(f"{run_dir} is in use by another activedet process ({lock_holder(run_dir)}); "
                                f"wait for it to finish or stop it, then try again") from None
        log.warning("cannot lock %s (%s): not protected against a second writer", path, os_reason(e))
    try:
        try:  # who holds it, for the refusal message of a second writer; best effort (disk full)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        except OSError:
            pass
        yield path
    finally:
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # releases the flock


__all__ = ["run_lock", "lock_holder", "LOCK_NAME"]
