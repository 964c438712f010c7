"""Clients for Redis and MinIO, built from Settings, with timeouts and bounded retries."""

from __future__ import annotations

import redis
import redis.asyncio
import urllib3
from minio import Minio
from minio.error import S3Error
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from common.settings import Settings

PRESIGN_REGION = "us-east-1"  # MinIO's default region
SPARE_CONNECTIONS = 4  # beyond REST_MAX_IN_FLIGHT: metrics, start-up, a worker's threads


def connect_redis(settings: Settings, fail_fast: bool = False) -> redis.Redis:
    """A Redis client whose socket timeout outlasts the queue's blocking poll.

    Its pool holds a connection per request the REST service serves at once
    (``REST_MAX_IN_FLIGHT``) plus a few for probes and metrics; past that a caller waits (5 s
    at most) rather than opening connections without bound.

    ``fail_fast``: one try, short timeouts, its own connection, so a log line or a health
    probe never waits on a Redis outage (redis-py 8 otherwise retries each command 10 times)
    nor behind the API's requests.
    """
    if fail_fast:
        return redis.Redis(host=settings.redis_host, port=settings.redis_port,
                           password=settings.redis_password, socket_timeout=1,
                           socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    pool = redis.BlockingConnectionPool(
        host=settings.redis_host, port=settings.redis_port, password=settings.redis_password,
        socket_timeout=settings.poll_s + 5, socket_connect_timeout=5, health_check_interval=30,
        max_connections=settings.rest_max_in_flight + SPARE_CONNECTIONS, timeout=5,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=1), 10))  # redis-py's default
    return redis.Redis(connection_pool=pool)


def connect_redis_async(settings: Settings) -> redis.asyncio.Redis:
    """``connect_redis``'s asyncio twin, for the REST routes that are polled most."""
    pool = redis.asyncio.BlockingConnectionPool(
        host=settings.redis_host, port=settings.redis_port, password=settings.redis_password,
        socket_timeout=5, socket_connect_timeout=5, health_check_interval=30,
        max_connections=settings.rest_max_in_flight + SPARE_CONNECTIONS, timeout=5,
        retry=AsyncRetry(ExponentialWithJitterBackoff(base=0.01, cap=1), 10))
    return redis.asyncio.Redis(connection_pool=pool)


def connect_minio(settings: Settings, probe: bool = False) -> Minio:
    """A MinIO client that gives up on a dead endpoint within seconds, not minutes.

    Its pool keeps a connection for each request served at once and each track being streamed
    (``REST_MAX_IN_FLIGHT`` of each: a streamed track holds one throughout), so none is opened
    and thrown away under load.
    ``probe``: one connection, no retries, short timeouts, for health checks.
    """
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=1, read=2) if probe else
        urllib3.Timeout(connect=5, read=120),
        retries=False if probe else urllib3.Retry(total=3, backoff_factor=0.5,
                                                  status_forcelist=(500, 502, 503, 504)),
        maxsize=1 if probe else 2 * settings.rest_max_in_flight + SPARE_CONNECTIONS,
    )
    return Minio(settings.minio_endpoint, access_key=settings.minio_access_key,
                 secret_key=settings.minio_secret_key, secure=settings.minio_secure,
                 http_client=http)


def connect_presigner(settings: Settings) -> Minio | None:
    """A MinIO client for presigning alone, as the read-only user ``MINIO_PRESIGN_ACCESS_KEY``
    at ``MINIO_PRESIGN_ENDPOINT``; None without that user (a presigned URL names its user, and
    the main one's access key is its secret too with MinIO's defaults). Its region is fixed
    (MinIO's default), so presigning never asks the server."""
    if not settings.minio_presign_access_key:
        return None
    return Minio(settings.minio_presign_endpoint or settings.minio_endpoint,
                 access_key=settings.minio_presign_access_key,
                 secret_key=settings.minio_presign_secret_key, secure=settings.minio_secure,
                 region=PRESIGN_REGION)


def ensure_bucket(client: Minio, bucket: str) -> None:
    """Create ``bucket`` unless it exists (another process may create it at the same time)."""
    if client.bucket_exists(bucket):
        return
    try:
        client.make_bucket(bucket)
    except S3Error as error:
        if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
