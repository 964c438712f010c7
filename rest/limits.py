"""Load shedding: past ``REST_MAX_IN_FLIGHT`` API requests at once, answer 503 at once.

A request over the limit costs no thread, no Redis or MinIO call: it gets
``503 {"error", "reason"}`` with ``Retry-After`` right away, instead of waiting in a queue for
an answer its client may no longer want. Probes and the root page (``GET``) are never shed, nor
counted (metrics are on ``METRICS_PORT``, apart from the API); ``POST /``, the callback sink
whose bodies are read, is counted like the API. Work in progress is bounded by the
limit, so an overloaded process recovers as soon as the load stops. A pure ASGI middleware:
two integers, on the event loop.

A request counts until its answer starts. An answer still being sent after that (a streamed
track, at the pace its client reads) counts apart, in ``Load.sending``: a track route starts
no stream past ``REST_MAX_IN_FLIGHT`` of them (``check_send_room``), and each is bounded in
time by ``rest.ingest.pace``. So clients that stop reading their downloads cannot shut out the
others' polls.
"""

from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rest.observability import SHED

NEVER_SHED = frozenset({"/", "/healthz", "/favicon.svg", "/favicon.ico"})
"""Paths whose ``GET`` and ``HEAD`` are never shed: they read no body and cost no backend."""
RETRY_AFTER_S = 1


class Load:
    """What one process is doing: requests not yet answered, answers still being sent."""

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.sending = 0

    def check_send_room(self) -> None:
        """503 unless one more streamed answer may start (``REST_MAX_IN_FLIGHT`` at most)."""
        if self.sending >= self.max_in_flight:
            raise HTTPException(
                503, f"the service is sending {self.max_in_flight} answers already "
                     f"(REST_MAX_IN_FLIGHT); retry in {RETRY_AFTER_S} s",
                headers={"Retry-After": str(RETRY_AFTER_S)})


class ShedLoad:
    """Count API requests in progress; refuse the ones past ``max_in_flight``."""

    def __init__(self, app: ASGIApp, load: Load) -> None:
        self.app = app
        self.load = load

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or \
                (scope["path"] in NEVER_SHED and scope["method"] in ("GET", "HEAD")):
            await self.app(scope, receive, send)
            return
        load = self.load
        if load.in_flight >= load.max_in_flight:
            SHED.inc()
            await refuse(send, load.max_in_flight)
            return
        load.in_flight += 1
        answering = False

        async def send_counted(message: Message) -> None:
            nonlocal answering
            if message["type"] == "http.response.start" and not answering:
                answering = True  # from here on, the answer's pace is its client's
                load.in_flight -= 1
                load.sending += 1
            await send(message)
        try:
            await self.app(scope, receive, send_counted)
        finally:
            if answering:
                load.sending -= 1
            else:
                load.in_flight -= 1


async def refuse(send: Send, limit: int) -> None:
    reason = (f"the service is at its limit of {limit} requests at once (REST_MAX_IN_FLIGHT); "
              f"retry in {RETRY_AFTER_S} s")
    body = json.dumps({"error": reason, "reason": reason}).encode()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode())]})
    await send({"type": "http.response.body", "body": body})
