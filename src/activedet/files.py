"""The user's files: reading a text or JSON file, writing an output; a failure is one typed
error on one line."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

from activedet.errors import ActivedetError, DatasetError


def read_text(path: Path, error: type[ActivedetError], what: str = "") -> str:
    """The text of ``path``; an unreadable file raises ``error("cannot read {what}{path}: ...")``.

    ``what``: the kind of file, with a trailing space (``"config "``), or ``""``.
    """
    try:
        return path.read_text()
    except OSError as e:
        raise error(f"cannot read {what}{path}: {e.strerror or e}") from None


def read_json(path: Path, what: str = "") -> Any:
    """The JSON value in ``path``; an unreadable or malformed file raises :class:`DatasetError`
    naming the file (and the line and column of a syntax error)."""
    text = read_text(path, DatasetError, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # a number of over 4300 digits; absurdly deep nesting
        raise DatasetError(f"{path}: malformed JSON: {' '.join(str(e).split())[:120]}") from None


@contextlib.contextmanager
def writing(what: str, path: str | Path) -> Iterator[None]:
    """Context: an OSError while writing ``path`` becomes a one-line error."""
    try:
        yield
    except OSError as e:
        raise ActivedetError(f"cannot write {what} {path}: {e.strerror or e}") from None
