"""What every route needs: the settings, the Redis and MinIO clients, and the API token check."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Annotated

import redis
from fastapi import Depends, HTTPException, Request
from minio import Minio

from rest.callbacks import CallbackSender
from rest.ratelimit import RateLimit
from separation.connections import (
    connect_minio,
    connect_redis,
    connect_redis_async,
    ensure_bucket,
)
from separation.joins import Joins
from separation.queue import JobQueue
from separation.settings import Settings
from separation.status import StatusStore


@dataclass
class Backend:
    """The service's clients, built once from the settings and kept in ``app.state``."""

    settings: Settings
    redis: redis.Redis
    storage: Minio
    queue: JobQueue
    status: StatusStore
    joins: Joins
    rate_limit: RateLimit
    callbacks: CallbackSender = field(default_factory=CallbackSender)
    buckets_ready: bool = False

    @classmethod
    def connect(cls, settings: Settings) -> Backend:
        client, async_client = connect_redis(settings), connect_redis_async(settings)
        queue = JobQueue(client, async_client, high_burst=settings.high_burst,
                         route_batch=settings.queue_route_batch)
        return cls(settings, client, connect_minio(settings), queue,
                   StatusStore(client, settings.status_ttl_s, async_client),
                   Joins(client, settings.status_ttl_s),
                   RateLimit(client, settings.rate_limit_per_min))

    def ensure_buckets(self) -> None:
        """Create the input and output buckets once; retried on the next upload if it fails."""
        if not self.buckets_ready:
            for bucket in (self.settings.queue_bucket, self.settings.output_bucket):
                ensure_bucket(self.storage, bucket)
            self.buckets_ready = True


def get_backend(request: Request) -> Backend:
    return request.app.state.backend


async def _backend(request: Request) -> Backend:
    """``get_backend`` as a dependency: async, so it costs no trip through the thread pool."""
    return get_backend(request)


BackendDep = Annotated[Backend, Depends(_backend)]


def bearer_token(request: Request) -> str:
    """The token of ``Authorization: Bearer ...``, else of ``?access_token=`` (RFC 6750).

    The query form exists for ``<audio src>`` and download links, which cannot send headers.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.query_params.get("access_token", "")


async def require_token(request: Request) -> None:
    """401 unless ``API_TOKEN`` is unset or the request carries it (async: no thread needed)."""
    expected = get_backend(request).settings.api_token
    if not expected:
        return
    given = bearer_token(request)
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        reason = "a valid API token is required: send 'Authorization: Bearer <API_TOKEN>'" \
            if not given else "the API token is not valid"
        raise HTTPException(401, reason, headers={"WWW-Authenticate": "Bearer"})


def client_of(request: Request) -> str:
    """Who sent ``request``, for the rate limit: its API token, else its address.

    The token is hashed, so it never reaches Redis. The address is the one uvicorn reports:
    the TCP peer, or the address in ``X-Forwarded-For`` only when the peer is a proxy listed in
    uvicorn's ``FORWARDED_ALLOW_IPS`` (default ``127.0.0.1``), so a client cannot choose its
    own identity.
    """
    token = bearer_token(request) if get_backend(request).settings.api_token else ""
    if token:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    return "addr:" + (request.client.host if request.client else "unknown")
