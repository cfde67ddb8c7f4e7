"""Launching a command under ``torchrun`` on this host and relaying what its processes
print (``activedet simulate|select --nproc N``)."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def launch_torchrun(nproc: int, master_port: int | None, verbose: bool, words: list[str], after: str) -> int:
    """``activedet simulate|select --nproc N``: run the command ``words`` under ``torchrun``
    with N processes on this host, all traffic on 127.0.0.1. ``after``: what the user can
    do when the run stops (said in the message)."""
    from activedet import distributed

    port = master_port if master_port is not None else distributed.free_port()
    distributed.check_port(port)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "activedet",
           *(["--verbose"] if verbose else []), *words]
    with tempfile.TemporaryDirectory(prefix="activedet-launch-") as tmp:
        error_file = Path(tmp) / "error"
        env = {**os.environ, ERROR_FILE_ENV: str(error_file)}
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        relay_stderr(proc.stderr.fileno())
        code = proc.wait()
        reported = error_file.is_file()  # a rank printed its one-line error (exit 2)
    if code == 0:
        return 0
    if reported:  # a rank said what went wrong, on one line, above
        return 2
    print(f"activedet {words[0]}: error: the {nproc}-process run stopped (a process exited with code "
          f"{code} or was killed); {after}", file=sys.stderr)
    return 1


#: the file a rank of a launched run creates after printing its one-line error
ERROR_FILE_ENV = "ACTIVEDET_ERROR_FILE"
#: torchrun's own lines, hidden from the user (the ranks' lines stay)
_LAUNCHER_NOISE = ("torch/distributed/elastic", "torch.distributed.elastic")
#: a traceback with a frame from these files is torchrun's own failure report
_LAUNCHER_FRAMES = ("torch/distributed/run.py", "torch/distributed/launcher/", "torch/distributed/elastic/")


def relay_stderr(fd: int) -> None:
    """Copy torchrun's stderr to ours as it comes (progress bars included), leaving out
    torchrun's own traceback and failure summary. A traceback is held until it ends (its
    exception line) or shows a launcher frame: a rank's own traceback is passed on whole,
    torchrun's report dropped with everything after it."""

    buf, quiet = b"", False
    held: list[str] | None = None  # the lines of a traceback not yet judged
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        while True:
            cut = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
            if cut < 0:
                break
            text, buf = buf[:cut + 1], buf[cut + 1:]
            for seg in text.decode(errors="replace").splitlines(keepends=True):
                if quiet:
                    continue
                if held is None and seg.startswith("Traceback (most recent call last)"):
                    held = []
                if held is not None:
                    held.append(seg)
                    if any(f in seg for f in _LAUNCHER_FRAMES):
                        quiet, held = True, None  # torchrun's ChildFailedError report: to the end
                    elif len(held) > 1 and not seg.startswith((" ", "\t")):  # the exception line
                        sys.stderr.writelines(held)
                        held = None
                    continue
                if not any(n in seg for n in _LAUNCHER_NOISE):
                    sys.stderr.write(seg)
            sys.stderr.flush()
    if held:
        sys.stderr.writelines(held)
    if buf and not quiet:
        sys.stderr.write(buf.decode(errors="replace"))


__all__ = ["ERROR_FILE_ENV", "launch_torchrun", "relay_stderr"]


#: how a relaunched command's argv is rebuilt from its parsed arguments, in order:
#: (flag, attribute); flag "" is a positional; a list repeats its flag; a bool is a switch
COMMAND_ARGV: dict[str, tuple[tuple[str, str], ...]] = {
    "simulate": (("", "config"), ("--out", "out"), ("--resume", "resume"), ("--set", "set"), ("--device", "device"),
                 ("--seed", "seed"), ("--quiet", "quiet"), ("--json", "json")),
    "select": (("", "config"), ("--project", "project"), ("--budget", "budget"), ("--unit", "unit"),
               ("--prelabel-score", "prelabel_score"), ("--strategy", "strategy"),
               ("--image-url-prefix", "image_url_prefix"), ("--local-files-root", "local_files_root"),
               ("--device", "device"), ("--replace", "replace"), ("--quiet", "quiet"), ("--json", "json"),
               ("--set", "set")),
}


def command_argv(command: str, args: Any) -> list[str]:
    """``[command, ...]``: the words that run ``command`` again with the arguments ``args``
    (an ``argparse.Namespace``) holds, as :data:`COMMAND_ARGV` describes them."""
    words = [command]
    for flag, attr in COMMAND_ARGV[command]:
        value = getattr(args, attr)
        if value is None or value is False:
            continue
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)] if flag else [str(value)]
    return words


def resume_command(args: Any) -> str:
    """The shell command that continues the simulate run of ``args``."""
    from activedet.distributed import env_world

    again = argparse.Namespace(**{**vars(args), "resume": True, "quiet": False, "json": False})
    words = ["activedet", *command_argv("simulate", again)]
    nproc = getattr(args, "nproc", None) or env_world()  # a process of a launched run: its count
    if nproc > 1:
        words += ["--nproc", str(nproc)]
    return shlex.join(words)


def must_launch(nproc: int | None) -> bool:
    """``--nproc N`` with N > 1 outside torchrun: this process starts the N processes."""
    from activedet.distributed import env_world

    return (nproc or 1) > 1 and env_world() <= 1


def relaunch(command: str, args: Any, after: str) -> int:
    """Run ``command`` with ``args`` under torchrun with ``args.nproc`` processes and wait."""
    return launch_torchrun(args.nproc, args.master_port, args.verbose, command_argv(command, args), after)
