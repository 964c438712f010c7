"""What every route needs: the settings, the Redis and MinIO clients, and who the caller is.

``API_TOKEN`` alone: one shared token guards the API, as before. ``API_KEYS``: each client has
a key of its own, ``API_TOKEN`` being one more (``default``), and owns what it sends
(``rest.owners``). Keys are compared in constant time, each against every key.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Annotated

import redis
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from minio import Minio

from common.clients import client_models, parse_api_keys
from common.connections import (
    connect_minio,
    connect_presigner,
    connect_redis,
    connect_redis_async,
)
from common.joins import Joins
from common.models import Registry
from common.queue import JobQueue
from common.retention import prepare_buckets
from common.settings import Settings
from common.status import StatusStore
from rest.callbacks import CallbackSender
from rest.fair_share import FairShare
from rest.links import link_client
from rest.owners import Owners
from rest.ratelimit import RateLimit


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
    callback_rate_limit: RateLimit
    fair_share: FairShare
    owners: Owners
    clients: dict[str, bytes]
    """SHA-256 of each client's key, by name: every key is compared at the same cost."""
    presigner: Minio | None
    """Presigns ``?redirect=1`` URLs as a read-only user; None: no user, no redirects."""
    models: Registry
    model_limits: dict[str, frozenset[str]]
    """The models each client of ``API_KEYS`` limited to some may use (``:models=a|b``)."""
    callbacks: CallbackSender = field(default_factory=CallbackSender)
    buckets_ready: bool = False

    @classmethod
    def connect(cls, settings: Settings) -> Backend:
        client, async_client = connect_redis(settings), connect_redis_async(settings)
        queue = JobQueue(client, async_client, high_burst=settings.high_burst,
                         route_batch=settings.queue_route_batch)
        status = StatusStore(client, settings.status_ttl_s, async_client)
        clients = {name: _digest(key) for name, key in
                   parse_api_keys(settings.api_keys, settings.api_token).items()}
        models, limits = Registry.load(settings), client_models(settings.api_keys)
        models.check_clients(limits)  # ValueError: the service does not start
        return cls(settings, client, connect_minio(settings), queue, status,
                   Joins(client, settings.status_ttl_s),
                   RateLimit(client, settings.rate_limit_per_min),
                   RateLimit(client, settings.rate_limit_per_min, "callback",
                             "callback requests"),
                   FairShare(client, settings),
                   Owners(client, async_client, status, queue, settings.status_ttl_s,
                          settings.client_max_waiting, settings.retention_days,
                          settings.mp3_bitrate_kbps),
                   clients, connect_presigner(settings), models, limits)

    @property
    def owned(self) -> bool:
        """Whether clients own what they send: ``API_KEYS`` is set."""
        return bool(self.settings.api_keys)

    def models_of(self, caller: str | None) -> frozenset[str] | None:
        """The models ``caller`` may use; None: every model of the registry."""
        return None if caller is None else self.model_limits.get(caller)

    def ensure_buckets(self) -> None:
        """Create the input and output buckets and set their expiry (``RETENTION_DAYS``) once;
        retried on the next upload if it fails."""
        if not self.buckets_ready:
            prepare_buckets(self.storage, self.settings)
            self.buckets_ready = True


def get_backend(request: Request) -> Backend:
    return request.app.state.backend


async def _backend(request: Request) -> Backend:
    """``get_backend`` as a dependency: async, so it costs no trip through the thread pool."""
    return get_backend(request)


BackendDep = Annotated[Backend, Depends(_backend)]


BEARER = HTTPBearer(auto_error=False, description="API_TOKEN, or the client's key of API_KEYS")
"""``Authorization: Bearer ...``: absent or of another scheme, None (the route then says why)."""


def bearer_token(request: Request,
                 credentials: HTTPAuthorizationCredentials | None = None) -> str:
    """The token of ``Authorization: Bearer ...``, else of ``?access_token=`` (RFC 6750).

    The query form is kept for clients that ask for it explicitly: a key in a URL ends up in
    browser history and access logs, so the page uses signed track links (``rest.links``).
    """
    if credentials is None:
        scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
        credentials = HTTPAuthorizationCredentials(scheme=scheme, credentials=token) \
            if scheme.lower() == "bearer" and token else None
    return credentials.credentials if credentials else \
        request.query_params.get("access_token", "")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def client_named(clients: dict[str, bytes], given: str) -> str | None:
    """The client whose key is ``given``: every key is compared, in constant time each."""
    digest = _digest(given)
    found = None
    for name, expected in clients.items():
        if hmac.compare_digest(digest, expected):
            found = name
    return found


async def require_token(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
) -> str | None:
    """401 unless no key is set or the request carries one, or a valid signed track link
    (``rest.links``); async: no thread needed.

    Returns the caller's name when clients own what they send (``API_KEYS``), else None.
    """
    backend = get_backend(request)
    if not backend.clients:
        return None
    given = bearer_token(request, credentials)
    name = client_named(backend.clients, given) if given else \
        link_client(request, backend.clients, backend.settings.track_link_ttl_s)
    if name is None:
        reason = "a valid API token is required: send 'Authorization: Bearer <API_TOKEN>' " \
                 "(or your API key)" if not given else "the API token is not valid"
        raise HTTPException(401, reason, headers={"WWW-Authenticate": "Bearer"})
    request.state.key_holder = name  # whose key signs the track links it is answered with
    return name if backend.owned else None


Caller = Annotated[str | None, Depends(require_token)]
"""The calling client when ``API_KEYS`` is set (what it may see is its own), else None."""


def client_of(request: Request) -> str:
    """Who sent ``request``, for the rate limit: its API token if it is a valid one, else its
    address.

    The token is hashed, so it never reaches Redis; one that names no client counts as the
    address (on routes that check no token, ``POST /``, a made-up token each time would
    otherwise be a new client each time). The address is the one uvicorn reports: the TCP
    peer, or the address in ``X-Forwarded-For`` only when the peer is a proxy listed in
    uvicorn's ``FORWARDED_ALLOW_IPS`` (default ``127.0.0.1``), so a client cannot choose its
    own identity.
    """
    clients = get_backend(request).clients
    token = bearer_token(request) if clients else ""
    if token and client_named(clients, token) is not None:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    return "addr:" + (request.client.host if request.client else "unknown")
