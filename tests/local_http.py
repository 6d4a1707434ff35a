"""A local HTTP server for tests that need an endpoint (the LLM backend): `with serve(Handler) as base_url: ...`.

Loopback only; the handler class is a `http.server.BaseHTTPRequestHandler`. tests/conftest.py's folder is on
sys.path, so any test imports it as `from local_http import serve`.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from typing import Iterator, Optional


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


def hung_llm(release: threading.Event, asked: Optional[threading.Event] = None) -> type:
    """An LLM endpoint that passes the build's start-up check (it lists the model `test-vlm`) and then answers no
    request until `release` is set, as a hung server would; `asked` is set when the first request arrives."""

    class Hung(JSONHandler):
        def do_GET(self):
            self.send_json(200, {"object": "list", "data": [{"id": "test-vlm"}]})

        def do_POST(self):
            if asked is not None:
                asked.set()
            release.wait(600)

    return Hung


def llm_build_sets(base_url: str) -> list[str]:
    """`medclm-data build` arguments that send every conversion to the LLM endpoint at `base_url` (model
    `test-vlm`, one try, a 600 s timeout), two records a shard."""
    sets = ["write.records_per_shard=2", "synth.backend=llm", f"synth.llm.base_url={base_url}",
            "synth.llm.model=test-vlm", "synth.llm.timeout_s=600", "synth.llm.retries=0"]
    return [arg for item in sets for arg in ("--set", item)]
