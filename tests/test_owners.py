"""API_KEYS: each client sees and removes only its own songs, against the real services.

Alice, Bob and Carol have keys. Another client's job, status, track, original, removal or
queue entry is answered 404 with the very words a song nobody sent gets; the same song sent
by several clients is separated once, and each sees its own job under its own id; a track's
object is deleted only when its last owner removes it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest
import requests

from common.contract import TRACKS, Keys
from common.settings import Settings
from tests.waiting import wait_until

TIMEOUT_S = 30
KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789ab",
        "carol": "carol-key-0123456789"}
API_KEYS = ",".join(f"{name}:{key}" for name, key in KEYS.items())
NOBODY = "0" * 64  # a songhash no client ever sent


class Client:
    """One client of the API, with its key."""

    def __init__(self, rest, name: str) -> None:
        self.rest, self.url = rest, rest.url
        self.headers = {"Authorization": f"Bearer {KEYS[name]}"}
        self.key = KEYS[name]

    def get(self, path: str, **kwargs):
        return self.rest.get(self.url + path, headers=self.headers, timeout=TIMEOUT_S, **kwargs)

    def delete(self, path: str):
        return self.rest.delete(self.url + path, headers=self.headers, timeout=TIMEOUT_S)

    def send(self, song, callback: str | None = None) -> dict:
        body: dict = {"mp3": base64.b64encode(song.read_bytes()).decode()}
        if callback:
            body["callback"] = {"url": callback, "data": {"by": self.key[:5]}}
        answer = self.rest.post(f"{self.url}/apiv1/separate", json=body, headers=self.headers,
                               timeout=TIMEOUT_S)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def status(self, ref: str) -> dict:
        return self.get(f"/apiv1/status/{ref}").json()

    def queue(self) -> dict:
        return self.get("/apiv1/queue").json()

    def done(self, job_id: str) -> dict:
        return wait_until(lambda: (lambda r: r if r.get("state") in ("done", "failed")
                                   else None)(self.status(job_id)), timeout_s=120)


def not_found_as_for_nobody(client: Client, path: str, songhash: str) -> None:
    """404, with the words a song that nobody sent gets (nothing tells the song exists)."""
    answer = client.get(path)
    nobody = client.get(path.replace(songhash, NOBODY))
    assert answer.status_code == nobody.status_code == 404, (path, answer.text)
    assert answer.json()["error"] == nobody.json()["error"].replace(NOBODY, songhash)


def worker_runs(worker) -> float:
    """Jobs the worker finished (each a Demucs run), from its own metrics; 0 before it
    serves them."""
    try:
        text = requests.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=10).text
    except requests.ConnectionError:
        return 0.0
    found = re.search(r'demucs_jobs_total\{outcome="done",reason=""\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_clients_see_and_remove_only_their_own_songs(stack, start_api, make_song, webhook):
    rest = start_api(API_KEYS=API_KEYS)
    alice, bob, carol = (Client(rest, name) for name in KEYS)
    private, shared = make_song(seconds=2, seed=1, name="a.mp3"), \
        make_song(seconds=2, seed=2, name="b.mp3")
    private_hash, shared_hash = (hashlib.sha256(s.read_bytes()).hexdigest()
                                 for s in (private, shared))

    # no worker yet: everything waits; each client's queue lists its own jobs only
    a_private = alice.send(private)
    a_shared = alice.send(shared, webhook.url)
    b_shared = bob.send(shared, webhook.url)
    assert b_shared["id"] != a_shared["id"] and b_shared["hash"] == shared_hash
    assert a_shared["id"] not in json.dumps(b_shared)  # Bob is never told Alice's job
    assert len(stack.waiting()) == 2  # the shared song is queued once
    assert alice.queue() == {"queue": [private_hash, shared_hash], "total": 2, "offset": 0,
                             "limit": 100, "next": None}
    assert bob.queue()["queue"] == [shared_hash] and bob.queue()["total"] == 1
    assert carol.queue()["queue"] == [] and carol.queue()["total"] == 0
    bob_view = bob.status(b_shared["id"])
    assert bob_view["id"] == b_shared["id"] and bob_view["state"] == "queued"
    assert bob_view["position"] == 2 and "client" not in bob_view and "runs_as" not in bob_view
    assert alice.status(a_shared["id"])["position"] == 2
    assert alice.status(a_private["id"])["position"] == 1
    for path in (f"/apiv1/status/{a_private['id']}", f"/apiv1/status/{a_shared['id']}"):
        assert bob.get(path).status_code == 404
        assert bob.get(path).json()["error"] == \
            bob.get("/apiv1/status/nosuchjob").json()["error"].replace("nosuchjob",
                                                                       path.rsplit("/", 1)[1])
    not_found_as_for_nobody(bob, f"/apiv1/status/{private_hash}", private_hash)
    not_found_as_for_nobody(bob, f"/apiv1/track/{private_hash}/vocals", private_hash)

    worker = stack.start_worker()
    for client, job in ((alice, a_private), (alice, a_shared), (bob, b_shared)):
        assert client.done(job["id"])["state"] == "done"
    assert worker_runs(worker) == 2  # the shared song was separated once, for both
    assert bob.queue()["total"] == 0 and not stack.redis.zcard(Keys.client_waiting("bob"))

    # each sees its own job, under its own id; each callback names the id its client got
    mine, theirs = alice.status(shared_hash), bob.status(shared_hash)
    assert (mine["id"], theirs["id"]) == (a_shared["id"], b_shared["id"])
    assert set(mine["tracks"]) == set(theirs["tracks"]) == set(TRACKS)
    wait_until(lambda: len(webhook.calls) == 2, timeout_s=15)
    assert sorted(json.loads(body)["id"] for body, _ in webhook.calls) == \
        sorted([a_shared["id"], b_shared["id"]])
    vocals = alice.get(mine["urls"]["vocals"]).content
    assert bob.get(theirs["urls"]["vocals"]).content == vocals and len(vocals) > 1000
    assert rest.get(f"{rest.url}{theirs['urls']['vocals']}?access_token={bob.key}",
                        timeout=TIMEOUT_S).content == vocals  # a client that asks for it

    # Alice's private song: nothing of it for Bob, whatever he asks
    assert alice.get(f"/apiv1/track/{private_hash}/original").content == private.read_bytes()
    for path in (f"/apiv1/status/{private_hash}", f"/apiv1/track/{private_hash}/vocals",
                 f"/apiv1/track/{private_hash}/original.mp3",
                 f"/apiv1/track/{private_hash}/drums?redirect=1",
                 f"/apiv1/remove/{private_hash}/all", f"/apiv1/remove/{private_hash}/vocals"):
        not_found_as_for_nobody(bob, path, private_hash)
    assert bob.delete(f"/apiv1/remove/{private_hash}/all").status_code == 404
    assert alice.get(f"/apiv1/track/{private_hash}/vocals").status_code == 200

    # Carol sends the shared song once it is separated: her own job, at once
    c_shared = carol.send(shared, webhook.url)
    assert "already separated" in c_shared["reason"]
    assert c_shared["id"] not in (a_shared["id"], b_shared["id"])
    assert carol.status(c_shared["id"])["state"] == "done"
    wait_until(lambda: len(webhook.calls) == 3, timeout_s=15)
    assert json.loads(webhook.calls[2][0])["id"] == c_shared["id"]
    assert worker_runs(worker) == 2

    # removal: gone for the client who removes; the objects stay while another owns them
    removed = alice.delete(f"/apiv1/remove/{shared_hash}/all").json()
    assert sorted(removed["removed"]) == sorted(TRACKS)
    assert alice.status(shared_hash)["tracks"] == {}
    assert alice.get(f"/apiv1/track/{shared_hash}/vocals").status_code == 404
    assert alice.delete(f"/apiv1/remove/{shared_hash}/all").status_code == 404
    assert bob.get(theirs["urls"]["vocals"]).content == vocals
    assert set(bob.status(shared_hash)["tracks"]) == set(TRACKS)
    assert bob.get(f"/apiv1/remove/{shared_hash}/vocals").json()["removed"] == ["vocals"]
    assert carol.get(f"/apiv1/track/{shared_hash}/vocals").content == vocals
    stored = {o.object_name for o in stack.minio.list_objects(stack.output_bucket)}
    assert f"{shared_hash}-vocals.mp3" in stored
    assert carol.get(f"/apiv1/remove/{shared_hash}/all").ok  # the last owner of each track
    stored = {o.object_name for o in stack.minio.list_objects(stack.output_bucket)}
    assert f"{shared_hash}-vocals.mp3" not in stored and f"{shared_hash}-drums.mp3" in stored
    assert bob.get(f"/apiv1/remove/{shared_hash}/all").ok
    stored = {o.object_name for o in stack.minio.list_objects(stack.output_bucket)}
    assert not [key for key in stored if key.startswith(shared_hash)]
    assert f"{private_hash}-vocals.mp3" in stored


def test_keys_are_required_and_checked(stack, start_api, make_song):
    rest = start_api(API_KEYS=API_KEYS, API_TOKEN="the-old-shared-token")
    queue = f"{rest.url}/apiv1/queue"
    assert rest.get(queue, timeout=TIMEOUT_S).status_code == 401
    wrong = {"Authorization": "Bearer alice-key-012345678X"}
    assert rest.get(queue, headers=wrong, timeout=TIMEOUT_S).status_code == 401
    assert rest.get(f"{rest.url}/docs", timeout=TIMEOUT_S).status_code == 401
    song = make_song(seconds=1)
    answer = rest.post(f"{rest.url}/apiv1/separate", timeout=TIMEOUT_S,
                           json={"mp3": base64.b64encode(song.read_bytes()).decode()})
    assert answer.status_code == 401 and not stack.waiting()
    # API_TOKEN is one more client, "default": it owns what it sends, like any other
    token = {"Authorization": "Bearer the-old-shared-token"}
    sent = rest.post(f"{rest.url}/apiv1/separate", headers=token, timeout=TIMEOUT_S,
                         json={"mp3": base64.b64encode(song.read_bytes()).decode()}).json()
    assert rest.get(queue, headers=token, timeout=TIMEOUT_S).json()["total"] == 1
    assert Client(rest, "alice").queue()["total"] == 0
    assert Client(rest, "alice").get(f"/apiv1/status/{sent['id']}").status_code == 404
    assert stack.redis.hget(Keys.job(sent["id"]), "client") == b"default"


def test_a_client_has_at_most_client_max_waiting_jobs_waiting(stack, start_api, make_song):
    rest = start_api(API_KEYS=API_KEYS, CLIENT_MAX_WAITING="1")
    alice, bob = Client(rest, "alice"), Client(rest, "bob")
    first, second = make_song(seconds=1, seed=1, name="1.mp3"), \
        make_song(seconds=1, seed=2, name="2.mp3")
    alice.send(first)
    refused = rest.post(f"{rest.url}/apiv1/separate", headers=alice.headers,
                            timeout=TIMEOUT_S, json={
                                "mp3": base64.b64encode(second.read_bytes()).decode()})
    assert refused.status_code == 429 and "CLIENT_MAX_WAITING" in refused.json()["error"]
    assert refused.headers["retry-after"]
    bob.send(second)  # another client's room is its own
    worker = stack.start_worker()
    wait_until(lambda: worker_runs(worker) == 2, timeout_s=120)
    alice.send(second)  # her first job ran: room again


@pytest.mark.parametrize("api_keys", [
    "alice", "al ice:alice-key-0123456789", "alice:short", "a/b:alice-key-0123456789",
    "alice:alice-key-0123456789,alice:alice-key-9876543210",
    "alice:alice-key-0123456789,bob:alice-key-0123456789",
    "default:alice-key-0123456789"])
def test_malformed_api_keys_stop_the_service_at_start(api_keys):
    with pytest.raises(ValueError, match="API_KEYS") as raised:
        Settings.from_env({"API_KEYS": api_keys, "API_TOKEN": "a-token"})
    assert "0123456789" not in str(raised.value)  # a key never reaches a log


def test_without_api_keys_every_client_sees_every_song(stack, start_api, make_song):
    """API_TOKEN alone keeps its old meaning: one shared token, no ownership."""
    rest = start_api(API_TOKEN="the-old-shared-token")
    token = {"Authorization": "Bearer the-old-shared-token"}
    song = make_song(seconds=1)
    sent = rest.post(f"{rest.url}/apiv1/separate", headers=token, timeout=TIMEOUT_S,
                         json={"mp3": base64.b64encode(song.read_bytes()).decode()}).json()
    assert stack.redis.hget(Keys.job(sent["id"]), "client") is None
    stack.push({"songhash": "ef" * 32})  # a Redis-only producer's job is listed too
    assert rest.get(f"{rest.url}/apiv1/queue", headers=token,
                        timeout=TIMEOUT_S).json()["total"] == 2
