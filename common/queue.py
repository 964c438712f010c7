"""The queue protocol: how jobs travel through Redis without ever being lost.

This is the one place the protocol is written down. Key names come from
``common.contract.Keys``.

0. **Lanes.** Jobs wait in three lists, taken in this order: ``toWorkers:chunks`` (the chunks
   and joins of long songs already under way), ``toWorkers:high`` and ``toWorkers:normal``
   (a job's ``priority``; absent, or anything but ``"high"``, is normal). Each lane is FIFO:
   jobs enter at its left end and are taken from its right end, the *taking end*.
   **Anti-starvation:** after ``HIGH_BURST`` high jobs taken in a row while normal ones wait
   (counted in ``toWorkers:high-streak`` by every worker), the next take is a normal job;
   so while both lanes hold jobs, at least one of every ``HIGH_BURST + 1`` jobs taken from
   them is a normal one.
1. **Enqueue.** A producer ``LPUSH``es the job's JSON onto ``toWorkers``, the *intake*, as the
   lab's clients and Redis-only users always have. **Route:** one Lua script moves up to
   ``QUEUE_ROUTE_BATCH`` jobs from the intake's taking end into their lanes, oldest first,
   reading each one's lane with ``cjson.decode`` (payloads that do not decode, or are over
   4 x ``MAX_JOB_JSON_BYTES``, go to the normal lane, where the worker's parse refuses them).
   Each job is read at the intake's end (``LINDEX``) and moved by one ``LMOVE``, so it is
   never only in the script's memory. A job with a status hash ``job:<id>`` gets its place
   recorded there (see *Positions*).
   Routing runs before every take, every position and every page, in calls of one batch
   until the intake is empty, so each job is routed once (amortised O(1)) and no read ever
   skips an unrouted job; ``enqueue`` pushes, then routes.
2. **Take.** A worker routes, then moves one job atomically from the first lane the rule
   picks into its own processing list ``toWorkers:processing:<worker>`` (``LMOVE ... RIGHT
   LEFT``), so it is never only in a worker's memory, counting it in the lane's counter
   (``toWorkers:high:taken``, ``toWorkers:normal:taken``) and the streak, all in one Lua
   script. When every lane is empty it blocks for ``poll_s`` (under redis-py's socket timeout)
   on ``BLMOVE toWorkers toWorkers RIGHT RIGHT``, which moves nothing (the intake's oldest job
   onto the same end) but returns as soon as a producer pushes; then it routes and takes
   again. A batch takes up to ``BATCH_MAX - 1`` further jobs without blocking.
3. **Heartbeat.** Every worker, from a background thread, before it takes its first job and
   while a job runs, records in the sorted set ``toWorkers:workers`` the time (Redis' clock,
   in ms) past which it counts as dead: now + ``HEARTBEAT_TTL_S``. It also refreshes the key
   ``worker:<worker>:heartbeat`` (with that TTL), which workers of earlier versions look for.
4. **Redeliver.** Every worker periodically reads the members of ``toWorkers:workers`` whose
   time has passed (one ``ZRANGEBYSCORE``: no scan of the keyspace). A dead worker's jobs are
   moved back, in one Lua script that first checks it is still dead, each to the taking end
   of its own lane (a high job to the high lane's), oldest nearest, so they run next; the
   worker leaves the set. Their status still reads ``running``. A worker that exits cleanly
   leaves the set itself (``forget``). Workers blocked in step 2 see a redelivered job within
   ``poll_s``.
5. **Attempts.** Taking a job counts an attempt in its status hash ``job:<id>`` (``HINCRBY
   attempts``; a job without a status starts at 1). A job taken more than ``MAX_ATTEMPTS``
   times fails for good. A job whose status is final (done, failed, cancelled) is not run
   again: a job id ends once (``StatusStore``: a final state is final).
6. **Finish.** Success: every track stored → status ``done`` → webhooks (the job's, and those
   of the requests that joined it: ``common.joins``) → ``LREM`` from the
   processing list. A crash before the status reads ``done`` means the job runs again; outputs
   are overwritten under the same keys, so a rerun is harmless (at-least-once, idempotent); a
   crash after it, and the payload taken again is acknowledged without running (step 5).
   A retryable failure moves the job back to the taking end of its lane (status ``queued``,
   the error kept) in one Lua script that also records its new place, 1, in its status hash;
   a permanent one (bad input, missing weights, attempts exhausted) moves it to the
   dead-letter list ``toWorkers:dead`` with its reason, in one Lua script.
   **Every settling move checks the holder first** (ack, give back, dead-letter, give back
   after an outage): it removes the job from the settling worker's processing list and does
   nothing else when that removal finds nothing: a worker paused past its heartbeat, whose
   job was redelivered meanwhile, then changes nothing (``holds`` lets it find out before it
   writes anything about the job).
7. **Long songs.** A song longer than ``CHUNK_OVER_S`` is cut into overlapping chunks, stored
   in the input bucket under ``chunks/<job>/``, and pushed onto the intake as chunk jobs
   (``enqueue_chunks``: the chunking record and the pushes in one ``MULTI``), which route into
   the chunks lane: any worker takes them, with the guarantees above, before any new song. One
   Lua script counts each stored chunk in the set ``job:<job>:chunks-done`` and, when the set
   is complete, pushes the join job to the chunks lane's taking end, guarded by ``HSETNX
   joined`` in ``job:<job>:chunks``: a redelivered chunk never causes a second join. The join
   is itself a queued job, so a killed joiner's join is redone.
8. **Stop.** On SIGTERM a worker stops taking jobs and finishes the current one within its
   grace; past it, it kills Demucs and moves the job back onto its lane's taking end without
   counting the attempt.
9. **Cancel.** ``request_cancel`` sets ``job:<id>:cancel`` (a plain key with the status' TTL:
   a Redis-only user cancels with ``SET job:<id>:cancel 1 EX 604800``). A worker that takes
   a job whose key (or whose long song's key) is set acknowledges it without running it; a
   worker running one reads the keys of its jobs (one ``MGET``) every ``CANCEL_POLL_S``,
   kills Demucs, and acknowledges it with status ``cancelled``.

**Positions.** A lane's counter counts the jobs that left its taking end less those pushed
back onto it. Routing pushes a job at the lane's other end, behind every job of that lane,
and records in its status hash its lane, its place there (the lane's length) and the counter:
a job recorded at place ``p`` with the counter at ``t`` is now at ``p - (taken - t)`` in its
lane, whoever pushed the jobs before or after it (Redis-only producers included). Its place
in the run order adds the chunks lane and the other lane's jobs that the rule takes first
(``run_place``): a normal job at place ``p`` waits for ``min(H, f + (p - 1) * HIGH_BURST)``
high ones, a high job at place ``q`` for ``min(N, ceil((q - f) / HIGH_BURST))`` normal ones
(0 while ``q <= f``), where ``f = max(0, HIGH_BURST - streak)``, ``H`` and ``N`` the lanes'
lengths. Exact for the jobs waiting now (a high job pushed later overtakes a normal one: that
is the point); one Lua script (``HMGET``, ``GET``s, ``LLEN``s) whatever the queue's depth.
Jobs without a status hash have no position. A worker killed inside a ``take`` loses nothing
(the script is atomic); the clamp to ``[1, LLEN]`` bounds any drift of a counter.
"""

