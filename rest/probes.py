"""``/healthz``'s checks, apart from the API's work: own clients, own thread, one at a time.

Kubernetes probes must answer while the API is saturated. The checks (Redis ``PING``, MinIO
``bucket_exists``) run on clients of their own (one connection each, no retries, timeouts
of 1-2 s) in a thread of their own, never in the request thread pool; concurrent probes
share the check in progress, and a result is reused for ``FRESH_S``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import redis
from minio.error import MinioException
from urllib3.exceptions import HTTPError

from common.connections import connect_minio, connect_redis
from common.settings import Settings

FRESH_S = 1.0
STORAGE_ERRORS = (MinioException, HTTPError)


class HealthProbe:
    """Whether Redis and MinIO answer; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.queue_bucket
        self.redis = connect_redis(settings, fail_fast=True)
        self.storage = connect_minio(settings, probe=True)
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="probe")
        self.checked_at = -FRESH_S
        self.last: list[str] = []
        self.lock = threading.Lock()

    async def health_async(self) -> tuple[bool, str]:
        """``health`` for the API's own ``/healthz``: on the probe's thread, not the loop's."""
        return await asyncio.get_running_loop().run_in_executor(self.thread, self.health)

    def health(self) -> tuple[bool, str]:
        """Whether Redis and MinIO answer, and what is unreachable; checked at most once per
        ``FRESH_S``, concurrent callers waiting for the check in progress. The probe port's
        ``/healthz`` (``common.observability.serve``) calls it on its own threads."""
        with self.lock:
            if time.monotonic() - self.checked_at >= FRESH_S:
                self.last, self.checked_at = self.check(), time.monotonic()
            problems = self.last
        return (not problems, "; ".join(problems) or "ok")

    def check(self) -> list[str]:
        problems = []
        try:
            self.redis.ping()
        except redis.RedisError as error:
            problems.append(f"Redis unreachable: {error}")
        try:
            self.storage.bucket_exists(self.bucket)
        except STORAGE_ERRORS as error:
            problems.append(f"MinIO unreachable: {type(error).__name__}")
        return problems
