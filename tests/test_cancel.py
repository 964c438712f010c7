"""Cancel: a queued job never starts, a running one's Demucs stops at once, a long song's chunks
and join go with it (real Redis and S3; the REST app in-process, the stand-in Demucs CLI, slowed
where a cancel must land while it runs; the lab's sample client against a uvicorn subprocess)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import devstack
from common.contract import Keys
from common.queue import JobQueue
from tests.waiting import wait_until

TIMEOUT_S = 30
LONG = {"CHUNK_OVER_S": "10", "CHUNK_S": "8", "CHUNK_OVERLAP_S": "2", "MODEL_SEGMENT_S": "0",
        "BATCH_MAX": "1"}


def _demucs_pids(marker: str) -> list[int]:
    """Processes whose command line runs Demucs on a file whose path holds ``marker`` (the
    CLI), or the warm Demucs of a worker whose environment holds it (its ``TMPDIR``)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
            warm = b"worker.demucs.warm_child" in args and \
                marker.encode() in cmdline.with_name("environ").read_bytes()
        except OSError:
            continue
        if warm or (b"demucs" in b" ".join(args) and any(marker.encode() in a for a in args)):
            pids.append(int(cmdline.parent.name))
    return pids


@pytest.fixture
def rest(api):
    """This module's REST service runs in-process (``tests.inprocess``), but for the lab's
    client."""
    return api


