"""The queue protocol: how jobs travel through Redis without ever being lost.

This is the one place the protocol is written down. Key names come from
``separation.contract.Keys``.

1. **Enqueue.** A producer ``LPUSH``es the job's JSON onto ``toWorkers``. Jobs are taken from
   the other end, so the oldest runs first. ``enqueue`` also records, in the same Lua script,
   the job's position right after its push (the list's length) and the ``toWorkers:taken``
   counter at that moment in its status hash, when it has one (see *Positions*).
2. **Take.** A worker moves the job atomically into its own processing list
   ``toWorkers:processing:<worker>`` (``LMOVE toWorkers ... RIGHT LEFT``), so it is never only
   in a worker's memory, and counts it in ``toWorkers:taken`` in the same Lua script. When the
   queue is empty it blocks on ``BLMOVE`` for ``poll_s`` (under redis-py's socket timeout) and
   counts the job it gets right after; then it checks for a stop and blocks again. A batch
   takes up to ``BATCH_MAX - 1`` further jobs without blocking; it never waits for more.
3. **Heartbeat.** Every worker, from a background thread, before it takes its first job and
   while a job runs, records in the sorted set ``toWorkers:workers`` the time (Redis' clock,
   in ms) past which it counts as dead: now + ``HEARTBEAT_TTL_S``. It also refreshes the key
   ``worker:<worker>:heartbeat`` (with that TTL), which workers of earlier versions look for.
4. **Redeliver.** Every worker periodically reads the members of ``toWorkers:workers`` whose
   time has passed (one ``ZRANGEBYSCORE``: no scan of the keyspace). A dead worker's jobs are
   moved back, in one Lua script that first checks it is still dead, to the taking end of
   ``toWorkers``, oldest nearest, so they run next; the worker leaves the set. Their status
   still reads ``running``. A worker that exits cleanly leaves the set itself (``forget``).
5. **Attempts.** Taking a job counts an attempt in its status hash ``job:<id>`` (``HINCRBY
   attempts``; a job whose status is absent or final starts again at 1, since a finished job
   pushed again is a new request). A job taken more than ``MAX_ATTEMPTS`` times fails for good.
6. **Finish.** Success: every track stored → status ``done`` → webhooks (the job's, and those
   of the requests that joined it: ``separation.joins``) → ``LREM`` from the
   processing list. A crash anywhere before the ``LREM`` means the job runs again; outputs are
   overwritten under the same keys, so a rerun is harmless (at-least-once, idempotent).
   A retryable failure moves the job back to the taking end of ``toWorkers`` (status
   ``queued``, the error kept) in one Lua script that also records its new position, 1, and
   the counter in its status hash; a permanent one (bad input, missing weights, attempts
   exhausted) moves it to the dead-letter list ``toWorkers:dead`` with its reason, in one
   ``MULTI``.
7. **Long songs.** A song longer than ``CHUNK_OVER_S`` is cut into overlapping chunks, stored
   in the input bucket under ``chunks/<job>/``, and pushed as chunk jobs that any worker takes
   with the guarantees above (``enqueue_chunks``: the chunking record and the pushes in one
   ``MULTI``). One Lua script counts each stored chunk in the set
   ``job:<job>:chunks-done`` and, when the set is complete, pushes the join job to the taking
   end, guarded by ``HSETNX joined`` in ``job:<job>:chunks``: a redelivered chunk never causes
   a second join (and counts the push in ``toWorkers:taken``, as every push to the taking end
   does). The join is itself a queued job, so a killed joiner's join is redone.
8. **Stop.** On SIGTERM a worker stops taking jobs and finishes the current one within its
   grace; past it, it kills Demucs and moves the job back onto ``toWorkers`` without counting
   the attempt.
9. **Cancel.** ``request_cancel`` sets ``job:<id>:cancel`` (a plain key with the status' TTL:
   a Redis-only user cancels with ``SET job:<id>:cancel 1 EX 604800``). A worker that takes
   a job whose key (or whose long song's key) is set acknowledges it without running it; a
   worker running one reads the keys of its jobs (one ``MGET``) every ``CANCEL_POLL_S``,
   kills Demucs, and acknowledges it with status ``cancelled``.

**Positions.** ``toWorkers:taken`` counts the jobs that left the taking end less those pushed
back onto it. Pushes at the other end land behind every waiting job, so a job recorded at
position ``p`` with the counter at ``t`` is now at ``p - (taken - t)``, whoever pushed the jobs
before or after it (Redis-only producers included): exact for a FIFO list, and one Lua script
(``position``: ``HMGET``, ``GET``, ``LLEN``) whatever the queue's depth. Jobs without a status
hash have no position. A worker killed between a ``BLMOVE`` and its count leaves the counter
one short (the jobs then waiting read one place too far back), which the clamp to
``[1, LLEN]`` bounds.
"""

