"""Job priority against the real services: lanes, the anti-starvation rule, long songs' chunks,
redelivery, positions, metrics and the REST ``priority`` field."""

from __future__ import annotations

import base64
import json
import re

import pytest
import requests

from common.contract import InvalidJob, Keys, parse_job
from common.queue import JobQueue
from common.status import StatusStore
from tests.waiting import wait_until

TIMEOUT_S = 30
STEMS = ["vocals"]


def ids_of(raws: list[bytes | None]) -> list[str]:
    return [json.loads(raw)["id"] if raw is not None else "-" for raw in raws]


def take_all(queue: JobQueue, worker: str = "w") -> list[str]:
    taken = []
    while (raw := queue.take_waiting(worker)) is not None:
        taken.append(raw)
    return ids_of(taken)


def test_the_lab_json_is_normal_and_priority_is_strict():
    lab = parse_job('{"songhash": "' + "a" * 64 + '"}')
    assert lab.priority is None and "priority" not in lab.to_json()
    assert parse_job('{"songhash": "' + "a" * 64 + '", "priority": "high"}').priority == "high"
    for bad in ('"HIGH"', '"urgent"', "1", '["high"]', '" high"'):
        with pytest.raises(InvalidJob, match="priority"):
            parse_job('{"songhash": "' + "a" * 64 + '", "priority": ' + bad + "}")


def test_a_high_job_pushed_behind_100000_normal_ones_is_taken_next(stack):
    """Routing costs each job once (in bounded batches); no take ever scans a lane."""
    with stack.redis.pipeline(transaction=False) as pipe:
        for n in range(100_000):
            pipe.lpush(Keys.QUEUE, f'{{"id": "n{n}", "songhash": "{n:064x}"}}')
        pipe.lpush(Keys.QUEUE, '{"id": "first-high", "songhash": "' + "f" * 64 + '", '
                               '"priority": "high"}')
        pipe.execute()
    queue = JobQueue(stack.redis)
    assert ids_of([queue.take_waiting("w")]) == ["first-high"]
    assert queue.depths() == {"intake": 0, "chunks": 0, "high": 0, "normal": 100_000}
    stack.redis.lpush(Keys.QUEUE, '{"id": "later-high", "songhash": "' + "e" * 64 + '", '
                                  '"priority": "high"}')
    stack.redis.config_resetstat()
    assert ids_of([queue.take_waiting("w")]) == ["later-high"]
    stats = stack.redis.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1  # one script: route the new job, take it
    assert stats["cmdstat_lindex"]["calls"] <= 2  # the one job routed, then the empty intake
    for reader in ("lrange", "lpos", "lrem", "lset"):
        assert f"cmdstat_{reader}" not in stats, reader
    assert ids_of([queue.take_waiting("w")]) == ["n0"]  # then the oldest normal one


def test_after_high_burst_high_jobs_a_waiting_normal_one_is_taken(stack):
    queue = JobQueue(stack.redis, high_burst=2)
    for n in range(3):
        queue.enqueue(json.dumps({"id": f"n{n}"}))
    for n in range(7):
        stack.redis.lpush(Keys.QUEUE, json.dumps({"id": f"h{n}", "priority": "high"}))
    assert take_all(queue) == ["h0", "h1", "n0", "h2", "h3", "n1", "h4", "h5", "n2", "h6"]
    # with no normal job waiting, high ones run on and the count starts again
    for n in range(3):
        queue.enqueue(json.dumps({"id": f"h{n + 7}", "priority": "high"}))
    queue.enqueue(json.dumps({"id": "n3"}))
    assert take_all(queue) == ["h7", "h8", "n3", "h9"]


