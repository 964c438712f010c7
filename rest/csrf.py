"""Refuse state-changing requests that a browser marks as cross-site (CSRF).

Without ``API_TOKEN`` (an intranet deployment, ``make demo``) any web page a colleague visits
could otherwise make their browser remove tracks (``GET /apiv1/remove/...``, an ``<img>``
suffices) or post uploads and webhooks (a cross-site form). Browsers say where a request
comes from: ``Sec-Fetch-Site`` (every current browser) and ``Origin``. A state-changing
request marked ``cross-site`` or ``same-site``, or whose ``Origin`` is not this service's own
address, gets a 403 with the reason. Clients that are not browsers (the lab's scripts, curl,
the worker's webhooks) send neither header and are not affected; the page is same-origin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import JSONResponse, Response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
STATE_CHANGING_GET_PREFIXES = ("/apiv1/remove/",)
ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})


def changes_state(request: Request) -> bool:
    if request.method not in SAFE_METHODS:
        return True
    return request.url.path.startswith(STATE_CHANGING_GET_PREFIXES)


def cross_site_reason(request: Request) -> str | None:
    """Why the browser's own headers mark this request as coming from another site, if so."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ALLOWED_FETCH_SITES:
        return f"Sec-Fetch-Site: {site}"
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
            return f"Origin {origin!r} is not this service ({host})"
    return None


async def refuse_cross_site(request: Request,
                            call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    if changes_state(request) and (reason := cross_site_reason(request)) is not None:
        text = (f"cross-site request refused ({reason}): a page on another site cannot "
                "change this service; use the service's own page or an API client")
        return JSONResponse({"error": text, "reason": text}, status_code=403)
    return await call_next(request)
