"""Refuse state-changing requests that a browser marks as cross-site (CSRF).

Without ``API_TOKEN`` (an intranet deployment, ``make demo``) any web page a colleague visits
could otherwise make their browser remove tracks (``GET /apiv1/remove/...``, an ``<img>``
suffices) or post uploads and webhooks (a cross-site form). Browsers say where a request
comes from: ``Sec-Fetch-Site`` (every current browser, to HTTPS and loopback addresses),
``Origin``, and, over plain HTTP where an ``<img>`` sends neither, ``Referer``. A
state-changing request marked ``cross-site`` or ``same-site``, or whose ``Origin`` (else
``Referer``) is not this service's own address, gets a 403 with the reason. Clients that are
not browsers (the lab's scripts, curl, the worker's webhooks) send none of these and are not
affected; the page is same-origin.
``Host`` itself, which ``Origin`` is compared with, is checked before this (``rest.hosts``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
STATE_CHANGING_GET_PREFIXES = ("/apiv1/remove/",)
ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})


def changes_state(method: str, path: str) -> bool:
    return method not in SAFE_METHODS or path.startswith(STATE_CHANGING_GET_PREFIXES)


def cross_site_reason(headers: Headers) -> str | None:
    """Why the browser's own headers mark this request as coming from another site, if so."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ALLOWED_FETCH_SITES:
        return f"Sec-Fetch-Site: {site}"
    origin = headers.get("origin")
    host = headers.get("host", "")
    if origin is not None:
        if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
            return f"Origin {origin!r} is not this service ({host})"
    # over plain HTTP a browser sends no Sec-Fetch-*, and an <img> no Origin: its Referer
    # (the page's address; sent cross-site by default) is what is left
    elif site is None and (referer := headers.get("referer")) is not None and \
            urlsplit(referer).netloc.lower() != host.lower():
        return f"Referer from another site ({urlsplit(referer).netloc[:100]!r})"
    return None


class RefuseCrossSite:
    """A pure ASGI middleware: it never wraps the request body, so a streamed upload and a
    client's disconnect reach the route as they are."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and changes_state(scope["method"], scope["path"]):
            reason = cross_site_reason(Headers(scope=scope))
            if reason is not None:
                text = (f"cross-site request refused ({reason}): a page on another site "
                        "cannot change this service; use the service's own page or an API "
                        "client")
                await JSONResponse({"error": text, "reason": text}, status_code=403)(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)