def test_the_chunks_and_join_of_a_song_under_way_are_not_overtaken(stack):
    queue = JobQueue(stack.redis)
    queue.enqueue(json.dumps({"id": "long"}))
    queue.enqueue(json.dumps({"id": "old-normal"}))
    queue.enqueue(json.dumps({"id": "old-high", "priority": "high"}))
    assert ids_of([queue.take_waiting("w1"), queue.take_waiting("w1")]) == ["old-high", "long"]
    chunks = [json.dumps({"id": f"long-c{i}", "chunk_of": "long", "chunk": i}) for i in range(3)]
    queue.enqueue_chunks("long", {"total": 3}, chunks, 60)
    stack.redis.lpush(Keys.QUEUE, json.dumps({"id": "new-high", "priority": "high"}))
    queue.enqueue(json.dumps({"id": "new-normal"}))
    assert queue.depths()["chunks"] == 3
    assert ids_of([queue.take_waiting("w2"), queue.take_waiting("w3")]) == ["long-c0", "long-c1"]
    for index in (0, 1):
        assert not queue.complete_chunk("long", index, '{"id": "long-join", "join_of": "long"}',
                                        60)[1]
    stack.redis.lpush(Keys.QUEUE, json.dumps({"id": "newer-high", "priority": "high"}))
    assert ids_of([queue.take_waiting("w2")]) == ["long-c2"]
    assert queue.complete_chunk("long", 2, '{"id": "long-join", "join_of": "long"}', 60)[1]
    assert take_all(queue) == ["long-join", "new-high", "newer-high", "old-normal",
                               "new-normal"]


def test_a_dead_workers_high_job_returns_to_the_high_lanes_taking_end(stack):
    queue = JobQueue(stack.redis)
    status = StatusStore(stack.redis, ttl_s=60)
    for job_id, priority in (("n0", "normal"), ("h0", "high"), ("h1", "high"), ("h2", "high")):
        status.queued(job_id, None, "m")
        queue.enqueue(json.dumps({"id": job_id, "priority": priority}))
    queue.beat("dying", 0.05)
    assert ids_of([queue.take("dying", 0.1), queue.take_waiting("dying")]) == ["h0", "h1"]
    queue.beat("alive", 60)
    assert ids_of(wait_until(queue.redeliver_dead)) == ["h1", "h0"]  # newest first moved
    assert ids_of(stack.redis.lrange(Keys.LANE_HIGH, 0, -1)) == ["h2", "h1", "h0"]
    # two high jobs were taken while n0 waited: with HIGH_BURST 4, n0 comes after two more
    assert [queue.position(j) for j in ("h0", "h1", "n0", "h2")] == [1, 2, 3, 4]
    raw = queue.take_waiting("alive")
    queue.give_back("alive", raw, "h0")  # a retry: back at the taking end, place 1
    assert queue.position("h0") == 1 and queue.in_flight("alive") == []
    assert take_all(queue) == ["h0", "n0", "h1", "h2"]
    assert stack.redis.get(Keys.HIGH_TAKEN) == b"3"  # 6 taken, 3 redelivered or given back


def test_a_high_job_overtakes_a_queue_of_normal_ones_end_to_end(stack, make_song):
    """No worker running: three normal jobs then one high one, pushed as Redis-only users
    push; one worker with BATCH_MAX=1 finishes the high one first, then the others in order."""
    songhash = stack.upload_song(make_song(seconds=2))
    ids = ["normal-0", "normal-1", "normal-2", "high"]
    for job_id in ids:
        job = {"id": job_id, "songhash": songhash, "stems": STEMS}
        stack.push({**job, "priority": "high"} if job_id == "high" else job)
    worker = stack.start_worker(BATCH_MAX="1")
    depth = wait_until(lambda: _gauges(worker.metrics_port, "demucs_queue_depth"), 30)
    assert set(depth) == {"intake", "chunks", "high", "normal"} and depth["high"] == 0
    records = [stack.wait_for(job_id, timeout_s=180) for job_id in ids]
    assert [r["state"] for r in records] == ["done"] * 4, records
    finished = sorted(ids, key=lambda j: stack.status(j)["finished_at"])
    assert finished == ["high", "normal-0", "normal-1", "normal-2"]
    started = sorted(ids, key=lambda j: stack.status(j)["started_at"])
    assert started == finished
    assert stack.held_jobs() == 0


@pytest.fixture
def rest(api):
    """This module's REST service runs in-process (``tests.inprocess``)."""
    return api


