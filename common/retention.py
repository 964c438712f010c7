"""Retention: songs and tracks expire ``RETENTION_DAYS`` after they are written.

- ``prepare_bucket``: at start, the worker and the REST service create their buckets and set
  an S3 lifecycle rule (id ``demucs-retention``) expiring every object of them after
  ``RETENTION_DAYS`` days. MinIO and S3 both run it: an object goes at the first midnight UTC
  at least that many days after it was written (``expires_at``). Rules of other ids on the
  bucket are kept; ``RETENTION_DAYS=0`` removes the service's rule (objects are kept forever).
- Job records in Redis live ``STATUS_TTL_S``, by default a day past ``RETENTION_DAYS`` (the
  lifecycle's rounding to midnight): a record outlives its tracks, never the reverse, and while
  it is left it says when they expired.
- ``upload_needed``: a song's upload (``<songhash>.mp3`` in the input bucket) is removed with
  its tracks once no job of it is queued or running and none of its jobs' tracks, of any model
  or format, is still stored.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone

from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.error import S3Error
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

from common.connections import ensure_bucket
from common.contract import Status
from common.settings import Settings
from common.status import StatusStore

log = logging.getLogger(__name__)
RULE_ID = "demucs-retention"
DAY_S = 24 * 3600
MISSING_OBJECT = ("NoSuchKey", "NoSuchObject", "NoSuchBucket")
REFUSED = ("AccessDenied", "NotImplemented", "MethodNotAllowed")


def prepare_buckets(client: Minio, settings: Settings) -> None:
    """The service's input and output buckets, each with its expiry rule (``prepare_bucket``)."""
    for bucket in (settings.queue_bucket, settings.output_bucket):
        prepare_bucket(client, bucket, settings.retention_days)


def prepare_bucket(client: Minio, bucket: str, retention_days: int) -> None:
    """Create ``bucket`` unless it exists and set (or, with 0 days, remove) its expiry rule.

    A server that refuses lifecycle rules (no permission) is logged, not fatal: the service
    runs, and its objects are kept until removed.
    """
    ensure_bucket(client, bucket)
    try:
        set_expiry(client, bucket, retention_days)
    except S3Error as error:
        if error.code not in REFUSED:
            raise
        log.error("bucket %s: the storage refused its lifecycle rule (%s): objects will not "
                  "expire after RETENTION_DAYS=%d", bucket, error.code, retention_days)


def set_expiry(client: Minio, bucket: str, retention_days: int) -> None:
    """Make the service's rule on ``bucket`` expire objects after ``retention_days`` (0: none),
    keeping every other rule."""
    current = client.get_bucket_lifecycle(bucket)
    others = [rule for rule in (current.rules if current else []) if rule.rule_id != RULE_ID]
    ours = [Rule(ENABLED, rule_filter=Filter(prefix=""), rule_id=RULE_ID,
                 expiration=Expiration(days=retention_days))] if retention_days > 0 else []
    if current is not None and [r for r in current.rules if r.rule_id == RULE_ID] == ours:
        return
    if others or ours:
        client.set_bucket_lifecycle(bucket, LifecycleConfig([*others, *ours]))
        log.info("bucket %s: objects expire after %d days (lifecycle rule %s)", bucket,
                 retention_days, RULE_ID)
    elif current is not None:
        client.delete_bucket_lifecycle(bucket)
        log.info("bucket %s: lifecycle rule %s removed (RETENTION_DAYS=0)", bucket, RULE_ID)


def expires_at(written_at: float, retention_days: int) -> float | None:
    """When an object written at ``written_at`` (epoch s) expires, as S3 and MinIO compute it:
    ``retention_days`` later, rounded up to the next midnight UTC. None: kept forever."""
    if retention_days <= 0:
        return None
    return float((math.floor(written_at / DAY_S) + retention_days + 1) * DAY_S)


def iso_utc(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def upload_needed(status: StatusStore, storage: Minio, output_bucket: str,
                  songhash: str) -> str | None:
    """Why a song's upload is still needed (a job of it queued or running, or a track of it
    still stored), or None when it may go."""
    tracks: set[str] = set()
    for record in status.song_records(songhash):
        if record.get("state") in (Status.QUEUED.value, Status.RUNNING.value):
            return f"job {record['id']} of the song is {record['state']}"
        if record.get("state") == Status.DONE.value:
            tracks.update(record["tracks"].values())
    for key in sorted(tracks):
        try:
            storage.stat_object(output_bucket, key)
        except S3Error as error:
            if error.code in MISSING_OBJECT:
                continue
            raise
        return f"track {key} of the song is still stored"
    return None
