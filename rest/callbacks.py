"""The REST service's own webhooks, posted off the threads that serve requests.

A song already separated is answered at once; its callback is posted by a few threads of its
own (``THREADS``) with a bounded backlog (``BACKLOG``). Past that a delivery is dropped with a
log line, so receivers that stall hold neither the request-serving threads nor memory. Each
delivery keeps ``WEBHOOK_TIMEOUT_S`` as its whole deadline (``common.webhook``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger("rest")
THREADS = 4
BACKLOG = 64


class CallbackSender:
    """A bounded pool for webhook deliveries: at most ``THREADS + BACKLOG`` pending."""

    def __init__(self, threads: int = THREADS, backlog: int = BACKLOG) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="rest-webhook")
        self.slots = threading.BoundedSemaphore(threads + backlog)
        self.capacity = threads + backlog

    def submit(self, deliver: Callable[..., Any], *args: Any) -> bool:
        """Queue ``deliver(*args)``; False (and a log line) when the backlog is full."""
        if not self.slots.acquire(blocking=False):
            log.warning("webhook dropped: %d deliveries already pending (receivers stalled?)",
                        self.capacity)
            return False
        future = self.pool.submit(deliver, *args)
        future.add_done_callback(self._release)
        return True

    def _release(self, _: Future[Any]) -> None:
        self.slots.release()

    def close(self) -> None:
        """Drop what has not started; running deliveries end by their own deadline."""
        self.pool.shutdown(wait=False, cancel_futures=True)
