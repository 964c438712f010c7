"""What reaches the Redis ``logging`` list, against a real redis-server."""

from __future__ import annotations

import logging

from separation.contract import Keys
from separation.logs import RedisListHandler


def test_only_the_services_own_lines_reach_the_redis_list(stack):
    handler = RedisListHandler(stack.redis, "host", "rest", max_entries=100)
    for name in ("rest", "worker", "separation.webhook", "urllib3.connectionpool",
                 "uvicorn.error", "restless"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        try:
            logger.warning("line from %s", name)
        finally:
            logger.removeHandler(handler)
    lines = sorted(line.decode() for line in stack.redis.lrange(Keys.LOGGING, 0, -1))
    assert lines == ["host.rest.warning:line from rest",
                     "host.rest.warning:line from separation.webhook",
                     "host.rest.warning:line from worker"]
