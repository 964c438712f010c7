"""Per-client rate limit of separation requests, kept in Redis so it holds across replicas.

``RATE_LIMIT_PER_MIN`` separation requests per client in any moving minute (``0``: off);
a request past it is answered 429 with ``Retry-After``. Only ``POST /apiv1/separate`` is
limited: it is the request that costs a separation, and the other routes (status polls, track
downloads) cost little. Who a client is: ``rest.backend.client_of``.
"""

from __future__ import annotations

import math
import time

import redis
from fastapi import HTTPException
from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from separation.contract import Keys


class RateLimit:
    """A moving-window limit per client, counted in Redis."""

    def __init__(self, client: redis.Redis, per_min: int) -> None:
        self.item = RateLimitItemPerMinute(per_min, namespace="separate") if per_min else None
        storage = RedisStorage("redis://", connection_pool=client.connection_pool,
                               key_prefix=Keys.RATE_LIMIT_PREFIX)
        self.limiter = MovingWindowRateLimiter(storage)

    def check(self, who: str) -> None:
        """Count a request of ``who``; 429 with ``Retry-After`` when it is over the limit."""
        if self.item is None or self.limiter.hit(self.item, who):
            return
        reset_at = self.limiter.get_window_stats(self.item, who).reset_time
        retry_after_s = max(1, math.ceil(reset_at - time.time()))
        raise HTTPException(
            429, f"over the limit of {self.item.amount} separation requests a minute per client "
                 f"(RATE_LIMIT_PER_MIN); retry in {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)})

