"""Small HTTP servers on a free loopback port for tests and the soak (webhook receivers, a
stand-in model hub, a forwarding proxy): each serves in a daemon thread until ``close``."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that writes no access log."""

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    # http.server listens with a backlog of 5: a worker that sends a job's 21 joined webhooks
    # at once then has connections dropped while the serving thread is slow to accept them.
    request_queue_size = 128


class LoopbackServer:
    """``handler`` served on ``127.0.0.1`` at a free ``port``, in a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
