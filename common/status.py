"""Job status records in Redis: one hash per job, written by the worker, read by REST.

A record holds ``id state songhash name model stage progress attempts worker error tracks
created_at started_at finished_at updated_at elapsed_s``; ``tracks`` is a JSON object
``{track: object key}``; ``format`` with ``bitrate`` or ``bit_depth`` says how they are encoded,
``expires_at`` when they expire (``common.retention``). Every write refreshes the record's
TTL (``STATUS_TTL_S``). Index keys, ``song:<songhash>`` and ``song:<songhash>:<model>`` (with
``:as:<variant>`` for an encoding other than the default), point at a song's latest job; the
set ``songjobs:<songhash>`` holds all of a song's jobs.
``JobQueue`` adds ``queue_lane``, ``queue_position`` and ``queue_taken`` to a queued job's
hash (its place in line); ``get`` leaves them out of the record.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
import redis.asyncio

from common.contract import SONGHASH_RE, Keys, Status
from common.numbers import ascii_int_or_none

FINAL_STATES = tuple(s.value for s in Status if s.final)
_FINAL_LUA = "local FINAL = {" + ", ".join(f"['{s}'] = true" for s in FINAL_STATES) + "}\n"

# Count an attempt, unless the job already ended (0: a job id's final state is final, whoever
# takes its payload again); a job without a record starts at 1.
_START_ATTEMPT = _FINAL_LUA + """
local state = redis.call('HGET', KEYS[1], 'state')
if state and FINAL[state] then return 0 end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'state', 'running', 'worker', ARGV[2],
           'started_at', ARGV[3], 'updated_at', ARGV[3], 'progress', 0, 'stage', 'taken',
           'finished_at', '')
redis.call('EXPIRE', KEYS[1], ARGV[4])
return attempts
"""


# Write fields (ARGV[3..]: name, value, ...) and refresh the TTL (ARGV[1]). ARGV[2] says
# whether the write moves the job along: '' no, '-' its stage or progress, else the state it
# sets. Once the job's state is final a move changes nothing: a late worker cannot turn a done
# job back into running, queued or failed. Answers 1 when it wrote, 2 when the job already
# ended in the very state this write sets, 0 when it refused.
_WRITE = _FINAL_LUA + """
if ARGV[2] ~= '' then
  local state = redis.call('HGET', KEYS[1], 'state')
  if state and FINAL[state] then
    if state == ARGV[2] then return 2 end
    return 0
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
MOVES = frozenset({"state", "stage", "progress"})
"""Fields whose write moves a job along: refused once its state is final."""

QUEUE_FIELDS = ("queue_lane", "queue_position", "queue_taken")
"""Written by ``JobQueue`` to compute a waiting job's position; not part of the record."""