from __future__ import annotations

import json
import time

import redis
import redis.asyncio

from common.contract import MAX_JOB_JSON_BYTES, Keys

DEFAULT_HIGH_BURST = 4
"""High jobs taken in a row while normal ones wait before one normal job (``HIGH_BURST``)."""
DEFAULT_ROUTE_BATCH = 500
"""Jobs one routing call moves from the intake into the lanes (``QUEUE_ROUTE_BATCH``)."""
LANE_JSON_MAX_BYTES = 4 * MAX_JOB_JSON_BYTES
"""Payloads longer than this are not decoded to find their lane (UTF-8: 4 bytes a char at
most, so every payload the worker's parse accepts is)."""
LANES = ("intake", "chunks", "high", "normal")
"""Where a waiting job can be, as ``depths`` and the queue-depth metrics name them."""
ROUTE_MORE = 1
"""The integer a script answers, instead of its result, while the intake still holds jobs."""
NO_ASYNC_CLIENT = "this JobQueue was made without an asyncio client"

_LANE_KEYS = [Keys.QUEUE, Keys.LANE_CHUNKS, Keys.LANE_HIGH, Keys.LANE_NORMAL, Keys.HIGH_TAKEN,
              Keys.NORMAL_TAKEN, Keys.HIGH_STREAK]
