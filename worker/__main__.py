"""The worker's entry point: ``python -m worker [--burst]`` (or ``separation-worker``, or
``python worker/worker.py``, the image's and the lab's command).

``build_worker`` is the one place the worker's parts are made: the Redis and MinIO clients,
the queue, the status store, the model shelf, the Demucs ``Separator`` (its CLI is
``DEMUCS_COMMAND``: the tests run a stand-in) and the threads beside the loop. ``main`` reads
the settings, configures logging, builds the worker and runs it until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import uuid

import redis
from minio import Minio

from common.connections import connect_minio, connect_redis
from common.joins import Joins
from common.logs import configure_logging
from common.models import Registry
from common.queue import JobQueue
from common.settings import Settings
from common.status import StatusStore
from worker.cancel import CancelWatch
from worker.demucs.cli import cuda_present
from worker.demucs.separator import Separator
from worker.demucs.weights import Shelf
from worker.inputs import Inputs
from worker.long_songs.chunk_jobs import LongSongs
from worker.long_songs.chunking import check_geometry
from worker.output.tracks import Tracks
from worker.upkeep import Heartbeat, StopSignal
from worker.worker import Parts, Worker

log = logging.getLogger("worker")


def build_worker(settings: Settings, client: redis.Redis | None = None,
                 storage: Minio | None = None) -> Worker:
    """A worker and its parts, on ``settings``' Redis and MinIO unless clients are given.
    Raises ValueError when a setting or a model's weights cannot work."""
    check_geometry(settings)
    client = client or connect_redis(settings)
    storage = storage or connect_minio(settings)
    worker_id = f"{settings.host}-{uuid.uuid4().hex[:12]}"
    models = Shelf(Registry.load(settings))  # ValueError: the worker does not start
    queue = JobQueue(client, high_burst=settings.high_burst,
                     route_batch=settings.queue_route_batch)
    status = StatusStore(client, settings.status_ttl_s)
    stop = StopSignal(settings.shutdown_grace_s)
    cancels = CancelWatch(queue, settings.cancel_poll_s, worker_id)
    device = settings.demucs_device
    device = device if device != "auto" else "cuda" if cuda_present() else "cpu"
    parts = Parts(
        worker_id=worker_id, models=models, queue=queue, status=status, storage=storage,
        inputs=Inputs(settings, storage), tracks=Tracks(settings, storage),
        long_songs=LongSongs(settings, queue, status, storage),
        joins=Joins(client, settings.status_ttl_s), stop=stop,
        heartbeat=Heartbeat(queue, worker_id, settings.heartbeat_ttl_s, settings.work_dir),
        cancels=cancels,
        separator=Separator(settings, status, device, stop.abort, cancels, models),
        device=device)
    return Worker(settings, parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description="The separation "
                                     "worker; settings come from the environment "
                                     "(docs/configuration.md).")
    parser.add_argument("--burst", action="store_true",
                        help="return once the queue is empty (a Kubernetes Job, a cron run)")
    burst = parser.parse_args(argv).burst
    settings = Settings.from_env()
    log_client = connect_redis(settings, fail_fast=True)
    configure_logging(log_client, settings.host, "worker", settings.log_list_max,
                      settings.log_list_max_bytes)
    try:
        worker = build_worker(settings)
    except ValueError as error:  # a model's weights missing or not the registry's, ...
        log.error("worker cannot start: %s", error)
        return 2
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    return worker.run(burst=burst)


if __name__ == "__main__":
    sys.exit(main())
