"""The worker end to end: real redis-server, real S3 server; the real Demucs CLI for a song's
path, a model refused before Demucs and the CUDA fallback, the stand-in for the worker's own
behaviour (signals, order, objects, callbacks)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import requests
from mutagen.mp3 import MP3
from standardwebhooks import Webhook

import devstack
from common.contract import TRACKS, Keys
from common.webhook import verify_delivery
from tests.waiting import wait_until

REAL_CLI = pytest.mark.usefixtures("demucs_cli")  # the path end to end on the real Demucs CLI
SLOW_STANDIN = {"STANDIN_DEMUCS_DELAY_S": "3"}  # a signal lands while the stand-in runs
HUNG_STANDIN = {"STANDIN_DEMUCS_HANG": "*"}  # it runs until killed, however busy the machine

SECRET = "test-webhook-secret"


def _mp3_duration(stack, key: str, tmp: Path) -> float:
    path = tmp / key
    stack.minio.fget_object(stack.output_bucket, key, str(path))
    return MP3(path).info.length


@REAL_CLI
def test_job_runs_end_to_end(stack, song, webhook, tmp_path):
    songhash = stack.upload_song(song)
    worker = stack.start_worker(WEBHOOK_SECRET=SECRET)
    stack.push({"songhash": songhash, "id": "e2e-1",
                "callback": {"url": webhook.url, "data": {"mp3": "short-hop", "n": 7}}})
    record = stack.wait_for("e2e-1")
    assert record["state"] == "done", record
    assert record["attempts"] == 1 and record["progress"] == 100
    assert set(record["tracks"]) == set(TRACKS)

    input_s = MP3(song).info.length
    for track in TRACKS:
        key = f"{songhash}-{track}.mp3"
        assert record["tracks"][track] == key
        stat = stack.minio.stat_object(stack.output_bucket, key)
        assert stat.metadata["x-amz-meta-model"] == "demucs_unittest"
        assert abs(_mp3_duration(stack, key, tmp_path) - input_s) <= 0.1, track

    # the webhook: once, signed, with the caller's data echoed back
    deadline = time.monotonic() + 10
    while not webhook.calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(webhook.calls) == 1
    body, headers = webhook.calls[0]
    assert verify_delivery(body, headers, SECRET)
    assert not verify_delivery(body, headers, "another secret")
    # any Standard Webhooks receiver verifies it with the spec's own package
    assert Webhook(SECRET.encode()).verify(body, dict(headers))["id"] == "e2e-1"
    payload = json.loads(body)
    assert payload["status"] == "done" and payload["id"] == "e2e-1"
    assert payload["data"] == {"mp3": "short-hop", "n": 7}
    assert payload["tracks"]["vocals"] == f"{songhash}-vocals.mp3"

    # logs: in the Redis list, in the documented format; nothing left in flight
    lines = [line.decode() for line in stack.redis.lrange(Keys.LOGGING, 0, -1)]
    assert any(".worker.info:job e2e-1: done" in line for line in lines), lines[:5]
    assert stack.held_jobs() == 0

    # health and metrics endpoints
    health = requests.get(f"http://127.0.0.1:{worker.metrics_port}/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["ok"] is True
    metrics = requests.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).text
    assert 'demucs_jobs_total{outcome="done",reason=""} 1.0' in metrics


def test_object_job_with_stem_subset(stack, make_song):
    song = make_song(seconds=3)
    stack.minio.make_bucket("songs-" + stack.queue_bucket)
    stack.minio.fput_object("songs-" + stack.queue_bucket, "albums/one/song.mp3", str(song))
    stack.start_worker()
    stack.push({"bucket": "songs-" + stack.queue_bucket, "object": "albums/one/song.mp3",
                "id": "obj-1", "stems": ["acapella", "instrumental"]})
    record = stack.wait_for("obj-1")
    assert record["state"] == "done", record
    from common.contract import sha256_file
    songhash = sha256_file(song)
    assert record["songhash"] == songhash
    assert record["tracks"] == {"instrumental": f"{songhash}-instrumental.mp3",
                                "acapella": f"{songhash}-acapella.mp3"}
    keys = {o.object_name for o in stack.minio.list_objects(stack.output_bucket)}
    assert keys == set(record["tracks"].values())


def test_jobs_are_taken_in_the_order_pushed(stack, make_song):
    hashes = [stack.upload_song(make_song(seconds=1.5, seed=i, name=f"s{i}.mp3"))
              for i in range(3)]
    for i, songhash in enumerate(hashes):
        stack.push({"songhash": songhash, "id": f"order-{i}", "stems": ["vocals"]})
    stack.start_worker(BATCH_MAX="1")
    records = [stack.wait_for(f"order-{i}") for i in range(3)]
    assert [r["state"] for r in records] == ["done"] * 3
    started = [r["started_at"] for r in records]
    assert started == sorted(started)


@REAL_CLI
def test_a_model_not_installed_fails_at_start(stack, make_song):
    """A job naming a model the registry does not hold never reaches Demucs (which would look
    the name up on the model hub): failed at start, one attempt, with the installed ones."""
    songhash = stack.upload_song(make_song(seconds=1))
    stack.start_worker()
    stack.push({"songhash": songhash, "id": "noweights", "model": "htdemucs"})
    record = stack.wait_for("noweights")
    assert record["state"] == "failed" and record["attempts"] == 1
    assert "model 'htdemucs' is not one this worker has installed; models: demucs_unittest" \
        in record["error"]
    dead = [json.loads(e) for e in stack.redis.lrange(Keys.DEAD_LETTER, 0, -1)]
    assert len(dead) == 1 and "htdemucs" in dead[0]["error"]
    assert "-m demucs" not in stack.worker_logs()


def test_killed_worker_job_is_finished_by_another(stack, song):
    songhash = stack.upload_song(song)
    first = stack.start_worker(**HUNG_STANDIN)
    stack.push({"songhash": songhash, "id": "killed"})
    stack.wait_for_stage("killed", "separating")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert stack.processing() == 1  # still held by the dead worker, not lost
    stack.start_worker()
    record = stack.wait_for("killed")
    assert record["state"] == "done", record
    assert record["attempts"] == 2
    assert stack.held_jobs() == 0


def test_sigterm_during_a_job_finishes_it_and_exits_0(stack, song):
    songhash = stack.upload_song(song)
    worker = stack.start_worker(SHUTDOWN_GRACE_S="120", **SLOW_STANDIN)  # ample grace
    stack.push({"songhash": songhash, "id": "term"})
    stack.wait_for_stage("term", "separating")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=150) == 0
    record = stack.status("term")
    assert record["state"] == "done", record
    assert stack.processing() == 0


def test_sigterm_past_the_grace_requeues_the_job(stack, song):
    songhash = stack.upload_song(song)
    worker = stack.start_worker(SHUTDOWN_GRACE_S="0.2", **HUNG_STANDIN)
    stack.push({"songhash": songhash, "id": "requeued"})
    stack.wait_for_stage("requeued", "separating")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    record = stack.status("requeued")
    assert record["state"] == "queued" and record["attempts"] == 0, record
    assert len(stack.waiting()) == 1 and stack.processing() == 0
    stack.start_worker()
    assert stack.wait_for("requeued")["state"] == "done"


@REAL_CLI
def test_cuda_failure_retries_once_on_the_cpu(stack, make_song):
    # This machine's torch has no CUDA: Demucs on -d cuda fails, as a broken GPU would.
    songhash = stack.upload_song(make_song(seconds=1.5))
    stack.start_worker(DEMUCS_DEVICE="cuda")
    stack.push({"songhash": songhash, "id": "cuda", "stems": ["vocals"]})
    record = stack.wait_for("cuda")
    assert record["state"] == "done" and record["attempts"] == 1, record
    assert "retrying once on the CPU" in stack.worker_logs()


def test_sigterm_while_redis_and_minio_are_down_exits_0_without_a_traceback(stack):
    dead_redis, dead_s3 = devstack.free_port(), devstack.free_port()
    worker = stack.start_worker(REDIS_PORT=str(dead_redis),
                                MINIO_ENDPOINT=f"127.0.0.1:{dead_s3}")
    deadline = time.monotonic() + 60
    while "MinIO unreachable" not in worker.log_path.read_text():
        assert worker.poll() is None and time.monotonic() < deadline, worker.log_path.read_text()
        time.sleep(0.1)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    log = worker.log_path.read_text()
    assert "Traceback" not in log and "stopped before it started" in log, log


def test_callbacks_into_the_service_network_are_refused_and_recorded(stack, make_song,
                                                                      webhook, api):
    """With local targets refused (the default outside make demo), a callback to loopback is
    not sent, the job still ends done, and its status says why; an allowlisted one is sent."""
    songhash = stack.upload_song(make_song(seconds=1))
    strict = stack.start_worker(WEBHOOK_ALLOW_LOCAL="false")
    stack.push({"songhash": songhash, "id": "refused", "stems": ["vocals"],
                "callback": {"url": webhook.url, "data": {"n": 1}}})
    assert stack.wait_for("refused")["state"] == "done"
    # the refusal is recorded as the outcome's webhooks are sent, just after "done"
    record = wait_until(lambda: (r := stack.status("refused")).get("callback_error") and r)
    assert "does not resolve to a public address" in record["callback_error"], record
    assert webhook.calls == []
    status = api.get(f"{api.url}/apiv1/status/refused", timeout=10).json()
    assert "webhook" not in status["timings"]  # a callback's duration is not shown

    strict.send_signal(signal.SIGTERM)
    assert strict.wait(timeout=60) == 0
    stack.start_worker(WEBHOOK_ALLOW_LOCAL="false", WEBHOOK_ALLOWLIST="127.0.0.0/8")
    stack.push({"songhash": songhash, "id": "allowed", "stems": ["bass"],
                "callback": {"url": webhook.url, "data": {"n": 2}}})
    assert stack.wait_for("allowed")["state"] == "done"
    deadline = time.monotonic() + 30
    while not webhook.calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads(webhook.calls[0][0])["data"] == {"n": 2}