class StatusStore:
    """Reads and writes job status records."""

    def __init__(self, client: redis.Redis, ttl_s: int,
                 async_client: redis.asyncio.Redis | None = None) -> None:
        self.redis = client
        self.async_redis = async_client
        self.ttl_s = ttl_s
        self._start_attempt = client.register_script(_START_ATTEMPT)
        self._write_script = client.register_script(_WRITE)

    def _write(self, job_id: str, **fields: Any) -> bool:
        """Write fields of a job's record. False when it would move an ended job (nothing is
        written); True, without writing, when it sets the final state the job already has."""
        moves = _encode(fields["state"]) if "state" in fields else \
            "-" if MOVES.intersection(fields) else ""
        fields["updated_at"] = time.time()
        pairs = [item for name, value in fields.items() for item in (name, _encode(value))]
        return bool(self._write_script(keys=[Keys.job(job_id)], args=[self.ttl_s, moves, *pairs]))

    def announce(self, job_id: str) -> bool:
        """Whether the caller is the one to send the job's final webhook: the first to ask."""
        return bool(self.redis.set(Keys.announced(job_id), 1, nx=True, ex=self.ttl_s))

    def queued(self, job_id: str, songhash: str | None, model: str, name: str = "",
               variant: str = "", **fields: Any) -> None:
        """A producer's record of a job it has just pushed; ``name``: the song's file name;
        ``variant`` and ``fields``: its encoding (``Encoding.variant``, ``Encoding.fields``) and
        the client that owns it (``rest.owners``)."""
        now = time.time()
        self._write(job_id, id=job_id, state=Status.QUEUED.value, songhash=songhash or "",
                    name=name, model=model, stage="queued", progress=0, attempts=0, error="",
                    tracks={}, created_at=now, started_at="", finished_at="", **fields)
        if songhash:
            self.link_song(job_id, songhash, model, variant)

    def start_attempt(self, job_id: str, worker_id: str) -> int:
        """Mark the job running on this worker; return which attempt this is, or 0 when the
        job already ended (its record is left as it is)."""
        return int(self._start_attempt(keys=[Keys.job(job_id)],
                                       args=[job_id, worker_id, time.time(), self.ttl_s]))

    def uncount_attempt(self, job_id: str) -> None:
        """An attempt cut short by a shutdown does not count."""
        self.redis.hincrby(Keys.job(job_id), "attempts", -1)

    def update(self, job_id: str, **fields: Any) -> bool:
        return self._write(job_id, **fields)

    def link_song(self, job_id: str, songhash: str, model: str, variant: str = "") -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(Keys.song(songhash, model, variant), job_id, ex=self.ttl_s)
            pipe.set(Keys.song_latest(songhash), job_id, ex=self.ttl_s)
            pipe.sadd(Keys.song_jobs(songhash), job_id)
            pipe.expire(Keys.song_jobs(songhash), self.ttl_s)
            pipe.execute()

    def song_records(self, songhash: str) -> list[dict[str, Any]]:
        """The records of every job of a song still kept (the expired ones leave the set)."""
        job_ids = sorted(_decode(j) for j in self.redis.smembers(Keys.song_jobs(songhash)))
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(Keys.job(job_id))
            raws = pipe.execute()
        records = [_record(raw) for raw in raws]
        gone = [job_id for job_id, rec in zip(job_ids, records, strict=True) if rec is None]
        if gone:
            self.redis.srem(Keys.song_jobs(songhash), *gone)
        return [rec for rec in records if rec is not None]

    # The transitions answer whether the job's state is now theirs (False: it had already
    # ended otherwise, and nothing was written).
    def done(self, job_id: str, tracks: dict[str, str], elapsed_s: float) -> bool:
        return self._write(job_id, state=Status.DONE.value, stage="done", progress=100,
                           tracks=tracks, error="", finished_at=time.time(),
                           elapsed_s=round(elapsed_s, 3))

    def failed(self, job_id: str, reason: str, elapsed_s: float | None = None) -> bool:
        return self._write(job_id, state=Status.FAILED.value, stage="failed", error=reason,
                           finished_at=time.time(),
                           elapsed_s="" if elapsed_s is None else round(elapsed_s, 3))

    def cancelled(self, job_id: str, reason: str) -> bool:
        return self._write(job_id, state=Status.CANCELLED.value, stage="cancelled",
                           error=reason, finished_at=time.time())

    def requeued(self, job_id: str, reason: str) -> bool:
        return self._write(job_id, state=Status.QUEUED.value, stage="queued", progress=0,
                           error=reason)

    def mirror(self, run_id: str, **fields: Any) -> None:
        """Write the shared work's state into the records of the requests that follow job
        ``run_id`` (with API_KEYS, another client's request for the same content has a job id
        and a record of its own, whose ``runs_as`` names ``run_id``): such a record never
        reads ``queued`` once the work runs. A follower that ended (cancelled) stays so."""
        for member in self.redis.smembers(Keys.followers(run_id)):
            view_id = _decode(member).split("/", 1)[-1]
            if view_id != run_id:
                self._write(view_id, **fields)

    def drop_tracks(self, songhash: str, model: str, names: list[str], variant: str = "") -> None:
        """Tracks of a song removed from storage: its job with ``model`` (and the encoding of
        ``variant``) no longer lists them."""
        job_id = self.job_for_song(songhash, model, variant)
        record = self.get(job_id) if job_id else None
        if record is None or not record["tracks"]:
            return
        kept = {t: key for t, key in record["tracks"].items() if t not in names}
        if kept != record["tracks"]:
            self._write(record["id"], tracks=kept)

    def job_for_song(self, songhash: str, model: str | None = None,
                     variant: str = "") -> str | None:
        key = Keys.song(songhash, model, variant) if model else Keys.song_latest(songhash)
        job_id = self.redis.get(key)
        return None if job_id is None else _decode(job_id)

    async def songhashes(self, job_ids: list[str]) -> dict[str, str]:
        """The songhash of each of these jobs that has one, in one round trip (asyncio)."""
        if not job_ids:
            return {}
        async with self._async().pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(Keys.job(job_id), "songhash")
            found = await pipe.execute()
        return {job_id: _decode(value) for job_id, value in zip(job_ids, found, strict=True)
                if value}

    def get(self, id_or_songhash: str) -> dict[str, Any] | None:
        """A job's record by job id, or the latest job of a songhash."""
        job_id: str | None = id_or_songhash
        if SONGHASH_RE.fullmatch(id_or_songhash):
            job_id = self.job_for_song(id_or_songhash)
        return None if job_id is None else _record(self.redis.hgetall(Keys.job(job_id)))

    async def get_async(self, id_or_songhash: str) -> dict[str, Any] | None:
        """``get`` on the asyncio client: for the REST routes polled most, off the threads."""
        client = self._async()
        job_id: str | None = id_or_songhash
        if SONGHASH_RE.fullmatch(id_or_songhash):
            found = await client.get(Keys.song_latest(id_or_songhash))
            job_id = None if found is None else _decode(found)
        return None if job_id is None else _record(await client.hgetall(Keys.job(job_id)))

    def _async(self) -> redis.asyncio.Redis:
        if self.async_redis is None:
            raise RuntimeError("this StatusStore was made without an asyncio client")
        return self.async_redis


def parse_record(raw: dict[bytes, bytes]) -> dict[str, Any] | None:
    """A status hash read by other means than ``StatusStore`` (``rest.owners``), typed."""
    return _record(raw)


def _record(raw: dict[bytes, bytes]) -> dict[str, Any] | None:
    """A status hash as read from Redis, decoded and typed; None if it is empty."""
    if not raw:
        return None
    record: dict[str, Any] = {_decode(k): _decode(v) for k, v in raw.items()}
    for name in QUEUE_FIELDS:
        record.pop(name, None)
    record["tracks"] = json.loads(record.get("tracks") or "{}")
    record["timings"] = json.loads(record.get("timings") or "{}")
    record["attempts"] = ascii_int_or_none(record.get("attempts")) or 0
    record["progress"] = float(record.get("progress") or 0)
    for name in ("created_at", "started_at", "finished_at", "updated_at", "elapsed_s",
                 "duration_s", "expires_at"):
        value = record.get(name)
        record[name] = float(value) if value else None
    for name in ("bitrate", "bit_depth"):
        if record.get(name):
            record[name] = ascii_int_or_none(record[name])
    return record


def _encode(value: Any) -> str | int | float:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, Status):
        return value.value
    return value if isinstance(value, (int, float, str)) else str(value)


def _decode(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
