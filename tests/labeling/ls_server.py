"""A real Label Studio server on 127.0.0.1 for the integration tests, and a tiny REST client.

Starting it is where a broken install shows: Label Studio 1.23.2 with sentry-sdk 3 exits at
settings import. ``wait`` tells that apart from a slow start: a server that exits is reported
at once, its error line first, then the log's last lines; one that never answers is stopped
after a bounded time and reported with the same tail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "activedet0e2e0token0000000000000000000000"
START_TIMEOUT_S = 300.0  # first start of a fresh data dir: ~75 s idle, a few minutes under load
_ERROR_LINE = re.compile(r"^\s*[A-Za-z_][\w.]*(Error|Exception|Exit)\b|\bError: ")


class LabelStudioFailed(AssertionError):
    """Label Studio exited or never answered; the message starts with one line saying which."""


def label_studio_executable() -> str:
    exe = os.environ.get("ACTIVEDET_LABEL_STUDIO") or str(ROOT / ".venv-labelstudio" / "bin" / "label-studio")
    assert os.access(exe, os.X_OK), f"Label Studio not installed at {exe}: run `make test-integration`"
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(log: Path, lines: int = 40) -> tuple[str, str]:
    """(the log's last error line, or its last line; its last ``lines`` lines)."""
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    errors = [line.strip() for line in text if _ERROR_LINE.search(line)]
    last = errors[-1] if errors else next((line.strip() for line in reversed(text) if line.strip()), "(empty log)")
    return last, "\n".join(text[-lines:])


class LabelStudio:
    """A Label Studio server on 127.0.0.1 and a tiny REST client."""

    def __init__(self, data_dir: Path, files_root: Path, log: Path, executable: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
               "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
               "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
               "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir)}
        self.log = log
        self.proc = subprocess.Popen(
            [executable or label_studio_executable(), "start", "--no-browser", "--internal-host", "127.0.0.1",
             "-p", str(self.port), "--data-dir", str(data_dir), "--username", "annotator@example.com",
             "--password", "activedet-e2e-pass", "--user-token", TOKEN, "--enable-legacy-api-token"],
            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = START_TIMEOUT_S) -> float:
        """Seconds until the API answered. Raises LabelStudioFailed as soon as the server exits,
        or after ``timeout`` seconds without an answer (then the server is stopped)."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            code = self.proc.poll()
            if code is not None:
                error, tail = log_tail(self.log)
                raise LabelStudioFailed(
                    f"Label Studio exited at start (exit code {code}, after {time.time() - t0:.0f} s): {error}\n"
                    f"--- last lines of {self.log} ---\n{tail}")
            try:
                self.get("/api/projects")
                return time.time() - t0
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        error, tail = log_tail(self.log)
        raise LabelStudioFailed(f"Label Studio did not answer within {timeout:.0f} s (stopped it); its last "
                                f"line: {error}\n--- last lines of {self.log} ---\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def request(self, method: str, path: str, body: Any = None, raw: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            payload = resp.read()
        return payload if raw else (json.loads(payload) if payload else None)

    def get(self, path: str, raw: bool = False) -> Any:
        return self.request("GET", path, raw=raw)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)
