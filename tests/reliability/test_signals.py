"""SIGINT / SIGTERM stop a run promptly with the resume command on one line (exit 130 /
143); the resumed run ends with the same ledger as an uninterrupted one."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from activedet.cli import main
from tests.reliability.conftest import cli_process, ledger_rows, shapes_config


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """A config and its uninterrupted run. Six cycles leave work after round 0 even when a
    loaded machine wakes the test seconds late."""
    tmp = tmp_path_factory.mktemp("ref")
    cfg = shapes_config(tmp, epochs=3, cycles=6)
    assert main(["simulate", str(cfg), "--out", str(tmp / "ref"), "--quiet"]) == 0
    return cfg, tmp / "ref"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_promptly_and_the_run_resumes_to_the_same_ledger(tmp_path: Path, reference, signum: int) -> None:
    cfg, ref = reference
    run_dir = tmp_path / "run"
    proc = cli_process("simulate", str(cfg), "--out", str(run_dir), "--quiet",
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "checkpoints" / "round_000.pt").exists():
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.02)
    time.sleep(0.3)  # into round 1: scoring or training
    assert proc.poll() is None, "the run ended before the signal could be sent"
    proc.send_signal(signum)
    sent = time.time()
    _, err = proc.communicate(timeout=60)
    # 1.3-1.4 s on an idle 2-core machine (NOTES.md); a signal lands between torch ops, so
    # a machine loaded by other jobs stretches it: the bound only catches a run that ignores it
    assert time.time() - sent < 45, "a signal must stop the run promptly"
    assert proc.returncode == 128 + signum
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert signal.Signals(signum).name in lines[0]
    assert lines[0].endswith(f"continue with: activedet simulate {cfg} --out {run_dir} --resume")
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--resume", "--quiet"]) == 0
    assert ledger_rows(run_dir) == ledger_rows(ref)