QUEUE_KEYS = tuple(_LANE_KEYS)
"""Every key that holds waiting jobs or the counters of their order."""
WAITING_LISTS = dict(zip(LANES, _LANE_KEYS[:4], strict=True))
"""The lists where jobs wait, by the names of ``LANES``."""

# 0-1. What every lane script begins with: the keys above as KEYS[1..7] (a lane's taken
# counter is KEYS[lane + 2]); ARGV[1..4]: route batch, largest payload decoded, the prefix of
# status hashes, HIGH_BURST. ``route`` moves a batch from the intake into the lanes, oldest
# first, and answers how many jobs the intake still holds.
_LANES_LUA = """
local INTAKE, CHUNKS, HIGH, NORMAL, STREAK = 1, 2, 3, 4, 7
local BATCH, MAX_BYTES, JOB_PREFIX = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local BURST = tonumber(ARGV[4])
local LANE_NAMES = {[HIGH] = 'high', [NORMAL] = 'normal'}

local function lane_of(raw)
  if #raw <= MAX_BYTES then
    local ok, job = pcall(cjson.decode, raw)
    if ok and type(job) == 'table' then
      local id = job.id
      if type(id) ~= 'string' or #id > 64 or not string.find(id, '^[A-Za-z0-9_%-]+$') then
        id = nil
      end
      if type(job.chunk_of) == 'string' or type(job.join_of) == 'string' then
        return CHUNKS, id
      end
      if job.priority == 'high' then return HIGH, id end
      return NORMAL, id
    end
  end
  return NORMAL, nil
end

-- Record a routed or given-back job's place in its status hash, if it has one (place: the
-- lane's length, taken: its counter, each read here when not given).
local function note_place(key, lane, place, taken)
  if redis.call('TYPE', key)['ok'] == 'hash' then
    redis.call('HSET', key, 'queue_lane', LANE_NAMES[lane],
               'queue_position', place or redis.call('LLEN', KEYS[lane]),
               'queue_taken', taken or redis.call('GET', KEYS[lane + 2]) or 0)
  end
end

-- Each job is read at the intake's taking end, then moved by one LMOVE: never only in here.
local function route()
  for _ = 1, BATCH do
    local raw = redis.call('LINDEX', KEYS[INTAKE], -1)
    if not raw then return 0 end
    local lane, id = lane_of(raw)
    redis.call('LMOVE', KEYS[INTAKE], KEYS[lane], 'RIGHT', 'LEFT')
    if lane ~= CHUNKS and id then note_place(JOB_PREFIX .. id, lane) end
  end
  return redis.call('LLEN', KEYS[INTAKE])
end

local function streak()
  return tonumber(redis.call('GET', KEYS[STREAK]) or '0')
end
"""

# 1. Route the intake (``enqueue`` pushes first, apart, so a blocked worker wakes).
_ROUTE = _LANES_LUA + """
return route()
"""

