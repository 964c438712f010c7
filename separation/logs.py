"""Logging to stderr and to the Redis list ``logging`` as ``<host>.<service>.<level>:<message>``.

Only entry points call ``configure_logging``; library modules use ``logging.getLogger``. The
Redis list gets the service's own lines only (loggers ``rest``, ``worker``, ``separation.*``):
a library's warnings (urllib3, uvicorn...) go to stderr, never one Redis push per request.
"""

from __future__ import annotations

import logging
import sys

import redis

from separation.contract import Keys

SERVICE_LOGGERS = frozenset({"rest", "worker", "separation"})


def from_the_service(record: logging.LogRecord) -> bool:
    """Whether a record comes from one of the service's own loggers."""
    return record.name.partition(".")[0] in SERVICE_LOGGERS


class RedisListHandler(logging.Handler):
    """LPUSH each record onto the ``logging`` list, capped with LTRIM to ``max_entries``.

    A Redis outage must never stop the service, so failures to log there are dropped.
    """

    def __init__(self, client: redis.Redis, host: str, service: str, max_entries: int) -> None:
        super().__init__()
        self.client = client
        self.prefix = f"{host}.{service}"
        self.max_entries = max_entries
        self.addFilter(from_the_service)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = f"{self.prefix}.{record.levelname.lower()}:{record.getMessage()}"
            with self.client.pipeline(transaction=False) as pipe:
                pipe.lpush(Keys.LOGGING, line)
                pipe.ltrim(Keys.LOGGING, 0, self.max_entries - 1)
                pipe.execute()
        except Exception:  # noqa: BLE001, S110  # logging must not raise into the service  # nosec B110
            pass


def configure_logging(client: redis.Redis, host: str, service: str, max_entries: int,
                      level: int = logging.INFO) -> None:
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter(
        f"%(asctime)s {host}.{service}.%(levelname)s %(name)s: %(message)s"))
    to_redis = RedisListHandler(client, host, service, max_entries)
    root = logging.getLogger()
    root.handlers[:] = [stderr, to_redis]
    root.setLevel(level)
    for noisy in ("urllib3", "botocore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