def _submit(rest, song: Path, callback: str | None = None) -> str:
    body: dict = {"mp3": base64.b64encode(song.read_bytes()).decode(), "stems": ["vocals"]}
    if callback:
        body["callback"] = {"url": callback}
    response = rest.post(f"{rest.url}/apiv1/separate", json=body, timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _statuses(webhook) -> list[str]:
    return [json.loads(body)["status"] for body, _ in webhook.calls]


def test_a_running_job_stops_within_seconds_and_the_worker_goes_on(stack, rest, make_song,
                                                                   webhook):
    job_id = _submit(rest, make_song(seconds=30, seed=31, name="long.mp3"), webhook.url)
    worker = stack.start_worker(BATCH_MAX="1", JOB_TIMEOUT_S="600", STANDIN_DEMUCS_SPEED="1")
    wait_until(lambda: _demucs_pids(str(stack.work_dir)), timeout_s=120,
               message=lambda: f"Demucs never started: {stack.worker_logs()}")
    asked = time.monotonic()
    response = rest.post(f"{rest.url}/apiv1/cancel/{job_id}", timeout=TIMEOUT_S)
    assert response.status_code == 202 and response.json()["state"] == "cancelling"
    wait_until(lambda: not _demucs_pids(str(stack.work_dir)), timeout_s=30,
               message=lambda: f"Demucs still runs: {_demucs_pids(str(stack.work_dir))}")
    stopped_s = time.monotonic() - asked
    print(f"FIGURE cancel: Demucs process tree gone {stopped_s:.2f} s after the request")
    assert stopped_s < 10  # 0.5 s poll + 0.25 s Demucs check by design; loose for busy CI
    record = stack.wait_for(job_id, states=("cancelled", "done", "failed"))
    assert record["state"] == "cancelled" and record["tracks"] == {}, record
    wait_until(lambda: _statuses(webhook) == ["cancelled"], timeout_s=30,
               message=lambda: f"webhooks: {webhook.calls}")
    assert list(stack.work_dir.rglob("j0*")) == []  # its temp files are gone
    assert list(stack.minio.list_objects(stack.output_bucket, recursive=True)) == []
    # the worker takes its next job
    next_id = _submit(rest, make_song(seconds=2, seed=32, name="next.mp3"))
    assert stack.wait_for(next_id)["state"] == "done"
    assert worker.poll() is None and stack.held_jobs() == 0


def test_a_queued_job_cancelled_never_starts(stack, rest, make_song, webhook):
    job_id = _submit(rest, make_song(seconds=2, seed=33), webhook.url)
    response = rest.post(f"{rest.url}/apiv1/cancel/{job_id}", timeout=TIMEOUT_S)
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert rest.get(f"{rest.url}/apiv1/status/{job_id}",
                        timeout=TIMEOUT_S).json()["state"] == "cancelled"
    again = rest.post(f"{rest.url}/apiv1/cancel/{job_id}", timeout=TIMEOUT_S)
    assert again.status_code == 409 and "already cancelled" in again.json()["reason"]
    other_id = _submit(rest, make_song(seconds=2, seed=34, name="other.mp3"))
    stack.start_worker(BATCH_MAX="1")
    assert stack.wait_for(other_id)["state"] == "done"
    record = stack.status(job_id)
    assert record["state"] == "cancelled" and record["attempts"] == 0, record
    assert not record.get("started_at")  # never ran
    wait_until(lambda: _statuses(webhook) == ["cancelled"], timeout_s=30,
               message=lambda: f"webhooks: {webhook.calls}")
    assert stack.held_jobs() == 0


def test_a_redis_only_user_cancels_with_one_key(stack, make_song):
    songhash = stack.upload_song(make_song(seconds=2, seed=35))
    stack.push({"songhash": songhash, "id": "redis-cancel", "stems": ["bass"]})
    stack.redis.set(Keys.cancel("redis-cancel"), 1, ex=3600)  # as documented in docs/api.md
    stack.push({"songhash": songhash, "id": "redis-next", "stems": ["drums"]})
    stack.start_worker(BATCH_MAX="1")
    assert stack.wait_for("redis-next")["state"] == "done"
    record = stack.status("redis-cancel")
    assert record["state"] == "cancelled" and record["error"] == "cancelled by the client"
    assert stack.held_jobs() == 0


def test_a_long_song_cancels_its_chunks_and_join(stack, make_song, webhook):
    songhash = stack.upload_song(make_song(seconds=40, seed=36))
    stack.push({"songhash": songhash, "id": "long-cancel", "callback": {"url": webhook.url}})
    stack.start_worker(**LONG, STANDIN_DEMUCS_DELAY_S="10")
    stack.wait_for_stage("long-cancel", "separating chunks", timeout_s=120)
    JobQueue(stack.redis).request_cancel("long-cancel", 3600)
    record = stack.wait_for("long-cancel", states=("cancelled", "done", "failed"),
                            timeout_s=120)
    assert record["state"] == "cancelled", record
    wait_until(lambda: stack.held_jobs() == 0, timeout_s=120,
               message=lambda: f"jobs still held: {stack.worker_logs()}")
    chunks = [stack.status(f"long-cancel-c{i}") for i in range(int(record["chunks_total"]))]
    assert {c["state"] for c in chunks if c} <= {"cancelled", "done"}
    assert sum(1 for c in chunks if c and c["state"] == "cancelled") >= 1
    assert list(stack.minio.list_objects(stack.queue_bucket, prefix="chunks/",
                                         recursive=True)) == []
    assert list(stack.minio.list_objects(stack.output_bucket, recursive=True)) == []
    assert not stack.redis.exists(Keys.chunks("long-cancel"))
    wait_until(lambda: _statuses(webhook) == ["cancelled"], timeout_s=30,
               message=lambda: f"webhooks: {webhook.calls}")


def test_cancel_answers_clearly_for_unknown_and_finished_jobs(stack, rest, make_song):
    unknown = rest.post(f"{rest.url}/apiv1/cancel/no-such-job", timeout=TIMEOUT_S)
    assert unknown.status_code == 404 and "no job" in unknown.json()["reason"]
    bad = rest.post(f"{rest.url}/apiv1/cancel/..%2Fetc", timeout=TIMEOUT_S)
    assert bad.status_code == 404
    job_id = _submit(rest, make_song(seconds=2, seed=37))
    stack.start_worker(BATCH_MAX="1")
    assert stack.wait_for(job_id)["state"] == "done"
    done = rest.post(f"{rest.url}/apiv1/cancel/{job_id}", timeout=TIMEOUT_S)
    assert done.status_code == 409 and "already done" in done.json()["reason"]


def test_with_api_keys_a_client_cancels_only_its_own(stack, start_rest, make_song):
    keys = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789ab"}
    rest = start_rest(API_KEYS=",".join(f"{n}:{k}" for n, k in keys.items()))
    alice, bob = ({"Authorization": f"Bearer {keys[n]}"} for n in ("alice", "bob"))
    song = make_song(seconds=2, seed=38)
    body = {"mp3": base64.b64encode(song.read_bytes()).decode(), "stems": ["vocals"]}
    ids = {}
    for name, headers in (("alice", alice), ("bob", bob)):
        answer = rest.post(f"{rest.url}/apiv1/separate", json=body, headers=headers,
                               timeout=TIMEOUT_S)
        assert answer.status_code == 200, answer.text
        ids[name] = answer.json()["id"]
    denied = rest.post(f"{rest.url}/apiv1/cancel/{ids['alice']}", headers=bob,
                           timeout=TIMEOUT_S)
    assert denied.status_code == 404  # not 403: another's job is not confirmed to exist
    shared = rest.post(f"{rest.url}/apiv1/cancel/{ids['alice']}", headers=alice,
                           timeout=TIMEOUT_S)  # bob's request follows alice's separation
    assert shared.status_code == 409 and "other clients" in shared.json()["reason"]
    own = rest.post(f"{rest.url}/apiv1/cancel/{ids['bob']}", headers=bob, timeout=TIMEOUT_S)
    assert own.status_code == 200 and own.json()["state"] == "cancelled"
    bob_view = rest.get(f"{rest.url}/apiv1/status/{ids['bob']}", headers=bob,
                            timeout=TIMEOUT_S).json()
    alice_view = rest.get(f"{rest.url}/apiv1/status/{ids['alice']}", headers=alice,
                              timeout=TIMEOUT_S).json()
    assert bob_view["state"] == "cancelled" and alice_view["state"] == "queued"
    # nobody else waits on alice's separation any more: she may cancel it
    mine = rest.post(f"{rest.url}/apiv1/cancel/{ids['alice']}", headers=alice,
                         timeout=TIMEOUT_S)
    assert mine.status_code == 200 and mine.json()["state"] == "cancelled"


def test_the_sample_client_cancels(stack, start_rest, make_song):
    rest = start_rest()  # the lab's client speaks HTTP to a real server
    job_id = _submit(rest, make_song(seconds=2, seed=39))
    run = subprocess.run([sys.executable, str(devstack.ROOT / "sample-requests" /
                                              "short-sample-request.py"), "--cancel", job_id],
                         env={**stack.env, "REST": rest.host}, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["state"] == "cancelled"
    assert stack.status(job_id)["state"] == "cancelled"


def test_a_job_that_ends_between_the_read_and_the_cancel_is_a_409(stack, api, make_song):
    """The cancel route reads a queued job, then a worker finishes it before the cancel is
    written: the record keeps ``done`` (never moved from an end) and the answer must say so,
    not 200 "cancelled" (the route's second half, run on a record that ended meanwhile)."""
    from fastapi import HTTPException

    from common.contract import Status
    from rest.routes.jobs import cancel_job
    from rest.tenancy import Anonymous

    backend = api.app.state.backend
    answer = api.post(f"{api.url}/apiv1/separate", timeout=30, json={
        "mp3": base64.b64encode(make_song(seconds=1.0).read_bytes()).decode(),
        "stems": ["vocals"]}).json()
    stack.worker_in_process().run(burst=True)  # it ends after the route read "queued"
    assert stack.status(answer["id"])["state"] == "done"
    with pytest.raises(HTTPException) as refused:
        cancel_job(backend, Anonymous(backend), answer["id"], answer["id"], Status.QUEUED)
    assert refused.value.status_code == 409 and "already done" in refused.value.detail
    assert stack.status(answer["id"])["state"] == "done"
