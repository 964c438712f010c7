"""The REST service's entry point: ``uvicorn --factory rest.app:create_app --port 5000``
(``rest.app:app``, the same app built from the environment on first use, works too).

``create_app(settings)`` builds the service (``uvicorn --factory rest.app:create_app``);
``app`` is it built from the environment. The routes are ``rest.routes``': the lab's
``apiv1``, the page, ``POST /`` (job-outcome webhooks, logged) and ``/healthz``; the OpenAPI
docs at ``/docs``. Prometheus' ``/metrics`` is served only on ``METRICS_PORT`` (with the
probes), never on the API's port, which the ingress routes. Every error is JSON
``{"error": ..., "reason": ...}``; no traceback ever reaches a client. A request whose
``Host`` is not one of ``ALLOWED_HOSTS`` is refused before anything else (``rest.hosts``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis
from anyio import to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from fastapi.telemetry import TelemetryConfig
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from common.connections import SPARE_CONNECTIONS, connect_redis
from common.logs import configure_logging
from common.observability import serve
from common.settings import Settings
from rest.backend import Backend, require_token
from rest.browser_headers import BrowserHeaders
from rest.csrf import RefuseCrossSite
from rest.hosts import RefuseUnknownHosts
from rest.ingest.pace import BodyDeadline
from rest.ingest.uploads import UploadSlots
from rest.limits import Load, ShedLoad
from rest.observability import QUEUE_DEPTH, CountRequests
from rest.probes import STORAGE_ERRORS, HealthProbe
from rest.routes import API_ROUTERS, add_site_routes

log = logging.getLogger("rest")
PAGE_PATH = Path(__file__).with_name("page.html")
# Metrics are Prometheus' (METRICS_PORT's /metrics): FastAPI's OpenTelemetry hooks would cost
# every request a look for providers that are never configured.
NO_OPENTELEMETRY = TelemetryConfig(tracing=False, metrics=False, logs=False)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app on ``settings`` (the environment's when None); Redis and MinIO are reached
    only once it serves (its lifespan), so tests build it in-process (``httpx.ASGITransport``)."""
    settings = settings or Settings.from_env()
    # With API_TOKEN or API_KEYS set, the API's description is the key holders' business too.
    guarded = [Depends(require_token)] if settings.api_token or settings.api_keys else []
    app = FastAPI(title="Music source separation", version="1.0",
                  description="Split songs into stems with Demucs. The lab's `apiv1` API.",
                  lifespan=_lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  telemetry=NO_OPENTELEMETRY)
    app.add_api_route("/openapi.json", lambda: app.openapi(), include_in_schema=False,
                      dependencies=guarded)
    app.add_api_route("/docs", lambda: get_swagger_ui_html(
        openapi_url="/openapi.json", title="Music source separation - docs"),
        include_in_schema=False, dependencies=guarded)
    app.state.backend = Backend.connect(settings)
    QUEUE_DEPTH.read = app.state.backend.queue.depths
    app.state.probe = HealthProbe(settings)
    app.state.page = PAGE_PATH.read_text(encoding="utf-8")
    app.state.upload_slots = UploadSlots(settings.max_concurrent_uploads,
                                         settings.max_uploads_per_client)
    app.add_middleware(BodyDeadline, timeout_s=settings.body_timeout_s,
                       min_kbps=settings.body_min_kbps)
    app.add_middleware(RefuseCrossSite)
    app.add_middleware(CountRequests)
    app.state.load = Load(settings.rest_max_in_flight)
    app.add_middleware(ShedLoad, load=app.state.load)
    app.add_middleware(BrowserHeaders)  # on every answer, refusals included
    app.add_middleware(RefuseUnknownHosts, allowed_hosts=settings.allowed_host_names)  # first
    _add_error_handlers(app)
    for router in API_ROUTERS:
        app.include_router(router)
    add_site_routes(app)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    backend: Backend = app.state.backend
    settings = backend.settings
    log_client = connect_redis(settings, fail_fast=True)
    configure_logging(log_client, settings.host, "rest", settings.log_list_max,
                      settings.log_list_max_bytes)
    # a thread for every request let in at once, and a few for metrics and start-up
    to_thread.current_default_thread_limiter().total_tokens = \
        settings.rest_max_in_flight + SPARE_CONNECTIONS
    try:
        await run_in_threadpool(backend.ensure_buckets)
    except STORAGE_ERRORS as error:
        log.warning("MinIO unreachable at start (%s); buckets are made at the first upload", error)
    if backend.owned:  # job records from before the clients' index of ids (rest.owners)
        indexed = await run_in_threadpool(backend.owners.index_jobs)
        log.info("clients' index of job ids: %d records of clients' jobs (re)indexed", indexed)
    probes = None
    if settings.metrics_port:  # the kubelet's probes: a thread and a port of their own
        try:
            probes = serve(settings.metrics_port, app.state.probe.health, settings.metrics_host)
        except OSError as error:
            log.warning("cannot serve probes on METRICS_PORT=%d: %s", settings.metrics_port,
                        error)
    log.info("rest service ready: models %s (default %s), buckets %s -> %s, API token %s",
             ", ".join(backend.models.names()), settings.demucs_model, settings.queue_bucket,
             settings.output_bucket,
             f"required, {len(backend.clients)} clients owning their songs"
             if backend.owned else "required" if settings.api_token else "off")
    yield
    if probes is not None:
        probes.shutdown()
    backend.callbacks.close()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "reason": message}, status_code=status,
                        headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    async def http_error(_: Request, error: Exception) -> JSONResponse:
        if not isinstance(error, StarletteHTTPException):  # registered for that type only
            raise error
        return _error(error.status_code, str(error.detail), getattr(error, "headers", None))

    async def invalid_request(_: Request, error: Exception) -> JSONResponse:
        if not isinstance(error, RequestValidationError):  # registered for that type only
            raise error
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"])
        return _error(400, f"{where}: {first['msg']}" if where else str(first["msg"]))

    async def redis_down(request: Request, error: Exception) -> JSONResponse:
        log.error("%s %s: Redis error: %s", request.method, request.url.path, error)
        return _error(503, "the job queue (Redis) is unreachable; try again later")

    async def storage_down(request: Request, error: Exception) -> JSONResponse:
        log.error("%s %s: MinIO error: %s", request.method, request.url.path, error)
        return _error(503, "object storage (MinIO) is unreachable or failed; try again later")

    async def gone(request: Request, _: Exception) -> Response:
        log.info("%s %s: the client disconnected before the answer", request.method,
                 request.url.path)
        return Response(status_code=499)  # nginx's word for it; nobody is there to read it

    async def internal(request: Request, error: Exception) -> JSONResponse:
        log.error("%s %s: internal error: %r", request.method, request.url.path, error,
                  exc_info=error)
        return _error(500, "internal error; the service's log has the details")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(ClientDisconnect, gone)
    app.add_exception_handler(redis.RedisError, redis_down)
    for error_type in STORAGE_ERRORS:
        app.add_exception_handler(error_type, storage_down)
    app.add_exception_handler(Exception, internal)


def __getattr__(name: str) -> FastAPI:
    """``rest.app:app``: the app of the environment's settings, built on first use (importing
    this module builds nothing, so ``create_app`` is free to be called with other settings)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    built = create_app()
    globals()["app"] = built
    return built
