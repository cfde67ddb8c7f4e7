"""One writer per run directory: a second writer is refused naming the holder's PID; the
lock of a process killed with SIGKILL is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from activedet.cli import main
from activedet.errors import RunInUseError
from activedet.loop.lock import LOCK_NAME, run_lock
from tests.reliability.conftest import ROOT, shapes_config

HOLD = ("import sys, time\n"
        "from activedet.loop.lock import run_lock\n"
        "with run_lock(sys.argv[1], 'holder-test'):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(120)\n")


def hold_lock(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_and_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = hold_lock(run_dir)
    try:
        with pytest.raises(RunInUseError, match=rf"PID {proc.pid} \(holder-test\)"):
            with run_lock(run_dir):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (run_dir / LOCK_NAME).read_text().startswith(f"{proc.pid} ")  # stale: its holder is dead
    with run_lock(run_dir, "taker"):
        assert (run_dir / LOCK_NAME).read_text() == f"{os.getpid()} taker\n"
        with pytest.raises(RunInUseError, match=rf"PID {os.getpid()}"):  # not re-entrant either
            with run_lock(run_dir):
                pass
    with run_lock(run_dir):  # released on exit
        pass


def test_simulate_refuses_a_run_directory_in_use(tmp_path: Path, capsys) -> None:
    cfg = shapes_config(tmp_path, cycles=1)
    run_dir = tmp_path / "run"
    proc = hold_lock(run_dir)
    try:
        assert main(["simulate", str(cfg), "--out", str(run_dir), "--resume", "--quiet"]) == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"PID {proc.pid}" in err and "in use" in err, err
    assert not (run_dir / "ledger.sqlite").exists()
    assert main(["simulate", str(cfg), "--out", str(run_dir), "--resume", "--quiet"]) == 0
