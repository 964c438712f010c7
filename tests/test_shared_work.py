"""Sharing work never shares secrets (API_KEYS): what a client sees of another client's
separation of the same song is the shared result alone.

Alice sends a song with a callback to an internal address (refused by the worker's guard, which
records why in her job); Bob sends the same song and joins her job. Bob's status, his 429s and
his webhooks show the shared result (state, stage, progress, tracks, model, duration) under his
own ids, never Alice's callback, its error, her job's times, timings, worker or id. Joined
callbacks are counted per client: Bob using up his cannot refuse Alice's. Against the real
REST service, worker (Demucs CLI), redis-server and S3 server.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import requests

from common.contract import Keys
from rest.owners import OWNER_FIELDS, shown
from tests.test_owners import API_KEYS, Client
from tests.waiting import wait_until

ALICE_HOOK = "http://10.20.30.40:8443/alice-internal-hook?token=alice-secret"
ALICE_WORDS = ("10.20.30.40", "alice-internal-hook", "alice-secret")
RUN_FIELDS = ("callback_error", "worker", "elapsed_s", "runs_as", "client")
"""Fields of the working job's record (or bookkeeping) that a view never shows."""


def test_a_client_that_joins_sees_the_result_and_nothing_of_the_other_request(
        stack, start_rest, make_song, webhook):
    rest = start_rest(API_KEYS=API_KEYS)
    alice, bob = Client(rest, "alice"), Client(rest, "bob")
    song = make_song(seconds=2, seed=3)
    a_job = alice.send(song, ALICE_HOOK)["id"]

    # Bob joins Alice's job with callbacks until his own slots are used up
    b_jobs = [bob.send(song, webhook.url)["id"] for _ in range(20)]
    full = _post(bob, song, webhook.url)
    assert full.status_code == 429, full.text
    assert a_job not in full.text and "your requests" in full.json()["reason"]
    # ... which leaves Alice's own: her second request with a callback still joins her job
    again = _post(alice, song, webhook.url)
    assert again.status_code == 200, again.text
    assert len(stack.waiting()) == 1  # one separation for all of them

    stack.start_worker(WEBHOOK_ALLOW_LOCAL="false", WEBHOOK_ALLOWLIST="127.0.0.1/32")
    assert alice.done(a_job)["state"] == "done"
    mine = wait_until(lambda: (lambda r: r if r.get("callback_error") else None)(
        alice.status(a_job)), timeout_s=30)  # recorded once the webhooks were sent
    assert "10.20.30.40" in mine["callback_error"] and mine["started_at"]  # hers, to her

    for job_id in (b_jobs[0], b_jobs[-1]):
        view = bob.done(job_id)
        assert view["state"] == "done" and view["id"] == job_id, view
        assert set(view["tracks"]) == set(mine["tracks"]) and view["progress"] == 100
        assert view["model"] == mine["model"] and view["duration_s"] == mine["duration_s"]
        assert view["timings"] == {} and view["attempts"] == 0, view
        assert view.get("started_at") is None and view.get("finished_at") is None, view
        text = json.dumps(view)
        assert not [word for word in (a_job, *ALICE_WORDS) if word in text], view
        assert not [name for name in RUN_FIELDS if view.get(name)], view
    assert bob.queue()["total"] == 0

    wait_until(lambda: len(webhook.calls) == 21, timeout_s=120,  # sent one by one: a busy CI
               message=lambda: f"{len(webhook.calls)} webhooks")
    told = [json.loads(body) for body, _ in webhook.calls]
    assert sorted(t["id"] for t in told if t["id"] in b_jobs) == sorted(b_jobs)
    assert all(a_job not in json.dumps(t) for t in told if t["id"] in b_jobs)
    assert stack.redis.exists(Keys.joined(a_job), Keys.joined_by(a_job)) == 0  # settled


def _post(client: Client, song: Path, callback: str) -> requests.Response:
    return requests.post(f"{client.url}/apiv1/separate", headers=client.headers, timeout=30,
                         json={"mp3": base64.b64encode(song.read_bytes()).decode(),
                               "callback": {"url": callback}})


def test_a_failed_shared_separation_is_told_in_the_views_words():
    run = {"id": "a" * 32, "state": "failed", "stage": "failed", "error":
           f"job {'a' * 32}: internal error", "callback_error": "callback host 'x' ...",
           "worker": "w-1", "started_at": 1.0, "finished_at": 2.0, "elapsed_s": 1.0,
           "timings": {"separate": 1.0}, "tracks": {}, "model": "m", "client": "alice"}
    view = {"id": "b" * 32, "state": "queued", "stage": "queued", "error": "", "tracks": {},
            "runs_as": "a" * 32, "client": "bob", "name": "song.mp3", "started_at": None,
            "finished_at": None, "attempts": 0, "timings": {}}
    seen = {name: value for name, value in shown(view, run, set(), "bob").items()
            if name not in OWNER_FIELDS}  # bookkeeping, which the route leaves out
    assert seen["state"] == "failed" and seen["error"] == f"job {'b' * 32}: internal error"
    assert "a" * 32 not in json.dumps(seen)
    assert not [name for name in ("callback_error", "worker", "elapsed_s") if name in seen]
    assert (seen["started_at"], seen["finished_at"], seen["timings"]) == (None, None, {})
