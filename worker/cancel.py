"""Cancels (queue protocol step 9): which of the jobs this worker holds a client cancelled,
and which it no longer holds.

A job's cancel key is its own, or its long song's for a chunk or a join. ``CancelWatch`` reads
the keys of the jobs being run every ``CANCEL_POLL_S`` from a thread of its own (one ``MGET``
for the batch), so a cancel stops Demucs within a poll and Demucs' own 0.25 s check. The same
poll reads the worker's processing list: a job that left it was redelivered to another worker
while this one was paused past its heartbeat, and is stopped like a cancelled one (``Worker.
settle`` then writes nothing about it).
"""

from __future__ import annotations

import logging
import threading

import redis

from common.contract import Job
from common.queue import JobQueue
from worker.errors import Cancelled, Redelivered
from worker.task import Task

log = logging.getLogger("worker")


def cancel_ids(job: Job) -> list[str]:
    """The ids whose cancel cancels ``job``: its own, and its long song's."""
    return [i for i in (job.id, job.chunk_of, job.join_of) if i]


class CancelWatch:
    def __init__(self, queue: JobQueue, poll_s: float, worker_id: str) -> None:
        self.queue = queue
        self.poll_s = poll_s
        self.worker_id = worker_id
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.watched: dict[str, list[str]] = {}  # task id -> its cancel ids
        self.tasks: list[Task] = []
        self.cancelled: set[str] = set()  # task ids to stop: cancelled, or no longer held
        self.lost: set[str] = set()  # task ids redelivered to another worker

    def start(self) -> None:
        threading.Thread(target=self._loop, name="cancel-watch", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()

    def requested(self, job: Job) -> bool:
        """Whether a cancel of ``job`` was asked (read now, from Redis)."""
        return bool(self.queue.cancels_requested(cancel_ids(job)))

    def watch(self, tasks: list[Task]) -> None:
        """Watch these tasks (a batch) from now on, instead of those before."""
        with self.lock:
            self.watched = {t.id: cancel_ids(t.job) for t in tasks if t.job is not None}
            self.tasks = list(tasks)
            self.cancelled, self.lost = set(), set()

    def is_cancelled(self, task: Task) -> bool:
        with self.lock:
            return task.id in self.cancelled

    def check(self, task: Task) -> None:
        """Raise ``Redelivered`` if ``task`` is no longer held, ``Cancelled`` if a cancel of it
        was seen."""
        with self.lock:
            if task.id in self.lost:
                raise Redelivered
            if task.id in self.cancelled:
                raise Cancelled

    def poll(self) -> None:
        with self.lock:
            watched, tasks = dict(self.watched), list(self.tasks)
        if not tasks:
            return
        ids = sorted({i for ids in watched.values() for i in ids})
        found = self.queue.cancels_requested(ids)
        held = set(self.queue.in_flight(self.worker_id))
        lost = {t.id for t in tasks if t.raw not in held and not t.settled}
        with self.lock:  # only for the batch still watched (``watch`` may have moved on)
            for task_id, ids in watched.items():
                if task_id not in self.watched:
                    continue
                if task_id in lost:
                    self.lost.add(task_id)
                if task_id in lost or found.intersection(ids):
                    self.cancelled.add(task_id)

    def _loop(self) -> None:
        while not self.stopped.wait(self.poll_s):
            try:
                self.poll()
            except redis.RedisError as error:
                log.warning("cannot read cancels: %s", error)


class Interrupt:
    """What stops one Demucs run: the worker's abort, or a cancel of one of its jobs."""

    def __init__(self, abort: threading.Event, watch: CancelWatch, tasks: list[Task]) -> None:
        self.abort = abort
        self.watch = watch
        self.tasks = tasks

    def is_set(self) -> bool:
        return self.abort.is_set() or any(self.watch.is_cancelled(t) for t in self.tasks)
