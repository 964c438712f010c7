"""Logging to stderr and to the Redis list ``logging`` as ``<host>.<service>.<level>:<message>``.

Every message is escaped before it is written anywhere: line breaks and other control
characters become ``\\n``, ``\\x1b``..., so a client's string can never forge a log line.
An entry of ``logging`` is at most ``LOG_ENTRY_MAX_BYTES`` (the rest cut, marked
``…[truncated N bytes]``), and the list is bounded both in entries (``LOG_LIST_MAX``) and in
bytes (``LOG_LIST_MAX_BYTES``): its bytes are counted in ``logging:bytes`` as entries come and
go, and the oldest entries are dropped past either bound.

Only entry points call ``configure_logging``; library modules use ``logging.getLogger``. The
Redis list gets the service's own lines only (loggers ``rest``, ``worker``, ``separation.*``):
a library's warnings (urllib3, uvicorn...) go to stderr, never one Redis push per request.
"""

from __future__ import annotations

import logging
import re
import sys

import redis

from common.contract import Keys

LOG_ENTRY_MAX_BYTES = 8192
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# KEYS: the list, its byte count; ARGV: entry, max entries, max bytes
_PUSH = """
local length = redis.call('LPUSH', KEYS[1], ARGV[1])
local bytes
if length == 1 then
  bytes = #ARGV[1]
  redis.call('SET', KEYS[2], bytes)
else
  bytes = redis.call('INCRBY', KEYS[2], #ARGV[1])
end
while length > 1 and (length > tonumber(ARGV[2]) or bytes > tonumber(ARGV[3])) do
  local oldest = redis.call('RPOP', KEYS[1])
  bytes = redis.call('DECRBY', KEYS[2], #oldest)
  length = length - 1
end
return bytes
"""


def escape(text: str) -> str:
    """``text`` on one line: control characters written as escapes."""
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char in _ESCAPES:
        return _ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}"


def cap(line: str, max_bytes: int = LOG_ENTRY_MAX_BYTES) -> str:
    """``line`` cut to at most ``max_bytes`` of UTF-8, marked as truncated when cut."""
    data = line.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return line
    mark = f"…[truncated {len(data)} bytes]"
    keep = max_bytes - len(mark.encode())
    return data[:keep].decode("utf-8", "ignore") + mark


class EscapingFormatter(logging.Formatter):
    """A formatter whose message part is escaped onto one line (a traceback follows as is)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape(record.message)
        return super().formatMessage(record)


SERVICE_LOGGERS = frozenset({"rest", "worker", "common"})


def from_the_service(record: logging.LogRecord) -> bool:
    """Whether a record comes from one of the service's own loggers."""
    return record.name.partition(".")[0] in SERVICE_LOGGERS


class RedisListHandler(logging.Handler):
    """LPUSH each record, escaped and capped, onto ``logging``, bounded in entries and bytes.

    A Redis outage must never stop the service, so failures to log there are dropped.
    """

    def __init__(self, client: redis.Redis, host: str, service: str, max_entries: int,
                 max_bytes: int) -> None:
        super().__init__()
        self.prefix = f"{host}.{service}"
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._push = client.register_script(_PUSH)
        self.addFilter(from_the_service)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = cap(f"{self.prefix}.{record.levelname.lower()}:{escape(record.getMessage())}")
            self._push(keys=[Keys.LOGGING, Keys.LOGGING_BYTES],
                       args=[line, self.max_entries, self.max_bytes])
        except Exception:  # noqa: BLE001, S110  # logging must not raise into the service  # nosec B110
            pass


def configure_logging(client: redis.Redis, host: str, service: str, max_entries: int,
                      max_bytes: int, level: int = logging.INFO) -> None:
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(EscapingFormatter(
        f"%(asctime)s {host}.{service}.%(levelname)s %(name)s: %(message)s"))
    to_redis = RedisListHandler(client, host, service, max_entries, max_bytes)
    root = logging.getLogger()
    root.handlers[:] = [stderr, to_redis]
    root.setLevel(level)
    for noisy in ("urllib3", "botocore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
