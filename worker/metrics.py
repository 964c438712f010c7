"""The worker's Prometheus metrics, served on ``METRICS_PORT`` (``common.observability``)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

JOBS = Counter("demucs_jobs_total", "Jobs finished, by outcome and failure reason",
               ["outcome", "reason"])
JOB_SECONDS = Histogram("demucs_job_duration_seconds", "Time from take to outcome",
                        buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 2400, 3600))
STAGE_SECONDS = Histogram("demucs_stage_duration_seconds", "Time per pipeline stage",
                          ["stage"], buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1200))
QUEUE_DEPTH = Gauge("demucs_queue_depth", "Jobs waiting, by lane: intake (pushed, not yet "
                    "routed), chunks (of long songs under way), high, normal", ["lane"])
IN_FLIGHT = Gauge("demucs_jobs_in_flight", "Jobs this worker is running")


def record_queue_depths(depths: Mapping[str, int]) -> None:
    """Set ``demucs_queue_depth`` for each lane (``JobQueue.depths``); its sum is the queue."""
    for lane, jobs in depths.items():
        QUEUE_DEPTH.labels(lane).set(jobs)
