"""The queue protocol and status records against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import random

import redis.asyncio

from common.contract import Keys
from common.queue import DEFAULT_HIGH_BURST, JobQueue
from common.status import StatusStore
from tests.waiting import wait_until


def waiting(stack, burst: int = DEFAULT_HIGH_BURST) -> list[bytes]:
    """Every queued payload in the order they will run, by a step-by-step simulation of the
    rule (the service itself never reads all, and computes places in closed form)."""
    JobQueue(stack.redis, high_burst=burst).route()
    assert stack.redis.llen(Keys.QUEUE) == 0
    chunks, high, normal = (list(reversed(stack.redis.lrange(key, 0, -1)))
                            for key in (Keys.LANE_CHUNKS, Keys.LANE_HIGH, Keys.LANE_NORMAL))
    streak = int(stack.redis.get(Keys.HIGH_STREAK) or 0)
    order = chunks
    while high or normal:
        if normal and (streak >= burst or not high):
            order.append(normal.pop(0))
            streak = 0
        else:
            order.append(high.pop(0))
            streak = streak + 1 if normal else 0
    return order


def redis_now_ms(stack) -> float:
    seconds, microseconds = stack.redis.time()
    return seconds * 1000 + microseconds / 1000


def test_fifo_take_and_ack(stack):
    queue = JobQueue(stack.redis)
    for i in range(3):
        queue.enqueue(f'{{"n": {i}}}')
    assert waiting(stack) == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    assert queue.take("w1", 0.1) == b'{"n": 0}'
    assert queue.take_waiting("w1") == b'{"n": 1}'
    assert queue.in_flight("w1") == [b'{"n": 1}', b'{"n": 0}']
    queue.ack("w1", b'{"n": 0}')
    assert queue.in_flight("w1") == [b'{"n": 1}']
    assert queue.take("w2", 0.1) == b'{"n": 2}'
    assert queue.take("w2", 0.1) is None  # empty: the block times out


def test_dead_workers_jobs_are_redelivered_first_in_order(stack):
    queue = JobQueue(stack.redis)
    for payload in (b"a", b"b", b"c", b"d"):
        queue.enqueue(payload.decode())
    queue.beat("alive", 10)
    queue.beat("dead", 0.2)
    assert queue.take("dead", 0.1) == b"a"
    assert queue.take_waiting("dead") == b"b"
    assert queue.take("alive", 0.1) == b"c"
    assert queue.redeliver_dead() == []  # heartbeat still fresh
    assert sorted(wait_until(queue.redeliver_dead)) == [b"a", b"b"]
    assert queue.in_flight("dead") == [] and queue.in_flight("alive") == [b"c"]
    assert waiting(stack) == [b"a", b"b", b"d"]  # redelivered jobs run next, oldest first


def test_give_back_and_dead_letter_are_atomic_moves(stack):
    queue = JobQueue(stack.redis)
    queue.enqueue("x")
    queue.enqueue("y")
    raw = queue.take("w", 0.1)
    queue.give_back("w", raw)
    assert queue.in_flight("w") == [] and waiting(stack) == [b"x", b"y"]
    raw = queue.take("w", 0.1)
    queue.dead_letter("w", raw, "because", attempts=2)
    assert queue.in_flight("w") == [] and waiting(stack) == [b"y"]
    entry = queue.dead_letters()[0]
    assert entry["job"] == "x" and entry["error"] == "because" and entry["attempts"] == 2


def test_attempts_count_redeliveries_and_an_ended_job_is_not_started_again(stack):
    status = StatusStore(stack.redis, ttl_s=60)
    status.queued("j1", "a" * 64, "htdemucs")
    assert status.get("j1")["state"] == "queued"
    assert status.start_attempt("j1", "w1") == 1
    assert status.start_attempt("j1", "w2") == 2  # redelivered while running
    status.requeued("j1", "S3 down")
    assert status.start_attempt("j1", "w2") == 3
    status.done("j1", {"vocals": "k"}, 1.0)
    assert status.start_attempt("j1", "w3") == 0  # pushed again after it finished: it ended
    record = status.get("a" * 64)  # by songhash
    assert record["id"] == "j1" and record["state"] == "done" and record["worker"] == "w2"
    status.queued("j2", None, "m")
    status.cancelled("j2", "cancelled by the client")
    assert status.start_attempt("j2", "w1") == 0 and status.get("j2")["state"] == "cancelled"
    assert 0 < stack.redis.ttl(Keys.job("j1")) <= 60


def test_dead_workers_are_found_in_the_registry_without_scanning(stack):
    queue = JobQueue(stack.redis)
    with stack.redis.pipeline(transaction=False) as pipe:
        for i in range(5000):  # a keyspace a SCAN would have to walk
            pipe.set(f"job:other-{i}", "x")
        pipe.execute()
    queue.enqueue("j")
    queue.beat("gone", 0.05)
    queue.beat("alive", 60)
    assert queue.take("gone", 0.1) == b"j"
    assert stack.redis.zscore(Keys.WORKERS, "alive") > stack.redis.zscore(Keys.WORKERS, "gone")
    stack.redis.config_resetstat()
    assert wait_until(queue.redeliver_dead) == [b"j"]
    stats = stack.redis.info("commandstats")
    assert "cmdstat_scan" not in stats and "cmdstat_keys" not in stats
    assert stack.redis.zrange(Keys.WORKERS, 0, -1) == [b"alive"]  # the dead one is forgotten
    queue.forget("alive")
    assert stack.redis.zcard(Keys.WORKERS) == 0
    assert not stack.redis.exists(Keys.heartbeat("alive"))


def test_a_worker_that_beats_again_in_time_keeps_its_jobs(stack):
    queue = JobQueue(stack.redis)
    queue.enqueue("j")
    queue.beat("slow", 0.05)
    assert queue.take("slow", 0.1) == b"j"
    wait_until(lambda: stack.redis.zscore(Keys.WORKERS, "slow") < redis_now_ms(stack))
    queue.beat("slow", 60)  # past its time, but back before anyone redelivered
    assert queue.redeliver_dead() == [] and queue.in_flight("slow") == [b"j"]


def test_positions_from_counters_match_the_list_whoever_pushes_and_takes(stack):
    """Random REST enqueues and Redis-only pushes of both priorities, chunks, takes, batches,
    give-backs, joins and deaths: every tracked job's position is its place in the run order,
    and the workers then take the jobs in exactly that order."""
    burst = 2
    queue = JobQueue(stack.redis, high_burst=burst, route_batch=3)
    status = StatusStore(stack.redis, ttl_s=600)
    rng = random.Random(23)
    tracked: set[str] = set()
    held: dict[str, list[bytes]] = {"w1": [], "w2": []}
    for step in range(400):
        op = rng.choice(["rest", "rest", "redis-only", "redis-only", "chunk", "take", "batch",
                         "batch", "give-back", "join", "die"])
        worker = rng.choice(list(held))
        priority = rng.choice([{}, {"priority": "high"}, {"priority": "normal"}])
        if op == "rest":
            job_id = f"r{step}"
            status.queued(job_id, None, "m")
            queue.enqueue(json.dumps({"id": job_id, **priority}))
            tracked.add(job_id)
        elif op == "redis-only":
            for n in range(rng.randrange(1, 5)):  # routed later, in batches of 3
                stack.redis.lpush(Keys.QUEUE, json.dumps({"id": f"x{step}-{n}", **priority}))
        elif op == "chunk":
            stack.redis.lpush(Keys.QUEUE, json.dumps({"id": f"x{step}-c0", "chunk_of": "p",
                                                      "chunk": 0}))
        elif op in ("take", "batch"):
            take = queue.take(worker, 0.01) if op == "take" else queue.take_waiting(worker)
            if take is not None:
                held[worker].append(take)
                tracked.discard(json.loads(take)["id"])
        elif op == "give-back" and held[worker]:
            raw = held[worker].pop(rng.randrange(len(held[worker])))
            job_id = json.loads(raw)["id"]
            from_rest = job_id.startswith("r")
            queue.give_back(worker, raw, job_id if from_rest else None)
            if from_rest:
                tracked.add(job_id)
        elif op == "join":
            parent = f"p{step}"
            stack.redis.hset(Keys.chunks(parent), "total", 1)
            queue.complete_chunk(parent, 0, json.dumps({"id": f"x{step}-join",
                                                        "join_of": parent}), 60)
        elif op == "die" and held[worker]:
            queue.beat(worker, 0.001)
            wait_until(lambda dying=worker: queue.redeliver_dead() is not None
                       and stack.redis.zscore(Keys.WORKERS, dying) is None)
            held[worker] = []
        positions = {job_id: queue.position(job_id) for job_id in tracked}  # routes first
        in_line = [json.loads(raw)["id"] for raw in waiting(stack, burst)]
        for job_id in tracked:
            assert positions[job_id] == in_line.index(job_id) + 1, (step, op, job_id)
    expected = waiting(stack, burst)
    assert len(expected) > 20 and any(b'"high"' in raw for raw in expected)
    taken = []
    while (raw := queue.take_waiting("drain")) is not None:
        taken.append(raw)
    assert taken == expected


def test_a_page_of_the_queue_reads_only_that_page(stack):
    async def pages() -> list[tuple[int, list[bytes]]]:
        port = stack.redis.connection_pool.connection_kwargs["port"]
        async with redis.asyncio.Redis(port=port) as aio:
            queue = JobQueue(stack.redis, aio)
            for i in range(10):
                queue.enqueue(str(i))
            return [await queue.page(0, 3), await queue.page(8, 5), await queue.page(10, 5)]

    assert asyncio.run(pages()) == [(10, [b"0", b"1", b"2"]), (10, [b"8", b"9"]), (10, [])]


def test_pages_of_mixed_lanes_follow_the_run_order(stack):
    """Chunks, high and normal jobs (some still in the intake): every page is its slice of
    the order the jobs are then taken in."""
    rng = random.Random(7)
    for n in range(60):
        kind = rng.choice(["normal", "normal", "high", "chunk"])
        job = {"id": f"j{n}", "priority": "high"} if kind == "high" else \
            {"id": f"j{n}", "chunk_of": "p", "chunk": n} if kind == "chunk" else {"id": f"j{n}"}
        stack.redis.lpush(Keys.QUEUE, json.dumps(job))
    stack.redis.set(Keys.HIGH_STREAK, 1)

    async def all_pages() -> list[tuple[int, list[bytes]]]:
        port = stack.redis.connection_pool.connection_kwargs["port"]
        async with redis.asyncio.Redis(port=port) as aio:
            queue = JobQueue(stack.redis, aio, high_burst=3, route_batch=7)
            return [await queue.page(offset, 7) for offset in range(0, 63, 7)]

    pages = asyncio.run(all_pages())
    assert {total for total, _ in pages} == {60}
    listed = [raw for _, raws in pages for raw in raws]
    queue = JobQueue(stack.redis, high_burst=3)
    taken = []
    while (raw := queue.take_waiting("w")) is not None:
        taken.append(raw)
    assert listed == taken and len(taken) == 60


def _lose_to_redelivery(stack, queue: JobQueue) -> bytes:
    """w1 takes a job, misses its heartbeat, and the job is redelivered to its lane."""
    queue.enqueue('{"id": "j1"}')
    queue.beat("w1", 0.05)
    raw = queue.take_waiting("w1")
    assert raw == b'{"id": "j1"}'
    assert wait_until(queue.redeliver_dead) == [raw]
    return raw


def test_a_worker_that_lost_its_job_to_redelivery_cannot_give_it_back(stack):
    """A paused worker comes back after its job was redelivered: its give-back must change
    nothing (before: a second copy of the job waited in the lane)."""
    queue = JobQueue(stack.redis)
    status = StatusStore(stack.redis, ttl_s=60)
    status.queued("j1", None, "m")
    raw = _lose_to_redelivery(stack, queue)
    assert queue.give_back("w1", raw, "j1") is False
    assert waiting(stack) == [raw]  # one copy, as redelivery left it
    assert queue.take_waiting("w2") == raw
    assert queue.give_back("w1", raw, "j1") is False  # w2 holds it now: w1 still cannot
    assert queue.in_flight("w2") == [raw] and waiting(stack) == []
    assert queue.give_back("w2", raw, "j1") is True and waiting(stack) == [raw]


def test_a_worker_that_lost_its_job_cannot_dead_letter_or_ack_it(stack):
    queue = JobQueue(stack.redis)
    raw = _lose_to_redelivery(stack, queue)
    assert queue.dead_letter("w1", raw, "late", attempts=3) is False
    assert queue.dead_letters() == [] and waiting(stack) == [raw]
    assert queue.take_waiting("w2") == raw
    assert queue.ack("w1", raw) is False and queue.in_flight("w2") == [raw]
    assert queue.holds("w2", raw) and not queue.holds("w1", raw)
    assert queue.ack("w2", raw) is True and queue.in_flight("w2") == []


def test_give_back_held_after_an_outage_moves_only_what_is_still_held(stack):
    queue = JobQueue(stack.redis)
    raw = _lose_to_redelivery(stack, queue)
    stack.redis.lpush(Keys.processing("w1"), raw)  # a stale copy read before the redelivery
    assert queue.take_waiting("w2") == raw
    stack.redis.lrem(Keys.processing("w1"), 1, raw)  # ... gone by the time w1 gives back
    queue.give_back_held("w1")
    assert waiting(stack) == [] and queue.in_flight("w2") == [raw]


def test_a_final_status_is_final_whatever_a_late_worker_writes(stack):
    status = StatusStore(stack.redis, ttl_s=60)
    status.queued("j1", None, "m")
    assert status.start_attempt("j1", "w1") == 1
    assert status.start_attempt("j1", "w2") == 2  # redelivered
    assert status.done("j1", {"vocals": "k"}, 1.0) is True  # w2 finished it
    assert status.requeued("j1", "late w1: attempt failed") is False
    assert status.failed("j1", "late w1: gave up") is False
    assert status.cancelled("j1", "late cancel") is False
    assert status.done("j1", {"vocals": "other"}, 2.0) is True  # it is done: nothing written
    status.update("j1", stage="encoding", progress=90)
    assert status.start_attempt("j1", "w3") == 0  # taken again: it already ended
    record = status.get("j1")
    assert (record["state"], record["stage"], record["progress"], record["tracks"]) == \
        ("done", "done", 100, {"vocals": "k"})
    status.update("j1", callback_error="refused")  # annotations of an ended job still land
    assert status.get("j1")["callback_error"] == "refused"
    assert status.announce("j1") is True and status.announce("j1") is False  # one webhook
    assert 0 < stack.redis.ttl(Keys.announced("j1")) <= 60
