"""Temp dirs a killed worker left behind are removed by the live ones, never a live worker's
(real redis-server; the dirs are made by the worker's own function)."""

from __future__ import annotations

from pathlib import Path

from common.queue import JobQueue
from tests.waiting import wait_until
from worker.work_dirs import make_batch_dir, remove_dead_workers_dirs


def test_only_dead_workers_dirs_are_removed(stack, tmp_path):
    queue = JobQueue(stack.redis)
    queue.beat("live-worker", 60)
    queue.beat("dead-worker", 0.05)
    live = make_batch_dir(str(tmp_path), "live-worker")
    dead = make_batch_dir(str(tmp_path), "dead-worker")
    gone = make_batch_dir(str(tmp_path), "never-registered.example-1")
    (Path(dead.name) / "j0").mkdir()  # a job's files inside
    unmarked = tmp_path / "demucs-batch-not-ours"
    unmarked.mkdir()
    wait_until(lambda: not queue.alive("dead-worker"))
    removed = remove_dead_workers_dirs(str(tmp_path), queue)
    assert sorted(removed) == sorted([Path(dead.name), Path(gone.name)])
    assert Path(live.name).is_dir() and unmarked.is_dir()
    assert not Path(dead.name).exists() and not Path(gone.name).exists()
    live.cleanup()
