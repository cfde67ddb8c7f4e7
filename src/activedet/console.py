"""What the command line writes to stderr when it is a log file rather than a terminal."""

from __future__ import annotations

import time
from typing import Any


class LineProgress:
    """stderr for a log file (not a terminal): each progress-bar redraw (``\r`` + bar) becomes
    one line, at most one every ``interval`` seconds (the last one before a bar closes is
    kept), instead of thousands of carriage-return redraws."""

    def __init__(self, stream: Any, interval: float = 30.0) -> None:
        self.stream, self.interval = stream, interval
        self.last = -float("inf")
        self.pending: str | None = None

    def write(self, text: str) -> int:
        if "\r" in text:
            line = next((part.strip() for part in reversed(text.split("\r")) if part.strip()), "")
            now = time.monotonic()
            if not line:  # a bar cleared (leave=False)
                self.pending = None
            elif now - self.last >= self.interval:
                self.stream.write(line + "\n")
                self.last, self.pending = now, None
            else:
                self.pending = line
            return len(text)
        if text == "\n" and self.pending is not None:  # a bar closing (leave=True): its final state
            text, self.pending = self.pending + "\n", None
        return self.stream.write(text)

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)