from __future__ import annotations

import json
import time

import redis
import redis.asyncio

from separation.contract import Keys

# 1. LPUSH; record the position after the push and the taken counter in the status hash.
_ENQUEUE = """
local length = redis.call('LPUSH', KEYS[1], ARGV[1])
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'queue_position', length,
             'queue_taken', redis.call('GET', KEYS[2]) or 0)
end
return length
"""

NO_ASYNC_CLIENT = "this JobQueue was made without an asyncio client"

# The place of a waiting job: at enqueue, less the jobs taken since, clamped to the list.
_POSITION = """
local recorded = redis.call('HMGET', KEYS[1], 'queue_position', 'queue_taken')
local depth = redis.call('LLEN', KEYS[2])
if not recorded[1] or not recorded[2] or depth == 0 then return false end
local taken = tonumber(redis.call('GET', KEYS[3]) or '0')
local place = tonumber(recorded[1]) - (taken - tonumber(recorded[2]))
return math.min(math.max(place, 1), depth)
"""

# 2. Move a job from the taking end into the processing list and count it.
_TAKE = """
local raw = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
if raw then redis.call('INCR', KEYS[3]) end
return raw
"""

# 3. The time past which the worker is dead, from Redis' clock (workers' clocks may differ).
_BEAT = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], string.format('%.3f', now_ms / 1000), 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[2]), ARGV[1])
"""

_EXPIRED = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now_ms))
"""

