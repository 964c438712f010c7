"""Load shedding: past ``REST_MAX_IN_FLIGHT`` API requests at once, answer 503 at once.

A request over the limit costs no thread, no Redis or MinIO call: it gets
``503 {"error", "reason"}`` with ``Retry-After`` right away, instead of waiting in a queue for
an answer its client may no longer want. Probes and the root page (``GET``) are never shed, nor
counted (metrics are on ``METRICS_PORT``, apart from the API); ``POST /``, the callback sink
whose bodies are read, is counted like the API. Work in progress is bounded by the
limit, so an overloaded process recovers as soon as the load stops. A pure ASGI middleware:
one integer, on the event loop.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from rest.observability import SHED

NEVER_SHED = frozenset({"/", "/healthz", "/favicon.svg", "/favicon.ico"})
"""Paths whose ``GET`` and ``HEAD`` are never shed: they read no body and cost no backend."""
RETRY_AFTER_S = 1


class ShedLoad:
    """Count API requests in progress; refuse the ones past ``max_in_flight``."""

    def __init__(self, app: ASGIApp, max_in_flight: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or \
                (scope["path"] in NEVER_SHED and scope["method"] in ("GET", "HEAD")):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            SHED.inc()
            await refuse(send, self.max_in_flight)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


async def refuse(send: Send, limit: int) -> None:
    reason = (f"the service is at its limit of {limit} requests at once (REST_MAX_IN_FLIGHT); "
              f"retry in {RETRY_AFTER_S} s")
    body = json.dumps({"error": reason, "reason": reason}).encode()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode())]})
    await send({"type": "http.response.body", "body": body})
