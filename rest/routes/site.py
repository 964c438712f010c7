"""What is not the API: ``GET /`` (the page for a browser, a JSON 200 for anything else, such
as a load balancer), the page's icon, ``POST /`` (job-outcome webhooks, logged: the lab's
clients point their callback at the service's root) and ``/healthz``."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from common.json_text import NotJson, parse_json
from common.webhook import verify_delivery
from rest.backend import client_of, get_backend
from rest.ingest.uploads import read_body

log = logging.getLogger("rest")
CALLBACK_MAX_BYTES = 64 * 1024
"""The lab's callbacks are a few hundred bytes; a body past this is refused as it arrives."""

async def root(request: Request) -> Response:
    """The page for a browser; a JSON 200 for a load balancer's health check."""
    if "text/html" in request.headers.get("accept", ""):
        return HTMLResponse(request.app.state.page)
    return JSONResponse({"service": "music source separation", "status": "ok",
                         "api": "/apiv1", "docs": "/docs"})


FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
           '<rect x="1" y="6" width="2" height="4" fill="#3b5bdb"/>'
           '<rect x="5" y="3" width="2" height="10" fill="#3b5bdb"/>'
           '<rect x="9" y="1" width="2" height="14" fill="#3b5bdb"/>'
           '<rect x="13" y="5" width="2" height="6" fill="#3b5bdb"/></svg>')


async def favicon() -> Response:
    """The page's icon (four stems), so a browser's own request for it is not a 404."""
    return Response(FAVICON, media_type="image/svg+xml",
                    headers={"Cache-Control": "public, max-age=86400"})


async def callback(request: Request) -> dict[str, Any]:
    """Log a job-outcome webhook (the lab's clients point their callback at ``/``).

    At most 64 KB, counted in REST_MAX_IN_FLIGHT and RATE_LIMIT_PER_MIN (its own count).
    """
    backend = get_backend(request)
    await run_in_threadpool(backend.callback_rate_limit.check, client_of(request))
    body = await read_body(request, CALLBACK_MAX_BYTES, "a callback body is at most 64 KB")
    verified = None
    if backend.settings.webhook_secret:
        verified = verify_delivery(body, request.headers, backend.settings.webhook_secret)
    try:
        payload = parse_json(body)
    except NotJson:
        payload = None
    if isinstance(payload, dict):  # each client field bounded; logging escapes them
        log.info("callback received: job %.64s %.16s, song %.64s, error %.300s, data %.300s, "
                 "signature %s", payload.get("id"), payload.get("status"),
                 payload.get("songhash"), payload.get("error"), _shown(payload.get("data")),
                 _signature_word(verified))
    else:
        log.info("callback received: %d bytes that are not a JSON object, signature %s",
                 len(body), _signature_word(verified))
    return {"reason": "callback received", "verified": verified}


def _shown(data: Any) -> str:
    """Callback data as JSON for the log; too deep to encode is said, not raised."""
    try:
        return json.dumps(data)
    except (RecursionError, ValueError):
        return "(not encodable)"


def _signature_word(verified: bool | None) -> str:
    return "not checked (no WEBHOOK_SECRET)" if verified is None else \
        ("verified" if verified else "INVALID")


async def healthz(request: Request) -> JSONResponse:
    """200 when Redis and MinIO answer; checked apart from the API's work (``rest.probes``)."""
    healthy, reason = await request.app.state.probe.health_async()
    return JSONResponse({"ok": healthy, "reason": reason}, status_code=200 if healthy else 503)



def add_site_routes(app: FastAPI) -> None:
    """The routes on the app itself (not an included router): the probes' paths are then
    among ``app.routes``, as the deployment's checks read them."""
    app.add_api_route("/", root, methods=["GET", "HEAD"], include_in_schema=False)
    for path in ("/favicon.svg", "/favicon.ico"):
        app.add_api_route(path, favicon, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route("/", callback, methods=["POST"], summary="Receive a job-outcome webhook")
    app.add_api_route("/healthz", healthz, methods=["GET"], summary="Redis and MinIO reachable")
