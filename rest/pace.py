"""Deadlines on request bodies: no client holds a connection, a request slot or an upload
slot by sending slowly.

A body may keep the service waiting for it ``BODY_TIMEOUT_S``, plus the time its bytes so far
take at ``BODY_MIN_KBPS`` (kilobits per second, as ``MP3_BITRATE``): Apache's
``RequestReadTimeout body=...,MinRate=...``. A client sending at least that pace is never cut
off; one that stalls or drips is answered ``408`` with the reason, and its connection closed,
once its credit is spent, and its slots are free again. Only the time spent waiting for the
client counts, never the service's own work between reads; the body's size is bounded by the
routes (``MAX_INPUT_MB``, 64 KB for callbacks), so each deadline is bounded too. A pure ASGI
middleware around ``receive``: a request whose body is never read (a GET's) has no deadline.
"""

from __future__ import annotations

import time

import anyio
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyDeadline:
    """Wrap each request's ``receive`` with its deadline (``HTTPException(408)`` past it)."""

    def __init__(self, app: ASGIApp, timeout_s: float, min_kbps: int) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.min_bytes_per_s = min_kbps * 1000 / 8

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, _PacedReceive(receive, self.timeout_s, self.min_bytes_per_s),
                       send)


class _PacedReceive:
    """One request's ``receive``, which gives up once the client has used its time."""

    def __init__(self, receive: Receive, timeout_s: float, min_bytes_per_s: float) -> None:
        self.receive = receive
        self.timeout_s = timeout_s
        self.min_bytes_per_s = min_bytes_per_s
        self.received_bytes = 0
        self.waited_s = 0.0

    def allowed_s(self) -> float:
        return self.timeout_s + self.received_bytes / self.min_bytes_per_s

    async def __call__(self) -> Message:
        started = time.monotonic()
        try:
            with anyio.fail_after(max(0.0, self.allowed_s() - self.waited_s)):
                message = await self.receive()
        except TimeoutError:
            raise HTTPException(408, self.too_slow(), headers={"Connection": "close"}) from None
        finally:
            self.waited_s += time.monotonic() - started
        self.received_bytes += len(message.get("body", b""))
        return message

    def too_slow(self) -> str:
        return (f"the request body came too slowly: {self.received_bytes} bytes in "
                f"{self.waited_s:.0f} s; a body gets BODY_TIMEOUT_S={self.timeout_s:g} s plus "
                f"the time its bytes take at BODY_MIN_KBPS="
                f"{self.min_bytes_per_s * 8 / 1000:g} kbit/s")
