"""Waiting on a condition, never on a fixed sleep: shared by the tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float = 10.0,
               message: Callable[[], str] | None = None) -> T:
    """Poll ``condition`` until it returns something truthy; return that. ``message`` says
    what was seen when it never did."""
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, \
            f"condition not met in {timeout_s} s" + (f": {message()}" if message else "")
        time.sleep(0.02)
    return result
