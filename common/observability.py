"""The probe port both services serve apart from their work: ``/healthz``, ``/metrics``, ``/``."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

HealthCheck = Callable[[], "tuple[bool, str]"]


def serve(port: int, check: HealthCheck, host: str = "0.0.0.0"  # noqa: S104  # nosec B104
          ) -> ThreadingHTTPServer:
    """Serve ``/healthz`` (200 or 503 with the reason), ``/metrics`` and ``/`` (liveness: the
    process answers) in a daemon thread, apart from the service's own work, on ``host``
    (``METRICS_HOST``: every interface by default, where the kubelet probes it; loopback for
    ``make demo``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                self._answer(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif self.path.split("?")[0] == "/":
                self._answer(200, b'{"ok": true}', "application/json")
            elif self.path.split("?")[0] == "/healthz":
                healthy, reason = check()
                body = json.dumps({"ok": healthy, "reason": reason}).encode()
                self._answer(200 if healthy else 503, body, "application/json")
            else:
                self._answer(404, b'{"error": "not found"}', "application/json")

        def _answer(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("health endpoint: " + format, *args)

    server_class = _IPv6Server if ipaddress.ip_address(host).version == 6 else ThreadingHTTPServer
    server = server_class((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


class _IPv6Server(ThreadingHTTPServer):
    """The probe port on an IPv6 address (``METRICS_HOST=::`` or ``::1``)."""

    address_family = socket.AF_INET6
