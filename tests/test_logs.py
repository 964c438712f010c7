"""Log lines: client strings escaped and capped; only the service's own lines reach Redis."""

from __future__ import annotations

import logging

from common.contract import Keys
from common.logs import LOG_ENTRY_MAX_BYTES, EscapingFormatter, RedisListHandler, cap, escape


def test_escape_puts_every_control_character_on_one_line():
    assert escape("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert escape("\x1b[31mred\x00\x7f") == "\\x1b[31mred\\x00\\x7f"
    assert escape("line\u2028sep\u0085") == "line\\u2028sep\\x85"
    assert escape("plain é ✓") == "plain é ✓"


def test_cap_cuts_to_the_byte_limit_and_says_so():
    assert cap("short") == "short"
    for text in ("x" * 20_000, "é" * 20_000, "✓" * 9000):
        capped = cap(text)
        assert len(capped.encode()) <= LOG_ENTRY_MAX_BYTES
        assert capped.endswith(f"…[truncated {len(text.encode())} bytes]")


def test_stderr_formatter_escapes_the_message_but_keeps_a_traceback():
    formatter = EscapingFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "callback %s", ("a\nFAKE",), None)
    assert formatter.format(record) == "INFO callback a\\nFAKE"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "x\ny", (), sys.exc_info())
    lines = formatter.format(record).splitlines()
    assert lines[0] == "ERROR x\\ny" and lines[1].startswith("Traceback")



def test_only_the_services_own_lines_reach_the_redis_list(stack):
    handler = RedisListHandler(stack.redis, "host", "rest", max_entries=100, max_bytes=1 << 20)
    for name in ("rest", "worker", "common.webhook", "urllib3.connectionpool",
                 "uvicorn.error", "restless"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        try:
            logger.warning("line from %s", name)
        finally:
            logger.removeHandler(handler)
    lines = sorted(line.decode() for line in stack.redis.lrange(Keys.LOGGING, 0, -1))
    assert lines == ["host.rest.warning:line from common.webhook",
                     "host.rest.warning:line from rest",
                     "host.rest.warning:line from worker"]
