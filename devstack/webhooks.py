"""A local webhook receiver for tests and the soak: an HTTP server that records every POST."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    """A local HTTP server that records every POST (body and headers)."""

    def __init__(self, status_code: int = 200, delay_s: float = 0.0) -> None:
        self.calls: list[tuple[bytes, dict[str, str]]] = []
        self.status_code = status_code
        self.delay_s = delay_s
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.calls.append((body, dict(self.headers)))
                time.sleep(receiver.delay_s)
                self.send_response(receiver.status_code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
