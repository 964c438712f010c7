"""Clients for Redis and MinIO, built from Settings, with timeouts and bounded retries."""

from __future__ import annotations

import redis
import urllib3
from minio import Minio
from minio.error import S3Error
from redis.backoff import NoBackoff
from redis.retry import Retry

from separation.settings import Settings


def connect_redis(settings: Settings, for_logging: bool = False) -> redis.Redis:
    """A Redis client whose socket timeout outlasts the queue's blocking poll.

    ``for_logging``: one try, short timeouts, so a log line never waits on a Redis outage
    (redis-py 8 otherwise retries each command 10 times).
    """
    if for_logging:
        return redis.Redis(host=settings.redis_host, port=settings.redis_port,
                           password=settings.redis_password, socket_timeout=1,
                           socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    return redis.Redis(
        host=settings.redis_host, port=settings.redis_port, password=settings.redis_password,
        socket_timeout=settings.poll_s + 5, socket_connect_timeout=5, health_check_interval=30,
    )


def connect_minio(settings: Settings) -> Minio:
    """A MinIO client that gives up on a dead endpoint within seconds, not minutes."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=120),
        retries=urllib3.Retry(total=3, backoff_factor=0.5,
                              status_forcelist=(500, 502, 503, 504)),
        maxsize=10,
    )
    return Minio(settings.minio_endpoint, access_key=settings.minio_access_key,
                 secret_key=settings.minio_secret_key, secure=settings.minio_secure,
                 http_client=http)


def ensure_bucket(client: Minio, bucket: str) -> None:
    """Create ``bucket`` unless it exists (another process may create it at the same time)."""
    if client.bucket_exists(bucket):
        return
    try:
        client.make_bucket(bucket)
    except S3Error as error:
        if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
