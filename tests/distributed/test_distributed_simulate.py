"""`activedet simulate --nproc 2` (torchrun, gloo on CPU): a tiny run completes with rank 0
alone writing, and `--resume --nproc 2` redoes a lost round with the same selection."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from activedet.loop.ledger import Ledger
from tests.distributed.test_distributed import torchrun_env
from tests.loop.test_runner import write_config


def simulate(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "activedet", "simulate", *args, "--quiet", "--json"]
    return subprocess.run(cmd, env=torchrun_env(), capture_output=True, text=True, timeout=600)


def test_two_process_simulate_and_resume(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    run_dir = tmp_path / "run"
    proc = simulate(str(cfg), "--out", str(run_dir), "--nproc", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])  # rank 0 alone prints
    assert proc.stdout.count('"rounds"') == 1
    assert status["complete"] and [len(r["selected"]) for r in status["rounds"]] == [4, 3, 3]
    assert all(r["metrics"] is not None for r in status["rounds"])
    selected = [r["selected"] for r in status["rounds"]]
    assert len(set(sum(selected, []))) == 10
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "round_000.pt", "round_001.pt", "round_002.pt"]

    # a run killed after round 1: round 2's row and checkpoint are gone, the run is incomplete
    with sqlite3.connect(run_dir / Ledger.FILENAME) as conn:
        conn.execute("DELETE FROM rounds WHERE round = 2")
    ledger = Ledger(run_dir)
    ledger.set_meta(complete=False)
    ledger.close()
    (run_dir / "checkpoints" / "round_002.pt").unlink()

    again = simulate(str(cfg), "--out", str(run_dir), "--nproc", "2")
    assert again.returncode == 2, again.stderr[-2000:]  # without --resume: refused, one message
    assert again.stderr.count("already holds a run") == 1, again.stderr[-2000:]

    resumed = simulate(str(cfg), "--out", str(run_dir), "--nproc", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    status2 = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert status2["complete"] and len(status2["rounds"]) == 3
    # rounds 0-1 kept; round 2 selected again from round 1's checkpoint: the same images
    assert [r["selected"] for r in status2["rounds"]] == selected
    assert (run_dir / "checkpoints" / "round_002.pt").is_file()


def _rank_pid(mark: str, rank: int) -> int | None:
    """The pid of the torchrun worker of rank ``rank`` whose environment carries ``mark``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"ACTIVEDET_TEST_MARK={mark}".encode() in env and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def test_a_killed_rank_stops_the_run_and_resume_finishes_it(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    run_dir = tmp_path / "run"
    mark = f"{os.getpid()}-{tmp_path.name}"
    env = {**torchrun_env(), "ACTIVEDET_TEST_MARK": mark}
    cmd = [sys.executable, "-m", "activedet", "simulate", str(cfg), "--out", str(run_dir), "--nproc", "2",
           "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = False
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:  # kill rank 1 once round 0 is trained
        if (run_dir / "checkpoints" / "round_000.pt").is_file():
            pid = _rank_pid(mark, 1)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=300)
    assert killed, "the run ended before rank 1 could be killed"
    assert proc.returncode != 0
    errors = [line for line in err.splitlines() if line.startswith("activedet simulate:")]
    assert errors and all("--resume" in line for line in errors), err[-3000:]
    assert "ChildFailedError" not in err  # torchrun's own report is not shown

    resumed = simulate(str(cfg), "--out", str(run_dir), "--nproc", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    status = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert status["complete"] and [len(r["selected"]) for r in status["rounds"]] == [4, 3, 3]


def test_two_process_mial_run_trains_under_ddp(tmp_path: Path) -> None:
    """MIAL's stages train under DDP (a wrapper per stage) and score sharded: the 2-process
    run completes with rank 0 alone writing; the weights differ from one process's (each
    rank takes its share of every epoch, a per-process batch), so the selections may too."""
    cfg = write_config(tmp_path, cycles=1)
    text = cfg.read_text().replace("name: entropy", "name: mial")
    cfg.write_text(text)
    two = simulate(str(cfg), "--out", str(tmp_path / "two"), "--nproc", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count('"rounds"') == 1
    s2 = json.loads(two.stdout.strip().splitlines()[-1])
    assert s2["strategy"] == "mial" and s2["complete"]
    assert [len(r["selected"]) for r in s2["rounds"]] == [4, 3]
    assert all(r["metrics"] is not None for r in s2["rounds"])
    with Ledger(tmp_path / "two") as ledger:
        stages = [row["stage"] for row in ledger.rounds()[0]["train_log"]]
    assert {"label", "max", "min"} <= set(stages)


def test_two_process_mial_separate_scorer_reaches_every_rank_on_resume(tmp_path: Path) -> None:
    """MIAL ``detector: separate``: a 1-process run loses round 1 and is resumed with 2
    processes; rank 0 loads round 0's checkpoint (detector and scorer) and hands both to rank
    1 (``sync_state``), so the sharded scores are the 1-process scorer's and the selection the
    same (rank 1 scoring with the detector alone gives other scores)."""
    cfg = write_config(tmp_path, cycles=1)
    cfg.write_text(cfg.read_text().replace(  # batches of 2: each rank scores a share of the pool
        "name: entropy", "name: mial\n  detector: separate\n  rounds: 1\n  batch_size: 2"))
    run_dir = tmp_path / "run"
    first = simulate(str(cfg), "--out", str(run_dir))
    assert first.returncode == 0, first.stderr[-3000:]
    with Ledger(run_dir) as ledger:
        rounds = ledger.rounds()
    assert rounds[0]["train_log"][-1]["model"] == "scorer" and len(rounds[1]["scores"]) >= 4
    with sqlite3.connect(run_dir / Ledger.FILENAME) as conn:
        conn.execute("DELETE FROM rounds WHERE round = 1")
    ledger = Ledger(run_dir)
    ledger.set_meta(complete=False)
    ledger.close()
    resumed = simulate(str(cfg), "--out", str(run_dir), "--nproc", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with Ledger(run_dir) as ledger:
        again = ledger.rounds()
    assert again[1]["scores"] == rounds[1]["scores"] and again[1]["selected"] == rounds[1]["selected"]