# 2. Route, then move the job the rule picks into the processing list KEYS[8] and count it.
_TAKE = _LANES_LUA + """
if route() > 0 then return 1 end
local raw = redis.call('LMOVE', KEYS[CHUNKS], KEYS[8], 'RIGHT', 'LEFT')
if raw then return raw end
local normal = redis.call('LLEN', KEYS[NORMAL])
if normal > 0 and (streak() >= BURST or redis.call('LLEN', KEYS[HIGH]) == 0) then
  redis.call('SET', KEYS[STREAK], 0)
  redis.call('INCR', KEYS[NORMAL + 2])
  return redis.call('LMOVE', KEYS[NORMAL], KEYS[8], 'RIGHT', 'LEFT')
end
raw = redis.call('LMOVE', KEYS[HIGH], KEYS[8], 'RIGHT', 'LEFT')
if not raw then return false end
redis.call('INCR', KEYS[HIGH + 2])
if normal > 0 then redis.call('INCR', KEYS[STREAK]) else redis.call('SET', KEYS[STREAK], 0) end
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

# 4. Still dead? Move each of its jobs (processing list KEYS[8]) back to its own lane's taking
# end, oldest nearest; forget the worker (KEYS[9]: the registry; ARGV[5]: the worker).
_REDELIVER = _LANES_LUA + """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead_at = redis.call('ZSCORE', KEYS[9], ARGV[5])
if dead_at and tonumber(dead_at) > now_ms then return {} end
local moved = {}
while true do
  local raw = redis.call('LINDEX', KEYS[8], 0)
  if not raw then break end
  local lane = lane_of(raw)
  redis.call('LMOVE', KEYS[8], KEYS[lane], 'LEFT', 'RIGHT')
  if lane ~= CHUNKS then redis.call('DECR', KEYS[lane + 2]) end
  moved[#moved + 1] = raw
end
redis.call('ZREM', KEYS[9], ARGV[5])
return moved
"""

# 6. Settling moves: each first removes the job from the processing list KEYS[8] of the worker
# settling it and does nothing else when it was not there (the job was redelivered to another
# worker meanwhile: that one settles it). Each answers 1 when it moved the job, else 0.
# Give back: the job (ARGV[5]) to its lane's taking end, place 1 from now on, noted in its
# status hash KEYS[9] when given.
_GIVE_BACK = _LANES_LUA + """
if redis.call('LREM', KEYS[8], 1, ARGV[5]) == 0 then return 0 end
local lane = lane_of(ARGV[5])
redis.call('RPUSH', KEYS[lane], ARGV[5])
if lane ~= CHUNKS then
  local taken = redis.call('DECR', KEYS[lane + 2])
  if KEYS[9] and redis.call('EXISTS', KEYS[9]) == 1 then note_place(KEYS[9], lane, 1, taken) end
end
return 1
"""

# Dead-letter: the job leaves KEYS[1] (the processing list) for KEYS[2] with its reason.
_DEAD_LETTER = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
"""

# 7. Record a chunk's stems as stored; the call that completes the set pushes the join, once,
# to the chunks lane's taking end.
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

# Positions: route, then a waiting job's lane and place in it (recorded place, less the jobs
# taken since, clamped to the lane), with what ``run_place`` needs: the lanes' lengths and
# the streak. False for a job with no recorded place (KEYS[8]: its status hash).
_POSITION = _LANES_LUA + """
if route() > 0 then return 1 end
local recorded = redis.call('HMGET', KEYS[8], 'queue_lane', 'queue_position', 'queue_taken')
local lane = (recorded[1] == 'high' and HIGH) or (recorded[1] == 'normal' and NORMAL) or nil
local place, at = tonumber(recorded[2]), tonumber(recorded[3])
if not lane or not place or not at then return false end
local depth = redis.call('LLEN', KEYS[lane])
if depth == 0 then return false end
local taken = tonumber(redis.call('GET', KEYS[lane + 2]) or '0')
place = math.min(math.max(place - (taken - at), 1), depth)
return {recorded[1], place, redis.call('LLEN', KEYS[CHUNKS]), redis.call('LLEN', KEYS[HIGH]),
        redis.call('LLEN', KEYS[NORMAL]), streak()}
"""

# Pages: route, then the lanes' lengths and the streak, for ``run_order``.
_LANE_STATE = _LANES_LUA + """
if route() > 0 then return 1 end
return {redis.call('LLEN', KEYS[CHUNKS]), redis.call('LLEN', KEYS[HIGH]),
        redis.call('LLEN', KEYS[NORMAL]), streak()}
"""


def _taken_after(count: int, high: int, normal: int, streak: int, burst: int
                 ) -> tuple[int, int, int]:
    """High and normal jobs among the first ``count`` the rule takes, and the streak then."""
    first = max(0, burst - streak)  # high jobs taken before the rule's first normal one
    if count <= first:
        highs, normals, after = count, 0, streak + count
    else:
        cycles, rest = divmod(count - first, burst + 1)  # a cycle: 1 normal, then burst high
        normals = cycles + (1 if rest else 0)
        highs = first + cycles * burst + max(0, rest - 1)
        after = rest - 1 if rest else burst
    if highs > high:  # the high lane ran out: normal ones only from there
        return high, count - high, 0
    if normals > normal:
        return count - normal, normal, 0
    return highs, normals, after


def run_order(chunks: int, high: int, normal: int, streak: int, burst: int, offset: int,
              limit: int) -> list[tuple[str, int]]:
    """Which jobs run ``offset``-th to ``offset + limit - 1``-th (0-based), as (lane, index
    from the lane's taking end): the chunks lane, then high and normal ones by the rule."""
    end = min(offset + limit, chunks + high + normal)
    order = [("chunks", i) for i in range(offset, min(end, chunks))]
    start = max(offset - chunks, 0)
    highs, normals, streak = _taken_after(start, high, normal, streak, burst)
    for _ in range(start, end - chunks):
        if normals < normal and (highs >= high or streak >= burst):
            order.append(("normal", normals))
            normals, streak = normals + 1, 0
        else:
            order.append(("high", highs))
            highs, streak = highs + 1, (streak + 1 if normals < normal else 0)
    return order


def run_place(lane: str, place: int, chunks: int, high: int, normal: int, streak: int,
              burst: int) -> int:
    """The 1-based place in the run order of the job at ``place`` in its lane (see
    *Positions*): the chunks lane and the other lane's jobs the rule takes first add up."""
    first = max(0, burst - streak)
    if lane == "high":
        before = 0 if place <= first else min(normal, -(-(place - first) // burst))
    else:
        before = min(high, first + (place - 1) * burst)
    return chunks + before + place


class JobQueue:
    """Redis operations of the protocol above, one method per step."""

    def __init__(self, client: redis.Redis, async_client: redis.asyncio.Redis | None = None,
                 *, high_burst: int = DEFAULT_HIGH_BURST,
                 route_batch: int = DEFAULT_ROUTE_BATCH) -> None:
        if high_burst < 1 or route_batch < 1:
            raise ValueError("HIGH_BURST and QUEUE_ROUTE_BATCH must be at least 1")
        self.redis = client
        self.async_redis = async_client
        self.high_burst = high_burst
        self.route_batch = route_batch
        self._route = client.register_script(_ROUTE)
        self._position = client.register_script(_POSITION)
        self._position_async = async_client.register_script(_POSITION) if async_client \
            else None
        self._lane_state_async = async_client.register_script(_LANE_STATE) if async_client \
            else None
        self._take = client.register_script(_TAKE)
        self._beat = client.register_script(_BEAT)
        self._expired = client.register_script(_EXPIRED)
        self._redeliver = client.register_script(_REDELIVER)
        self._give_back = client.register_script(_GIVE_BACK)
        self._dead_letter = client.register_script(_DEAD_LETTER)
        self._complete_chunk = client.register_script(_COMPLETE_CHUNK)

    def _args(self, *more: str | bytes | int) -> list[str | bytes | int]:
        return [self.route_batch, LANE_JSON_MAX_BYTES, Keys.job(""), self.high_burst, *more]

    def _routed(self, script: redis.commands.core.Script, keys: list[str],
                args: list[str | bytes | int]) -> object:
        """Run a lane script until the intake is routed (each call moves one batch)."""
        while True:
            result = script(keys=keys, args=args)
            if not _is_route_more(result):
                return result

    async def _routed_async(self, script: redis.commands.core.AsyncScript | None,
                            keys: list[str], args: list[str | bytes | int]) -> object:
        if script is None:
            raise RuntimeError(NO_ASYNC_CLIENT)
        while True:
            result = await script(keys=keys, args=args)
            if not _is_route_more(result):
                return result

    # 1. enqueue
    def enqueue(self, payload: str) -> None:
        """Push a job onto the intake (waking a blocked worker), then route the intake."""
        self.redis.lpush(Keys.QUEUE, payload)
        self.route()

    def route(self) -> None:
        """Move every job of the intake into its lane, one batch per call."""
        while int(self._route(keys=_LANE_KEYS, args=self._args())) > 0:
            pass

    async def page(self, offset: int, limit: int) -> tuple[int, list[bytes]]:
        """The number of waiting jobs, and ``limit`` payloads from the ``offset``-th next to
        run, in run order (on the asyncio client: bounded ``LRANGE``s, whatever the depth)."""
        state = await self._routed_async(self._lane_state_async, _LANE_KEYS, self._args())
        chunks, high, normal, streak = (int(n) for n in state)  # type: ignore[union-attr]
        order = run_order(chunks, high, normal, streak, self.high_burst, offset, limit)
        spans: dict[str, tuple[int, int]] = {}  # lane -> first and last index the page reads
        for lane, i in order:
            first, last = spans.get(lane, (i, i))
            spans[lane] = (min(first, i), max(last, i))
        async with self._async().pipeline(transaction=True) as pipe:
            for lane, (first, last) in spans.items():
                pipe.lrange(WAITING_LISTS[lane], -(last + 1), -(first + 1))
            slices = await pipe.execute()
        read = {lane: list(reversed(raws)) for lane, raws in zip(spans, slices, strict=True)}
        raws = [read[lane][i - spans[lane][0]] for lane, i in order
                if i - spans[lane][0] < len(read[lane])]  # a lane may shrink in between
        return chunks + high + normal, raws

    def depths(self) -> dict[str, int]:
        """The jobs waiting in the intake and in each lane (``LANES``)."""
        with self.redis.pipeline(transaction=True) as pipe:
            for key in WAITING_LISTS.values():
                pipe.llen(key)
            return dict(zip(WAITING_LISTS, (int(n) for n in pipe.execute()), strict=True))

    def depth(self) -> int:
        """Every waiting job: the intake and the lanes."""
        return sum(self.depths().values())

    def position(self, job_id: str) -> int | None:
        """The 1-based place of a waiting job in the run order (see *Positions*)."""
        return self._run_place(self._routed(self._position, self._position_keys(job_id),
                                            self._args()))

    def positions(self, job_ids: list[str]) -> list[int | None]:
        """``position`` of each of these jobs: the intake routed, then one round trip."""
        self.route()
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                self._position(keys=self._position_keys(job_id), args=self._args(), client=pipe)
            return [None if _is_route_more(found) else self._run_place(found)
                    for found in pipe.execute()]  # None: pushed meanwhile, not yet routed

    async def position_async(self, job_id: str) -> int | None:
        """``position`` on the asyncio client, for the REST status route."""
        return self._run_place(await self._routed_async(
            self._position_async, self._position_keys(job_id), self._args()))

    def _run_place(self, found: object) -> int | None:
        if not found:
            return None
        lane, place, chunks, high, normal, streak = found  # type: ignore[misc]
        return run_place(_text(lane), int(place), int(chunks), int(high), int(normal),
                         int(streak), self.high_burst)

    def _async(self) -> redis.asyncio.Redis:
        if self.async_redis is None:
            raise RuntimeError(NO_ASYNC_CLIENT)
        return self.async_redis

    @staticmethod
    def _position_keys(job_id: str) -> list[str]:
        return [*_LANE_KEYS, Keys.job(job_id)]

    # 2. take
    def take(self, worker_id: str, poll_s: float) -> bytes | None:
        """The next job by the rule, waiting up to ``poll_s`` for a push when none waits.
        Payloads stay bytes until parsed, so LREM finds exactly what was taken."""
        raw = self.take_waiting(worker_id)
        if raw is None and self.redis.blmove(Keys.QUEUE, Keys.QUEUE, poll_s, "RIGHT",
                                             "RIGHT") is not None:
            raw = self.take_waiting(worker_id)
        return raw

    def take_waiting(self, worker_id: str) -> bytes | None:
        """The next job by the rule, if one waits; never blocks."""
        return self._routed(self._take, [*_LANE_KEYS, Keys.processing(worker_id)],
                            self._args())  # type: ignore[return-value]

    def ping(self) -> None:
        """Raise ``redis.RedisError`` unless Redis answers."""
        self.redis.ping()

    # 3. heartbeat
    def beat(self, worker_id: str, ttl_s: float) -> None:
        self._beat(keys=[Keys.heartbeat(worker_id), Keys.WORKERS],
                   args=[worker_id, max(1, int(ttl_s * 1000))])

    def alive(self, worker_id: str) -> bool:
        """Whether ``worker_id`` is in the registry and its heartbeat time has not passed."""
        dead_at = self.redis.zscore(Keys.WORKERS, worker_id)
        if dead_at is None:
            return False
        seconds, microseconds = self.redis.time()
        return dead_at > seconds * 1000 + microseconds / 1000

    def forget(self, worker_id: str) -> None:
        """A worker that exits cleanly leaves the registry and removes its (empty) list."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(Keys.WORKERS, worker_id)
            pipe.delete(Keys.heartbeat(worker_id), Keys.processing(worker_id))
            pipe.execute()

    # 4. redeliver
    def redeliver_dead(self) -> list[bytes]:
        """Move the jobs of workers past their heartbeat time back to their lanes; return them."""
        moved: list[bytes] = []
        for member in self._expired(keys=[Keys.WORKERS]):
            worker_id = _text(member)
            moved += self._redeliver(
                keys=[*_LANE_KEYS, Keys.processing(worker_id), Keys.WORKERS],
                args=self._args(worker_id))
        return moved

    def in_flight(self, worker_id: str) -> list[bytes]:
        return list(self.redis.lrange(Keys.processing(worker_id), 0, -1))

    def give_back_held(self, worker_id: str) -> list[bytes]:
        """Give back every job ``worker_id``'s processing list still holds (after an outage
        of Redis, the worker cannot know which of its jobs were settled); return them."""
        return [raw for raw in self.in_flight(worker_id) if self.give_back(worker_id, raw)]

    def holds(self, worker_id: str, raw: bytes) -> bool:
        """Whether ``worker_id``'s processing list still holds this payload (it was not
        redelivered to another worker while this one was paused)."""
        return self.redis.lpos(Keys.processing(worker_id), raw) is not None

    # 6. finish: each move answers whether this worker still held the job (False: it was
    # redelivered meanwhile, and the move changed nothing)
    def ack(self, worker_id: str, raw: bytes) -> bool:
        return int(self.redis.lrem(Keys.processing(worker_id), 1, raw)) > 0

    def give_back(self, worker_id: str, raw: bytes, job_id: str | None = None) -> bool:
        """Put a taken job back at the taking end of its lane, atomically."""
        keys = [*_LANE_KEYS, Keys.processing(worker_id)]
        return bool(self._give_back(keys=keys + ([Keys.job(job_id)] if job_id else []),
                                    args=self._args(raw)))

    def dead_letter(self, worker_id: str, raw: bytes, reason: str, attempts: int) -> bool:
        entry = json.dumps({"job": raw.decode("utf-8", "replace"), "error": reason,
                            "attempts": attempts, "worker": worker_id, "failed_at": time.time()})
        return bool(self._dead_letter(keys=[Keys.processing(worker_id), Keys.DEAD_LETTER],
                                      args=[raw, entry]))

    # 7. long songs
    def complete_chunk(self, parent_id: str, index: int, join_payload: str, ttl_s: int
                       ) -> tuple[int, bool]:
        """Count a chunk as stored; return (chunks stored, whether this call pushed the join)."""
        done, pushed = self._complete_chunk(
            keys=[Keys.chunks_done(parent_id), Keys.chunks(parent_id), Keys.LANE_CHUNKS],
            args=[index, join_payload, ttl_s])
        return int(done), bool(pushed)

    def enqueue_chunks(self, parent_id: str, record: dict[str, str | int | float],
                       payloads: list[str], ttl_s: int) -> None:
        """Record a long song's chunking and push its chunk jobs onto the intake (they route
        into the chunks lane; the push wakes idle workers), in one ``MULTI``."""
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


def _is_route_more(result: object) -> bool:
    """A script's answer while the intake still holds jobs (a payload is bytes, never int)."""
    return isinstance(result, int) and not isinstance(result, bool) and result == ROUTE_MORE


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
