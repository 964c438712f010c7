"""A local webhook receiver for tests and the soak: an HTTP server that records every POST."""

from __future__ import annotations

import time

from devstack.loopback import LoopbackServer, QuietHandler


class WebhookReceiver:
    """A local HTTP server that records every POST (body and headers)."""

    def __init__(self, status_code: int = 200, delay_s: float = 0.0) -> None:
        self.calls: list[tuple[bytes, dict[str, str]]] = []
        self.status_code = status_code
        self.delay_s = delay_s
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.calls.append((body, dict(self.headers)))
                time.sleep(receiver.delay_s)
                self.send_response(receiver.status_code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = LoopbackServer(Handler)
        self.url = f"http://127.0.0.1:{self.server.port}/hook"

    def close(self) -> None:
        self.server.close()