def test_rest_takes_priority_and_shows_places_across_lanes(stack, rest, make_song):
    url = f"{rest.url}/apiv1/separate"
    songs = [make_song(seconds=1, seed=n, name=f"s{n}.mp3") for n in range(5)]
    b64 = [base64.b64encode(p.read_bytes()).decode() for p in songs]
    first = rest.post(url, json={"mp3": b64[0]}, timeout=TIMEOUT_S).json()
    second = rest.post(url, json={"mp3": b64[1], "priority": "normal"},
                           timeout=TIMEOUT_S).json()
    high = rest.post(url, json={"mp3": b64[2], "priority": "high"}, timeout=TIMEOUT_S)
    assert high.status_code == 200, high.text
    with songs[3].open("rb") as handle:
        form = rest.post(url, files={"file": ("s3.mp3", handle, "audio/mpeg")},
                             data={"priority": "high", "stems": "vocals"}, timeout=TIMEOUT_S)
    assert form.status_code == 200, form.text
    high_payloads = [json.loads(r) for r in stack.redis.lrange(Keys.LANE_HIGH, 0, -1)]
    assert [(j["id"], j["priority"]) for j in high_payloads] == \
        [(form.json()["id"], "high"), (high.json()["id"], "high")]
    assert json.loads(stack.redis.lindex(Keys.LANE_NORMAL, 0)) == {
        "id": second["id"], "songhash": second["hash"], "priority": "normal"}
    assert "priority" not in json.loads(stack.redis.lindex(Keys.LANE_NORMAL, -1))  # the lab's

    # run order: both high ones, then the normal ones, in the page and in each status
    order = [high.json(), form.json(), first, second]
    page = rest.get(f"{rest.url}/apiv1/queue", timeout=TIMEOUT_S).json()
    assert page["queue"] == [a["hash"] for a in order] and page["total"] == 4
    for place, answer in enumerate(order, start=1):
        record = rest.get(f"{rest.url}/apiv1/status/{answer['id']}",
                              timeout=TIMEOUT_S).json()
        assert record["position"] == place, (place, record)

    # refused: anything but "high" or "normal", in JSON and in a form; nothing queued
    for body in ({"priority": "urgent"}, {"priority": "HIGH"}, {"priority": 1}):
        answer = rest.post(url, json={"mp3": b64[4], **body}, timeout=TIMEOUT_S)
        assert answer.status_code == 400 and "priority" in answer.json()["error"], answer.text
    with songs[4].open("rb") as handle:
        answer = rest.post(url, files={"file": ("s4.mp3", handle, "audio/mpeg")},
                               data={"priority": "urgent"}, timeout=TIMEOUT_S)
    assert answer.status_code == 400 and "priority" in answer.json()["error"], answer.text
    assert len(stack.waiting()) == 4

    # depth per lane in /metrics: Redis-only pushes wait in the intake until routed
    stack.redis.lpush(Keys.QUEUE, '{"songhash": "' + "e" * 64 + '", "priority": "high"}')
    metrics_url = f"http://127.0.0.1:{rest.metrics_port}/metrics"  # not the API's port
    metrics = requests.get(metrics_url, timeout=TIMEOUT_S).text
    assert _parse_gauges(metrics, "demucs_rest_queue_depth") == {
        "intake": 1, "chunks": 0, "high": 2, "normal": 2}
    rest.get(f"{rest.url}/apiv1/queue", timeout=TIMEOUT_S)  # routes the intake
    metrics = requests.get(metrics_url, timeout=TIMEOUT_S).text
    assert _parse_gauges(metrics, "demucs_rest_queue_depth") == {
        "intake": 0, "chunks": 0, "high": 3, "normal": 2}


def _gauges(port: int, name: str) -> dict[str, float]:
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT_S).text
    except requests.ConnectionError:
        return {}
    return _parse_gauges(text, name)


def _parse_gauges(text: str, name: str) -> dict[str, float]:
    return {lane: float(value) for lane, value in
            re.findall(rf'^{name}{{lane="(\w+)"}} (\S+)$', text, re.MULTILINE)}
