"""The worker's Prometheus metrics, and its HTTP endpoint ``/healthz`` + ``/metrics``."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

JOBS = Counter("demucs_jobs_total", "Jobs finished, by outcome and failure reason",
               ["outcome", "reason"])
JOB_SECONDS = Histogram("demucs_job_duration_seconds", "Time from take to outcome",
                        buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 2400, 3600))
STAGE_SECONDS = Histogram("demucs_stage_duration_seconds", "Time per pipeline stage",
                          ["stage"], buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1200))
QUEUE_DEPTH = Gauge("demucs_queue_depth", "Jobs waiting, by lane: intake (pushed, not yet "
                    "routed), chunks (of long songs under way), high, normal", ["lane"])
IN_FLIGHT = Gauge("demucs_jobs_in_flight", "Jobs this worker is running")



def record_queue_depths(depths: Mapping[str, int]) -> None:
    """Set ``demucs_queue_depth`` for each lane (``JobQueue.depths``); its sum is the queue."""
    for lane, jobs in depths.items():
        QUEUE_DEPTH.labels(lane).set(jobs)


HealthCheck = Callable[[], "tuple[bool, str]"]


def serve(port: int, check: HealthCheck) -> ThreadingHTTPServer:
    """Serve ``/healthz`` (200 or 503 with the reason), ``/metrics`` and ``/`` (liveness: the
    process answers) in a daemon thread, apart from the service's own work."""

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

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104  # the kubelet probes it  # nosec B104
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
