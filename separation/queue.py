"""The queue protocol: how jobs travel through Redis without ever being lost.

This is the one place the protocol is written down. Key names come from
``separation.contract.Keys``.

1. **Enqueue.** A producer ``LPUSH``es the job's JSON onto ``toWorkers``. Jobs are taken from
   the other end, so the oldest runs first.
2. **Take.** A worker ``BLMOVE toWorkers toWorkers:processing:<worker> RIGHT LEFT``: the job
   moves atomically into the worker's own processing list, so it is never only in a worker's
   memory. The block lasts ``poll_s`` (under redis-py's socket timeout), then the worker checks
   for a stop and blocks again. A batch takes up to ``BATCH_MAX - 1`` further jobs with a
   non-blocking ``LMOVE``; it never waits for more to arrive.
3. **Heartbeat.** Every worker refreshes ``worker:<worker>:heartbeat`` (a key with a TTL of
   ``HEARTBEAT_TTL_S``) from a background thread, before it takes its first job and while a job
   runs.
4. **Redeliver.** Every worker periodically scans ``toWorkers:processing:*``. A list whose
   worker has no heartbeat belongs to a dead worker: its jobs are moved back, one atomic
   ``LMOVE ... LEFT RIGHT`` each, to the taking end of ``toWorkers``, oldest nearest, so they
   run next. Their status still reads ``running``.
5. **Attempts.** Taking a job counts an attempt in its status hash ``job:<id>`` (``HINCRBY
   attempts``; a job whose status is absent or final starts again at 1, since a finished job
   pushed again is a new request). A job taken more than ``MAX_ATTEMPTS`` times fails for good.
6. **Finish.** Success: every track stored → status ``done`` → webhooks (the job's, and those
   of the requests that joined it: ``separation.joins``) → ``LREM`` from the processing list.
   A crash anywhere before the ``LREM`` means the job runs again; outputs are overwritten
   under the same keys, so a rerun is harmless (at-least-once, idempotent).
   A retryable failure moves the job back onto ``toWorkers`` (status ``queued``, the error kept)
   in one ``MULTI``; a permanent one (bad input, missing weights, attempts exhausted) moves it
   to the dead-letter list ``toWorkers:dead`` with its reason, in one ``MULTI``.
7. **Long songs.** A song longer than ``CHUNK_OVER_S`` is cut into overlapping chunks, stored
   in the input bucket under ``chunks/<job>/``, and pushed as chunk jobs that any worker takes
   with the guarantees above. One Lua script counts each stored chunk in the set
   ``job:<job>:chunks-done`` and, when the set is complete, pushes the join job to the taking
   end, guarded by ``HSETNX joined`` in ``job:<job>:chunks``: a redelivered chunk never causes
   a second join. The join is itself a queued job, so a killed joiner's join is redone.
8. **Stop.** On SIGTERM a worker stops taking jobs and finishes the current one within its
   grace; past it, it kills Demucs and moves the job back onto ``toWorkers`` without counting
   the attempt.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import redis

from separation.contract import Keys

# Record a chunk's stems as stored; the call that completes the set pushes the join, once.
_COMPLETE_CHUNK = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local done = redis.call('SCARD', KEYS[1])
local total = tonumber(redis.call('HGET', KEYS[2], 'total') or '-1')
if done == total and redis.call('HSETNX', KEYS[2], 'joined', 1) == 1 then
  redis.call('RPUSH', KEYS[3], ARGV[2])
  return {done, 1}
end
return {done, 0}
"""


class JobQueue:
    """Redis operations of the protocol above, one method per step."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._complete_chunk = client.register_script(_COMPLETE_CHUNK)

    # 1. enqueue
    def enqueue(self, payload: str) -> None:
        self.redis.lpush(Keys.QUEUE, payload)

    def waiting(self) -> list[bytes]:
        """Queued payloads in the order they will run."""
        return list(reversed(self.redis.lrange(Keys.QUEUE, 0, -1)))

    def depth(self) -> int:
        return int(self.redis.llen(Keys.QUEUE))

    # 2. take
    def take(self, worker_id: str, poll_s: float) -> bytes | None:
        """Payloads stay bytes until parsed, so LREM finds exactly what was taken."""
        return self.redis.blmove(Keys.QUEUE, Keys.processing(worker_id), poll_s, "RIGHT", "LEFT")

    def take_waiting(self, worker_id: str) -> bytes | None:
        return self.redis.lmove(Keys.QUEUE, Keys.processing(worker_id), "RIGHT", "LEFT")

    def ping(self) -> None:
        """Raise ``redis.RedisError`` unless Redis answers."""
        self.redis.ping()

    # 3. heartbeat
    def beat(self, worker_id: str, ttl_s: float) -> None:
        self.redis.set(Keys.heartbeat(worker_id), str(time.time()), px=int(ttl_s * 1000))

    def forget(self, worker_id: str) -> None:
        """A worker that exits cleanly removes its heartbeat and its (empty) list."""
        self.redis.delete(Keys.heartbeat(worker_id), Keys.processing(worker_id))

    # 4. redeliver
    def redeliver_dead(self) -> list[bytes]:
        """Move the jobs of workers without a heartbeat back onto the queue; return them."""
        moved: list[bytes] = []
        for key in self._processing_lists():
            worker_id = key[len(Keys.PROCESSING_PREFIX):]
            if self.redis.exists(Keys.heartbeat(worker_id)):
                continue
            while (raw := self.redis.lmove(key, Keys.QUEUE, "LEFT", "RIGHT")) is not None:
                moved.append(raw)
        return moved

    def _processing_lists(self) -> Iterator[str]:
        for key in self.redis.scan_iter(match=Keys.PROCESSING_PREFIX + "*", count=100):
            yield key.decode() if isinstance(key, bytes) else key

    def in_flight(self, worker_id: str) -> list[bytes]:
        return list(self.redis.lrange(Keys.processing(worker_id), 0, -1))

    # 6. finish
    def ack(self, worker_id: str, raw: bytes) -> None:
        self.redis.lrem(Keys.processing(worker_id), 1, raw)

    def give_back(self, worker_id: str, raw: bytes) -> None:
        """Put a taken job back at the taking end of the queue, atomically."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(Keys.QUEUE, raw)
            pipe.lrem(Keys.processing(worker_id), 1, raw)
            pipe.execute()

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
            keys=[Keys.chunks_done(parent_id), Keys.chunks(parent_id), Keys.QUEUE],
            args=[index, join_payload, ttl_s])
        return int(done), bool(pushed)

    def dead_letters(self) -> list[dict[str, object]]:
        return [json.loads(e) for e in self.redis.lrange(Keys.DEAD_LETTER, 0, -1)]

