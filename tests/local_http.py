"""A local HTTP server for tests that need an endpoint (the LLM backend): `with serve(Handler) as base_url: ...`.

Loopback only; the handler class is a `http.server.BaseHTTPRequestHandler`. tests/conftest.py's folder is on
sys.path, so any test imports it as `from local_http import serve`.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from typing import Iterator


class JSONHandler(http.server.BaseHTTPRequestHandler):
    """A handler with `send_json` and no request logging."""

    def send_json(self, status: int, payload) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@contextlib.contextmanager
def serve(handler: type, server_class: type = http.server.ThreadingHTTPServer) -> Iterator[str]:
    """Serves `handler` on 127.0.0.1 (a free port) in a thread; yields the base URL `http://127.0.0.1:PORT/v1`."""
    server = server_class(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()
