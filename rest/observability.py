"""The REST service's Prometheus metrics, and the middleware that counts every request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping

import redis
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.queue import LANES

log = logging.getLogger("rest")

REQUESTS = Counter("demucs_rest_requests_total", "HTTP requests, by route and status code",
                   ["method", "route", "status"])
REQUEST_SECONDS = Histogram("demucs_rest_request_duration_seconds",
                            "Time to answer (stream not included), by route", ["route"],
                            buckets=(0.005, 0.02, 0.1, 0.5, 1, 2.5, 5, 15, 60))
SONGS = Counter("demucs_rest_songs_total", "Separation requests accepted, by outcome",
                ["outcome"])
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
"""Methods counted under their own name; any other is counted as ``other``."""


class QueueDepths(Collector):
    """``demucs_rest_queue_depth{lane}``: the waiting jobs by lane (``JobQueue.depths``), read
    from Redis at each scrape, on either port (the API's ``/metrics`` or ``METRICS_PORT``'s);
    the last values known while Redis does not answer. Their sum is the queue."""

    NAME = "demucs_rest_queue_depth"
    HELP = ("Jobs waiting, seen by REST, by lane: intake (pushed, not yet routed), chunks (of "
            "long songs under way), high, normal")

    def __init__(self) -> None:
        self.read: Callable[[], Mapping[str, int]] | None = None
        self.last: dict[str, int] = dict.fromkeys(LANES, 0)

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["lane"])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.read is not None:
            try:
                self.last = dict(self.read())
            except redis.RedisError as error:
                log.warning("metrics: queue depth unknown: %s", error)
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["lane"])
        for lane, jobs in self.last.items():
            family.add_metric([lane], jobs)
        yield family


QUEUE_DEPTH = QueueDepths()
REGISTRY.register(QUEUE_DEPTH)


SHED = Counter("demucs_rest_shed_total",
               "API requests refused at once with 503 past REST_MAX_IN_FLIGHT")


class CountRequests:
    """Count each request under its route's template, so paths do not explode the labels.

    A pure ASGI middleware (Starlette's ``BaseHTTPMiddleware`` costs a task and a stream per
    request); the time is to the start of the answer, a streamed body not included.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500
        answered_s: float | None = None

        async def send_counted(message: Message) -> None:
            nonlocal status, answered_s
            if message["type"] == "http.response.start":
                status, answered_s = message["status"], time.monotonic() - started
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in METHODS else "other"
            REQUESTS.labels(method, route, str(status)).inc()
            REQUEST_SECONDS.labels(route).observe(
                time.monotonic() - started if answered_s is None else answered_s)
