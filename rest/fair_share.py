"""A fair share for every client: who may jump the queue, how much separation a client may ask
for, and the figures it can read back (``GET /apiv1/usage``).

- ``priority: high``: with ``API_KEYS``, only the clients ``PRIORITY_CLIENTS`` names; another
  client's is answered 403 (never run as normal behind its back). Without ``API_KEYS`` anyone
  may, as before.
- ``QUOTA_AUDIO_S_PER_DAY``: the seconds of audio (counted from the MP3's frames, rounded up) a
  client's new jobs may hold in a day, a fixed window from its first job in it.
- ``QUOTA_STORED_MB``: the megabytes of results a client's new jobs may leave stored, over
  ``RETENTION_DAYS`` (365 days when results are kept forever): the input plus each track, as
  its format makes it (MP3 at its bitrate; WAV and FLAC as 44.1 kHz stereo PCM at their bit
  depth, an upper bound for FLAC), rounded up to whole MB.

Both count only a job that is queued: a request answered with a song already separated, or
joined to a job already queued, costs no separation and is not charged. Past a quota, 429 with
the reason and ``Retry-After``. ``0`` turns a quota off; the figures are metered all the same.
A client is its API key's name with ``API_KEYS``, else ``rest.backend.client_of``'s identity
(its token, or its address). The counters are the ``limits`` library's fixed windows in Redis
(one key per client and quota); the jobs by state are read from the client's latest
``USAGE_JOBS_MAX`` jobs (``Keys.client_jobs``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import redis
from fastapi import HTTPException
from limits import RateLimitItem, RateLimitItemPerDay
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter

from common.contract import Keys, Status
from common.formats import Encoding
from common.settings import Settings

USAGE_JOBS_MAX = 1000
"""The latest jobs of a client whose states ``GET /apiv1/usage`` counts."""
METER_ONLY = 2**53
"""The amount of a quota that is off: counted, never reached."""
SAMPLE_RATE_HZ = 44100
CHANNELS = 2
MB = 2**20


def stored_bytes(duration_s: float, input_bytes: int, tracks: tuple[str, ...],
                 encoding: Encoding) -> int:
    """What a job leaves stored: its input, and each track it makes in ``encoding``."""
    if encoding.format == "mp3":
        per_s = encoding.bitrate_kbps * 1000 / 8
    else:
        per_s = SAMPLE_RATE_HZ * CHANNELS * encoding.bit_depth / 8
    made = [track for track in tracks if track != "original"]  # the input itself
    return input_bytes + math.ceil(len(made) * per_s * duration_s)


class FairShare:
    """Priority rights, quotas and usage figures of the clients (see the module's docstring)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.ttl_s = settings.status_ttl_s
        self.priority_clients = frozenset(
            name.strip() for name in (settings.priority_clients or "").split(",") if name.strip())
        self.owned = bool(settings.api_keys)
        kept_days = settings.retention_days or 365
        self.audio = _Quota("audio-s", settings.quota_audio_s_per_day, 1,
                            "QUOTA_AUDIO_S_PER_DAY", "seconds of audio a day")
        self.stored = _Quota("stored-mb", settings.quota_stored_mb, kept_days,
                             "QUOTA_STORED_MB", f"MB of results kept ({kept_days} days)")
        storage = RedisStorage("redis://", connection_pool=client.connection_pool,
                               key_prefix=Keys.RATE_LIMIT_PREFIX)
        self.limiter = FixedWindowRateLimiter(storage)

    def check_priority(self, caller: str | None, priority: str | None) -> None:
        """403 for ``priority: high`` from a client of API_KEYS not in PRIORITY_CLIENTS."""
        if priority == "high" and self.owned and caller not in self.priority_clients:
            raise HTTPException(
                403, "priority 'high' is for the clients PRIORITY_CLIENTS names, and yours is "
                     "not one; send the song without it (priority 'normal')")

    def charge(self, client: str, duration_s: float, stored: int) -> None:
        """Count a new job's audio seconds and stored MB; 429 (nothing counted) past a quota."""
        costs = ((self.audio, math.ceil(duration_s)), (self.stored, math.ceil(stored / MB)))
        for quota, cost in costs:
            if not self.limiter.test(quota.item, client, cost=cost):
                raise self._over(quota, client, cost)
        for quota, cost in costs:
            self.limiter.hit(quota.item, client, cost=cost)

    def _over(self, quota: _Quota, client: str, cost: int) -> HTTPException:
        stats = self.limiter.get_window_stats(quota.item, client)
        retry_after_s = max(1, math.ceil(stats.reset_time - time.time()))
        return HTTPException(
            429, f"over your quota of {quota.item.amount} {quota.what} ({quota.setting}): "
                 f"{quota.item.amount - stats.remaining} used, this song needs {cost}; "
                 f"retry in {retry_after_s} s, or send a shorter song or fewer tracks",
            headers={"Retry-After": str(retry_after_s)})

    def record_job(self, client: str, job_id: str) -> None:
        """Remember the job a request of ``client`` was answered with (its latest ones only)."""
        key = Keys.client_jobs(client)
        with self.redis.pipeline() as pipe:
            pipe.zadd(key, {job_id: time.time()})
            pipe.zremrangebyrank(key, 0, -USAGE_JOBS_MAX - 1)
            pipe.expire(key, self.ttl_s)
            pipe.execute()

    def usage(self, client: str, shown_as: str) -> dict[str, Any]:
        """The client's figures: quotas used and their windows, its latest jobs by state."""
        return {"client": shown_as, "audio_s": self._used(self.audio, client),
                "stored_mb": self._used(self.stored, client), "jobs": self._jobs(client)}

    def _used(self, quota: _Quota, client: str) -> dict[str, Any]:
        stats = self.limiter.get_window_stats(quota.item, client)
        used = quota.item.amount - stats.remaining
        return {"used": used, "limit": quota.limit,
                "resets_at": round(stats.reset_time) if used else None}

    def _jobs(self, client: str) -> dict[str, int]:
        ids = self.redis.zrange(Keys.client_jobs(client), 0, -1)
        with self.redis.pipeline() as pipe:
            for job_id in ids:
                pipe.hmget(Keys.job(job_id.decode()), "state", "runs_as")
            records = pipe.execute()
        with self.redis.pipeline() as pipe:
            for _, runs_as in records:
                if runs_as:  # a client's view of another's job: that job's state
                    pipe.hget(Keys.job(runs_as.decode()), "state")
            run_states = iter(pipe.execute())
        states = []
        for state, runs_as in records:  # as ``owners.shown`` tells the view's status
            if runs_as:
                run_state = next(run_states) or Status.FAILED.value.encode()  # run expired
                states.append(state if state == Status.CANCELLED.value.encode() else run_state)
            elif state:
                states.append(state)
        return dict(sorted(Counter(s.decode() for s in states).items()))


class _Quota:
    """One quota: its ``limits`` item (METER_ONLY when off), its setting and unit."""

    def __init__(self, namespace: str, limit: int, days: int, setting: str, what: str) -> None:
        self.limit = limit or None
        self.item: RateLimitItem = RateLimitItemPerDay(limit or METER_ONLY, days,
                                                       namespace=namespace)
        self.setting = setting
        self.what = what
