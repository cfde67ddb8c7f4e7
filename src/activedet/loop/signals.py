"""SIGINT and SIGTERM stop a run promptly and leave its ledger resumable.

Python turns SIGINT into ``KeyboardInterrupt``; :func:`stop_on_signals` makes SIGTERM do
the same (as :class:`Terminated`, which remembers the signal), so both unwind through the
same ``finally`` blocks: the SQLite transaction in progress rolls back, a checkpoint being
written is discarded (see :mod:`activedet.loop.atomic`), the ledger is closed and the run
lock released. The command line then prints the resume command and exits ``128 + signal``
(130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """A run stopped by a signal other than SIGINT; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_number(exc: KeyboardInterrupt) -> int:
    return getattr(exc, "signum", signal.SIGINT)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (SIGINT raises
    ``KeyboardInterrupt`` as usual). A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: object) -> None:
        raise Terminated(signum)

    old_term = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)


__all__ = ["Terminated", "stop_on_signals", "signal_number"]
