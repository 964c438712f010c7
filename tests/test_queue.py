"""The queue protocol and status records against a real redis-server."""

from __future__ import annotations

import time

from separation.contract import Keys
from separation.queue import JobQueue
from separation.status import StatusStore


def test_fifo_take_and_ack(stack):
    queue = JobQueue(stack.redis)
    for i in range(3):
        queue.enqueue(f'{{"n": {i}}}')
    assert queue.waiting() == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
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
    time.sleep(0.3)
    assert sorted(queue.redeliver_dead()) == [b"a", b"b"]
    assert queue.in_flight("dead") == [] and queue.in_flight("alive") == [b"c"]
    assert queue.waiting() == [b"a", b"b", b"d"]  # redelivered jobs run next, oldest first


def test_give_back_and_dead_letter_are_atomic_moves(stack):
    queue = JobQueue(stack.redis)
    queue.enqueue("x")
    queue.enqueue("y")
    raw = queue.take("w", 0.1)
    queue.give_back("w", raw)
    assert queue.in_flight("w") == [] and queue.waiting() == [b"x", b"y"]
    raw = queue.take("w", 0.1)
    queue.dead_letter("w", raw, "because", attempts=2)
    assert queue.in_flight("w") == [] and queue.waiting() == [b"y"]
    entry = queue.dead_letters()[0]
    assert entry["job"] == "x" and entry["error"] == "because" and entry["attempts"] == 2


def test_attempts_count_redeliveries_and_restart_for_a_new_request(stack):
    status = StatusStore(stack.redis, ttl_s=60)
    status.queued("j1", "a" * 64, "htdemucs")
    assert status.get("j1")["state"] == "queued"
    assert status.start_attempt("j1", "w1") == 1
    assert status.start_attempt("j1", "w2") == 2  # redelivered while running
    status.requeued("j1", "S3 down")
    assert status.start_attempt("j1", "w2") == 3
    status.done("j1", {"vocals": "k"}, 1.0)
    assert status.start_attempt("j1", "w3") == 1  # pushed again after it finished
    record = status.get("a" * 64)  # by songhash
    assert record["id"] == "j1" and record["state"] == "running" and record["worker"] == "w3"
    assert 0 < stack.redis.ttl(Keys.job("j1")) <= 60
