"""The Label Studio harness of the integration tests (part of ``make test``): a server that
exits at start is reported at once with its own error line, not after the start timeout as
if it were slow; one that never answers is stopped after a bounded time, with its log."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.labeling.ls_server import LabelStudio, LabelStudioFailed

CRASH = """#!/bin/sh
echo "Label Studio version: 1.23.2"
echo "Traceback (most recent call last):"
echo "  File \\"sentry_sdk/client.py\\", line 102, in _get_options"
echo "TypeError: Unknown option 'send_default_pii'"
echo "some shutdown noise after the error"
exit 1
"""
HANG = """#!/bin/sh
echo "Starting development server at http://127.0.0.1 ..."
exec sleep 600
"""


def fake(tmp_path: Path, body: str) -> str:
    exe = tmp_path / "label-studio"
    exe.write_text(body)
    exe.chmod(0o755)
    return str(exe)


def test_a_label_studio_that_exits_at_start_is_reported_at_once_with_its_error_line(tmp_path: Path) -> None:
    ls = LabelStudio(tmp_path / "data", tmp_path, tmp_path / "ls.log", executable=fake(tmp_path, CRASH))
    t0 = time.time()
    with pytest.raises(LabelStudioFailed) as err:
        ls.wait(timeout=120)
    assert time.time() - t0 < 20  # not the start timeout
    first = str(err.value).splitlines()[0]
    assert first.startswith("Label Studio exited at start (exit code 1")
    assert first.endswith("TypeError: Unknown option 'send_default_pii'")
    assert "some shutdown noise" in str(err.value)  # and the log's last lines below it


def test_a_label_studio_that_never_answers_is_stopped_after_the_timeout(tmp_path: Path) -> None:
    ls = LabelStudio(tmp_path / "data", tmp_path, tmp_path / "ls.log", executable=fake(tmp_path, HANG))
    t0 = time.time()
    with pytest.raises(LabelStudioFailed) as err:
        ls.wait(timeout=3)
    assert 3 <= time.time() - t0 < 40
    assert str(err.value).startswith("Label Studio did not answer within 3 s (stopped it)")
    assert "Starting development server" in str(err.value)
    assert ls.proc.poll() is not None  # nothing left running
