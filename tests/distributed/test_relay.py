"""`--nproc` relays torchrun's stderr: a rank's own traceback reaches the user whole,
torchrun's failure report (and what follows it) does not."""

from __future__ import annotations

import os

from activedet.launch import relay_stderr

RANK_TRACEBACK = (
    "round 1: training\n"
    "Traceback (most recent call last):\n"
    '  File "/x/activedet/loop/runner.py", line 10, in run\n'
    "    boom()\n"
    "ValueError: a bug in rank 1\n"
)
TORCHRUN_REPORT = (
    "Traceback (most recent call last):\n"
    '  File "/x/torch/distributed/run.py", line 900, in main\n'
    "    run(args)\n"
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n"
    "============================================================\n"
    "activedet FAILED\n"
)


def _relayed(text: str, capsys) -> str:
    r, w = os.pipe()
    os.write(w, text.encode())
    os.close(w)
    try:
        relay_stderr(r)
    finally:
        os.close(r)
    return capsys.readouterr().err


def test_a_ranks_traceback_is_passed_on_and_torchruns_report_dropped(capsys) -> None:
    out = _relayed(RANK_TRACEBACK + "W1126 12:00:00 torch.distributed.elastic: sending SIGTERM\n"
                   + TORCHRUN_REPORT, capsys)
    assert out == RANK_TRACEBACK


def test_lines_after_a_ranks_traceback_still_come_through(capsys) -> None:
    assert _relayed(RANK_TRACEBACK + "round 2: selected\n", capsys) == RANK_TRACEBACK + "round 2: selected\n"
