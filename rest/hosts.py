"""Refuse a request whose ``Host`` is not one of this service's names (``ALLOWED_HOSTS``).

A page on another site can have a browser resolve the page's own name to this service's
address (DNS rebinding). The browser then sends that name as ``Host`` and takes the service for
the page's origin: ``Origin`` and ``Sec-Fetch-Site`` say same-origin, ``rest.csrf`` lets the
request through, and the page reads the answers. Only ``Host`` tells, so it is checked first,
before any route or the CSRF check. Starlette's ``TrustedHostMiddleware`` decides (ports
ignored, IPv6 literals in brackets, ``*.example.com`` patterns); its plain-text refusal is
answered here as the service's other errors are, a JSON 400 that says why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("rest")
REFUSED = ("the Host header does not name this service (ALLOWED_HOSTS): use the service's "
           "own address")


class RefuseUnknownHosts:
    """A pure ASGI middleware: an admitted request reaches the app with its own ``send``."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.allowed_hosts = list(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = [value for name, value in scope["headers"] if name == b"host"]
        if len(hosts) > 1:  # RFC 9112 3.2: a 400 (a proxy may have routed it by the other)
            await _refuse(scope, receive, send, "more than one Host")
            return
        admitted = False

        async def admit(scope: Scope, receive: Receive, _: Send) -> None:
            nonlocal admitted
            admitted = True
            await self.app(scope, receive, send)

        async def drop(_: Message) -> None:  # the library's plain-text refusal
            pass

        await TrustedHostMiddleware(admit, self.allowed_hosts, www_redirect=False)(
            scope, receive, drop)
        if not admitted:
            host = (hosts or [b""])[0].decode("latin-1")
            await _refuse(scope, receive, send, f"Host {host[:100]!r} is not in ALLOWED_HOSTS")


async def _refuse(scope: Scope, receive: Receive, send: Send, why: str) -> None:
    """Log why, and answer as the service's other errors are: a JSON 400."""
    log.info("%s %s refused: %s", scope["method"], scope["path"][:200], why)
    await JSONResponse({"error": REFUSED, "reason": REFUSED}, status_code=400)(
        scope, receive, send)
