"""What a worker does besides jobs: wait for its services, beat its heart, answer probes, and
stop when told."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from common.queue import JobQueue
from worker.metrics import record_queue_depths
from worker.work_dirs import remove_dead_workers_dirs

log = logging.getLogger("worker")


def until_up(stopping: threading.Event, what: str, attempt: Callable[[], None],
             failures: tuple[type[BaseException], ...]) -> None:
    """Call ``attempt`` until it raises none of ``failures`` or a stop is asked, backing off
    from 0.5 s to 30 s."""
    delay_s = 0.5
    while not stopping.is_set():
        try:
            attempt()
            return
        except failures as error:
            log.warning("%s unreachable (%s); retrying in %.1f s", what, error, delay_s)
            stopping.wait(delay_s)
            delay_s = min(delay_s * 2, 30)


class Heartbeat:
    """Queue protocol steps 3 and 4 from a background thread: record this worker as alive,
    redeliver the jobs of dead ones, remove the temp dirs they left in ``work_dir``, and
    refresh the queue depth gauge."""

    def __init__(self, queue: JobQueue, worker_id: str, ttl_s: float,
                 work_dir: str | None = None) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self.work_dir = work_dir
        self.stopped = threading.Event()
        self.last_beat = 0.0

    def start(self) -> None:
        self.beat()
        threading.Thread(target=self._loop, name="heartbeat", daemon=True).start()

    def beat(self) -> None:
        self.queue.beat(self.worker_id, self.ttl_s)
        self.last_beat = time.monotonic()

    def stop(self) -> None:
        self.stopped.set()

    def _loop(self) -> None:
        while not self.stopped.wait(self.ttl_s / 3):
            try:
                self.beat()
                for raw in self.queue.redeliver_dead():
                    log.warning("redelivered a job of a dead worker: %.120r", raw)
                remove_dead_workers_dirs(self.work_dir, self.queue)
                record_queue_depths(self.queue.depths())
            except redis.RedisError as error:
                log.warning("heartbeat failed: %s", error)

    def health(self) -> tuple[bool, str]:
        """``/healthz``: the heart beats and Redis answers."""
        age_s = time.monotonic() - self.last_beat
        if age_s > self.ttl_s:
            return False, f"last heartbeat {age_s:.0f} s ago"
        try:
            self.queue.ping()
        except redis.RedisError as error:
            return False, f"Redis unreachable: {error}"
        return True, "ok"


class StopSignal:
    """The handler of SIGTERM and SIGINT. The first one stops taking jobs and gives the current
    batch ``grace_s`` to finish; past it, or at a second signal, ``abort`` is set: Demucs is
    killed and the batch goes back onto the queue."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.stopping = threading.Event()
        self.abort = threading.Event()

    def __call__(self, signum: int, _frame: object) -> None:
        if self.stopping.is_set():
            log.warning("second signal %d: aborting the current job now", signum)
            self.abort.set()
            return
        log.info("signal %d: finishing the current job within %.0f s, taking no more", signum,
                 self.grace_s)
        self.stopping.set()
        timer = threading.Timer(self.grace_s, self.abort.set)
        timer.daemon = True
        timer.start()
