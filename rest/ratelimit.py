"""Per-client rate limits, kept in Redis so they hold across replicas.

``RATE_LIMIT_PER_MIN`` requests per client in any moving minute (``0``: off), counted apart
for each kind of request limited; a request past it is answered 429 with ``Retry-After``.
Limited: ``POST /apiv1/separate`` (it costs a separation) and ``POST /`` (the callback sink,
open to anyone, whose bodies are read); the other routes (status polls, track downloads) cost
little. Who a client is: ``rest.backend.client_of``.
"""

from __future__ import annotations

import math
import time

import redis
from fastapi import HTTPException
from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from common.contract import Keys


class RateLimit:
    """A moving-window limit per client on one kind of request (``what``), counted in Redis."""

    def __init__(self, client: redis.Redis, per_min: int, namespace: str = "separate",
                 what: str = "separation requests") -> None:
        self.what = what
        self.item = RateLimitItemPerMinute(per_min, namespace=namespace) if per_min else None
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
            429, f"over the limit of {self.item.amount} {self.what} a minute per client "
                 f"(RATE_LIMIT_PER_MIN); retry in {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)})

