"""``activedet serve`` answers from waitress, a production WSGI server, not Flask's
development server: the same app, bound by :func:`make_server`, many requests at once."""

from __future__ import annotations

import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from activedet.labeling import backend as backend_mod
from activedet.labeling.backend import create_app, make_server


class _Still:
    """What the app reads of a Backend for /health."""

    def state(self) -> dict:
        return {"status": "UP", "model_version": "model000-test", "training": False}


def test_serve_runs_under_waitress(monkeypatch) -> None:
    server = make_server(create_app(_Still()), "127.0.0.1", 0)  # port 0: any free port
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.effective_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            assert "waitress" in r.headers["Server"] and "Werkzeug" not in r.headers["Server"]
            assert json.loads(r.read())["model_version"] == "model000-test"
        with ThreadPoolExecutor(16) as pool:  # concurrent clients all answered
            codes = list(pool.map(lambda _: urllib.request.urlopen(url, timeout=10).status, range(64)))
        assert codes == [200] * 64
    finally:  # waitress's own order: its workers finish, then the loop closes the server itself
        server.task_dispatcher.shutdown()
        server.trigger.pull_trigger(server.close)
        thread.join(10)
    assert not thread.is_alive()


def test_the_serve_command_starts_waitress(tmp_path, monkeypatch) -> None:
    """`activedet serve` (one command) builds the backend, then runs make_server's server."""
    ran = {}

    class FakeBackend(_Still):
        version = "model000-test"

        def __init__(self, *args) -> None:
            ran["args"] = args

        def load(self) -> None:
            ran["loaded"] = True

    class FakeServer:
        effective_port = 9999

        def run(self) -> None:
            ran["run"] = True

        def close(self) -> None:
            ran["closed"] = True

    monkeypatch.setattr(backend_mod, "Backend", FakeBackend)
    monkeypatch.setattr(backend_mod, "make_server", lambda app, host, port: ran.update(where=(host, port))
                        or FakeServer())
    from activedet.cli import main

    assert main(["serve", "--project", str(tmp_path), "--port", "9999"]) == 0
    assert ran["loaded"] and ran["run"] and ran["closed"] and ran["where"] == ("127.0.0.1", 9999)
