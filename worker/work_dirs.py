"""A batch's temp dir, marked with the worker that made it, and the clean-up of the dirs that
dead workers left behind.

A worker killed mid-batch (SIGKILL, an OOM kill) cannot remove its ``demucs-batch-*`` dir.
Each dir holds a marker naming its worker; with every heartbeat a worker removes every marked
dir of ``WORK_DIR`` whose worker is no longer alive in the queue's registry
(``JobQueue.alive``), never another live worker's (several workers may share a
``WORK_DIR``). A dir without a marker is not this service's to remove.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path

from common.queue import JobQueue

log = logging.getLogger("worker")
PREFIX = "demucs-batch-"
MARKER = ".worker"
WORKER_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,300}")


def make_batch_dir(parent: str | None, worker_id: str) -> tempfile.TemporaryDirectory[str]:
    """A batch's temp dir, marked with its worker (OSError: it cannot be made)."""
    batch_dir = tempfile.TemporaryDirectory(prefix=PREFIX, dir=parent)
    try:
        (Path(batch_dir.name) / MARKER).write_text(worker_id)
    except OSError:
        batch_dir.cleanup()
        raise
    return batch_dir


def remove_dead_workers_dirs(parent: str | None, queue: JobQueue) -> list[Path]:
    """Remove the batch dirs of workers no longer alive; return them."""
    removed = []
    for path in Path(parent or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            owner = (path / MARKER).read_text()[:200]
        except OSError:
            continue
        if WORKER_ID_RE.fullmatch(owner) and not queue.alive(owner):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("removed %d temp dir(s) left by dead workers", len(removed))
    return removed
