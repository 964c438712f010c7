"""The REST service's Prometheus metrics, and the middleware that counts every request."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("demucs_rest_requests_total", "HTTP requests, by route and status code",
                   ["method", "route", "status"])
REQUEST_SECONDS = Histogram("demucs_rest_request_duration_seconds",
                            "Time to answer (stream not included), by route", ["route"],
                            buckets=(0.005, 0.02, 0.1, 0.5, 1, 2.5, 5, 15, 60))
SONGS = Counter("demucs_rest_songs_total", "Separation requests accepted, by outcome",
                ["outcome"])
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
"""Methods counted under their own name; any other is counted as ``other``."""
QUEUE_DEPTH = Gauge("demucs_rest_queue_depth", "Jobs waiting in toWorkers, seen by REST")


async def count_requests(request: Request,
                         call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Count the request under its route's template and a known method, so neither paths
    nor made-up methods can add label values without bound."""
    started = time.monotonic()
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        route = getattr(request.scope.get("route"), "path", "unmatched")
        method = request.method if request.method in METHODS else "other"
        REQUESTS.labels(method, route, str(status)).inc()
        REQUEST_SECONDS.labels(route).observe(time.monotonic() - started)