# 4. Still dead? Move all its jobs back to the taking end, oldest nearest; forget the worker.
_REDELIVER = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead_at = redis.call('ZSCORE', KEYS[4], ARGV[1])
if dead_at and tonumber(dead_at) > now_ms then return {} end
local moved = {}
while true do
  local raw = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not raw then break end
  moved[#moved + 1] = raw
end
if #moved > 0 then redis.call('DECRBY', KEYS[3], #moved) end
redis.call('ZREM', KEYS[4], ARGV[1])
return moved
"""

# 6. Put a taken job back at the taking end: position 1 from now on.
_GIVE_BACK = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LREM', KEYS[2], 1, ARGV[1])
local taken = redis.call('DECR', KEYS[3])
if KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HSET', KEYS[4], 'queue_position', 1, 'queue_taken', taken)
end
"""

# 7. Record a chunk's stems as stored; the call that completes the set pushes the join, once.
_COMPLETE_CHUNK = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local done = redis.call('SCARD', KEYS[1])
local total = tonumber(redis.call('HGET', KEYS[2], 'total') or '-1')
if done == total and redis.call('HSETNX', KEYS[2], 'joined', 1) == 1 then
  redis.call('RPUSH', KEYS[3], ARGV[2])
  redis.call('DECR', KEYS[4])
  return {done, 1}
end
return {done, 0}
"""


class JobQueue:
    """Redis operations of the protocol above, one method per step."""

    def __init__(self, client: redis.Redis, async_client: redis.asyncio.Redis | None = None
                 ) -> None:
        self.redis = client
        self.async_redis = async_client
        self._position = client.register_script(_POSITION)
        self._position_async = async_client.register_script(_POSITION) if async_client \
            else None
        self._enqueue = client.register_script(_ENQUEUE)
        self._take = client.register_script(_TAKE)
        self._beat = client.register_script(_BEAT)
        self._expired = client.register_script(_EXPIRED)
        self._redeliver = client.register_script(_REDELIVER)
        self._give_back = client.register_script(_GIVE_BACK)
        self._complete_chunk = client.register_script(_COMPLETE_CHUNK)

    # 1. enqueue
    def enqueue(self, payload: str, job_id: str | None = None) -> int:
        """Push a job; with ``job_id``, note its position in its status hash. Return the depth."""
        keys = [Keys.QUEUE, Keys.QUEUE_TAKEN] + ([Keys.job(job_id)] if job_id else [])
        return int(self._enqueue(keys=keys, args=[payload]))

    async def page(self, offset: int, limit: int) -> tuple[int, list[bytes]]:
        """The depth, and ``limit`` payloads from the ``offset``-th next to run, in run order
        (on the asyncio client: one bounded ``LRANGE``, whatever the depth)."""
        async with self._async().pipeline(transaction=True) as pipe:
            pipe.llen(Keys.QUEUE)
            pipe.lrange(Keys.QUEUE, -(offset + limit), -(offset + 1))
            depth, raws = await pipe.execute()
        return int(depth), list(reversed(raws))

    def depth(self) -> int:
        return int(self.redis.llen(Keys.QUEUE))

    def position(self, job_id: str) -> int | None:
        """The 1-based place of a waiting job, from the counters (see *Positions*)."""
        return self._position(keys=self._position_keys(job_id))

    def positions(self, job_ids: list[str]) -> list[int | None]:
        """``position`` of each of these jobs, in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                self._position(keys=self._position_keys(job_id), client=pipe)
            return list(pipe.execute())

    async def position_async(self, job_id: str) -> int | None:
        """``position`` on the asyncio client, for the REST status route."""
        if self._position_async is None:
            raise RuntimeError(NO_ASYNC_CLIENT)
        return await self._position_async(keys=self._position_keys(job_id))

    def _async(self) -> redis.asyncio.Redis:
        if self.async_redis is None:
            raise RuntimeError(NO_ASYNC_CLIENT)
        return self.async_redis

    @staticmethod
    def _position_keys(job_id: str) -> list[str]:
        return [Keys.job(job_id), Keys.QUEUE, Keys.QUEUE_TAKEN]

    # 2. take
    def take(self, worker_id: str, poll_s: float) -> bytes | None:
        """Payloads stay bytes until parsed, so LREM finds exactly what was taken."""
        raw = self.take_waiting(worker_id)
        if raw is not None:
            return raw
        raw = self.redis.blmove(Keys.QUEUE, Keys.processing(worker_id), poll_s, "RIGHT", "LEFT")
        if raw is not None:
            self.redis.incr(Keys.QUEUE_TAKEN)
        return raw

    def take_waiting(self, worker_id: str) -> bytes | None:
        return self._take(keys=[Keys.QUEUE, Keys.processing(worker_id), Keys.QUEUE_TAKEN])

    def ping(self) -> None:
        """Raise ``redis.RedisError`` unless Redis answers."""
        self.redis.ping()

    # 3. heartbeat
    def beat(self, worker_id: str, ttl_s: float) -> None:
        self._beat(keys=[Keys.heartbeat(worker_id), Keys.WORKERS],
                   args=[worker_id, max(1, int(ttl_s * 1000))])

    def forget(self, worker_id: str) -> None:
        """A worker that exits cleanly leaves the registry and removes its (empty) list."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(Keys.WORKERS, worker_id)
            pipe.delete(Keys.heartbeat(worker_id), Keys.processing(worker_id))
            pipe.execute()

    # 4. redeliver
    def redeliver_dead(self) -> list[bytes]:
        """Move the jobs of workers past their heartbeat time back onto the queue; return them."""
        moved: list[bytes] = []
        for member in self._expired(keys=[Keys.WORKERS]):
            worker_id = _text(member)
            moved += self._redeliver(
                keys=[Keys.processing(worker_id), Keys.QUEUE, Keys.QUEUE_TAKEN, Keys.WORKERS],
                args=[worker_id])
        return moved

    def in_flight(self, worker_id: str) -> list[bytes]:
        return list(self.redis.lrange(Keys.processing(worker_id), 0, -1))

    def give_back_held(self, worker_id: str) -> None:
        """Give back every job ``worker_id``'s processing list still holds (after an outage
        of Redis, the worker cannot know which of its jobs were settled)."""
        for raw in self.in_flight(worker_id):
            self.give_back(worker_id, raw)

    # 6. finish
    def ack(self, worker_id: str, raw: bytes) -> None:
        self.redis.lrem(Keys.processing(worker_id), 1, raw)

    def give_back(self, worker_id: str, raw: bytes, job_id: str | None = None) -> None:
        """Put a taken job back at the taking end of the queue, atomically."""
        keys = [Keys.QUEUE, Keys.processing(worker_id), Keys.QUEUE_TAKEN]
        self._give_back(keys=keys + ([Keys.job(job_id)] if job_id else []), args=[raw])

    def dead_letter(self, worker_id: str, raw: bytes, reason: str, attempts: int) -> None:
        entry = json.dumps({"job": raw.decode("utf-8", "replace"), "error": reason,
                            "attempts": attempts, "worker": worker_id, "failed_at": time.time()})
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(Keys.DEAD_LETTER, entry)
            pipe.lrem(Keys.processing(worker_id), 1, raw)
            pipe.execute()

    # 7. long songs
    def complete_chunk(self, parent_id: str, index: int, join_payload: str, ttl_s: int
                       ) -> tuple[int, bool]:
        """Count a chunk as stored; return (chunks stored, whether this call pushed the join)."""
        done, pushed = self._complete_chunk(
            keys=[Keys.chunks_done(parent_id), Keys.chunks(parent_id), Keys.QUEUE,
                  Keys.QUEUE_TAKEN],
            args=[index, join_payload, ttl_s])
        return int(done), bool(pushed)

    def enqueue_chunks(self, parent_id: str, record: dict[str, str | int | float],
                       payloads: list[str], ttl_s: int) -> None:
        """Record a long song's chunking and push its chunk jobs, in one ``MULTI``."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(Keys.chunks(parent_id), mapping=record)
            pipe.expire(Keys.chunks(parent_id), ttl_s)
            for payload in payloads:
                pipe.lpush(Keys.QUEUE, payload)
            pipe.execute()

    def chunk_record(self, parent_id: str) -> dict[str, str]:
        """A long song's chunking record (empty when it expired or was cleaned up)."""
        return {_text(k): _text(v) for k, v in self.redis.hgetall(Keys.chunks(parent_id)).items()}

    def forget_chunks(self, parent_id: str) -> None:
        """Delete a long song's chunking record and its set of stored chunks."""
        self.redis.delete(Keys.chunks(parent_id), Keys.chunks_done(parent_id))

    # 9. cancel
    def request_cancel(self, job_id: str, ttl_s: int) -> None:
        self.redis.set(Keys.cancel(job_id), 1, ex=ttl_s)

    def cancels_requested(self, job_ids: list[str]) -> set[str]:
        """Which of ``job_ids`` a cancel was asked for (one ``MGET``)."""
        if not job_ids:
            return set()
        found = self.redis.mget([Keys.cancel(job_id) for job_id in job_ids])
        return {job_id for job_id, value in zip(job_ids, found, strict=True) if value is not None}

    def dead_letters(self) -> list[dict[str, object]]:
        return [json.loads(e) for e in self.redis.lrange(Keys.DEAD_LETTER, 0, -1)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
