"""Deadlines on bodies, in and out: no client holds a connection, a request slot or an upload
slot by sending slowly, nor a stream by reading slowly.

A request body may keep the service waiting for it ``BODY_TIMEOUT_S``, plus the time its bytes
so far take at ``BODY_MIN_KBPS`` (kilobits per second, as ``MP3_BITRATE``): Apache's
``RequestReadTimeout body=...,MinRate=...``. A client sending at least that pace is never cut
off; one that stalls or drips is answered ``408`` with the reason, and its connection closed,
once its credit is spent, and its slots are free again. Only the time spent waiting for the
client counts, never the service's own work between reads; the body's size is bounded by the
routes (``MAX_INPUT_MB``, 64 KB for callbacks), so each deadline is bounded too. A request
whose body is never read (a GET's) has no deadline, and once a body has arrived whole or the
answer has started, waiting for the client to go away is not timed either.

An answer's body goes out in pieces (a streamed track's are 256 KB): each must be taken by the
client within ``BODY_TIMEOUT_S`` plus its size at ``BODY_MIN_KBPS``, else the answer ends
there and the connection is closed (uvicorn logs "returned without completing response").
A pure ASGI middleware around ``receive`` and ``send``.
"""

from __future__ import annotations

import logging
import time

import anyio
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("rest")


class BodyDeadline:
    """Time each request's body as it arrives (``HTTPException(408)`` past its deadline), and
    each piece of its answer as it leaves (the answer abandoned past its deadline)."""

    def __init__(self, app: ASGIApp, timeout_s: float, min_kbps: int) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.min_bytes_per_s = min_kbps * 1000 / 8

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        paced = _PacedReceive(receive, self.timeout_s, self.min_bytes_per_s)
        try:
            await self.app(scope, paced, self.paced_send(send, paced))
        except _Unread as unread:
            log.info("%s %s: the client took no %d bytes of its answer in %.0f s "
                     "(BODY_TIMEOUT_S, BODY_MIN_KBPS); answer abandoned", scope["method"],
                     scope["path"], unread.size, unread.waited_s)

    def paced_send(self, send: Send, receive: _PacedReceive) -> Send:
        async def paced(message: Message) -> None:
            if message["type"] == "http.response.start":
                receive.timed = False  # the answer's pace holds the connection from here on
            size = len(message.get("body", b""))
            allowed_s = self.timeout_s + size / self.min_bytes_per_s
            started = time.monotonic()
            try:
                with anyio.fail_after(allowed_s):
                    await send(message)
            except TimeoutError:
                raise _Unread(size, time.monotonic() - started) from None
        return paced


class _Unread(Exception):
    """A piece of an answer its client did not take in time."""

    def __init__(self, size: int, waited_s: float) -> None:
        super().__init__(size, waited_s)
        self.size = size
        self.waited_s = waited_s


class _PacedReceive:
    """One request's ``receive``, which gives up once the client has used its time."""

    def __init__(self, receive: Receive, timeout_s: float, min_bytes_per_s: float) -> None:
        self.receive = receive
        self.timeout_s = timeout_s
        self.min_bytes_per_s = min_bytes_per_s
        self.received_bytes = 0
        self.waited_s = 0.0
        self.timed = True  # False once the body has arrived (later calls wait for a
        # disconnect) or the answer has started

    def allowed_s(self) -> float:
        return self.timeout_s + self.received_bytes / self.min_bytes_per_s

    async def __call__(self) -> Message:
        if not self.timed:
            return await self.receive()
        started = time.monotonic()
        try:
            with anyio.fail_after(max(0.0, self.allowed_s() - self.waited_s)):
                message = await self.receive()
        except TimeoutError:
            raise HTTPException(408, self.too_slow(), headers={"Connection": "close"}) from None
        finally:
            self.waited_s += time.monotonic() - started
        self.received_bytes += len(message.get("body", b""))
        self.timed = message["type"] == "http.request" and message.get("more_body", False)
        return message

    def too_slow(self) -> str:
        return (f"the request body came too slowly: {self.received_bytes} bytes in "
                f"{self.waited_s:.0f} s; a body gets BODY_TIMEOUT_S={self.timeout_s:g} s plus "
                f"the time its bytes take at BODY_MIN_KBPS="
                f"{self.min_bytes_per_s * 8 / 1000:g} kbit/s")
