"""No long-lived key in a URL: signed, short-lived track links, and presigned URLs of a
read-only storage user (rest/links.py, ``TRACK_LINK_TTL_S``, ``MINIO_PRESIGN_*``).

Against the real REST service, worker (Demucs CLI), redis-server and S3 server.
"""

from __future__ import annotations

import io
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from common.settings import Settings
from common.status import StatusStore
from tests.test_owners import API_KEYS, KEYS, Client
from tests.waiting import wait_until

TIMEOUT_S = 30


def fetch(rest, link: str, **kwargs) -> requests.Response:
    """A link as a browser's <audio> or download fetches it: no header of the client's."""
    return requests.get(rest.url + link, timeout=TIMEOUT_S, **kwargs)


def assert_refused(response: requests.Response) -> None:
    assert response.status_code == 401, (response.request.url, response.text)
    assert "not valid or has expired" in response.json()["reason"]


@pytest.fixture
def separated(stack, start_rest, make_song):
    """Alice's song, separated; her REST service (links last TRACK_LINK_TTL_S=30 s)."""
    rest = start_rest(API_KEYS=API_KEYS, TRACK_LINK_TTL_S="30")
    alice = Client(rest, "alice")
    stack.start_worker()
    job = alice.send(make_song(seconds=2, seed=5))
    assert alice.done(job["id"])["state"] == "done"
    return rest, alice, alice.status(job["id"])


def test_status_links_are_signed_short_lived_and_carry_no_key(separated):
    rest, alice, status = separated
    assert set(status["links"]) == set(status["urls"])
    assert not [key for key in KEYS.values() if key in str(status)]
    for track, link in status["links"].items():
        parts = urlsplit(link)
        assert parts.path == urlsplit(status["urls"][track]).path
        query = parse_qs(parts.query)
        assert query["client"] == ["alice"] and len(query["sig"][0]) == 64
        assert 0 < int(query["expires"][0]) - time.time() <= 30
    vocals = alice.get(status["urls"]["vocals"]).content
    assert len(vocals) > 1000 and fetch(rest, status["links"]["vocals"]).content == vocals
    ranged = fetch(rest, status["links"]["vocals"], headers={"Range": "bytes=0-99"})
    assert ranged.status_code == 206 and ranged.content == vocals[:100]
    download = fetch(rest, status["links"]["vocals"] + "&download=1")
    assert download.headers["content-disposition"].startswith("attachment;")
    assert requests.head(rest.url + status["links"]["drums"], timeout=TIMEOUT_S).ok
    assert fetch(rest, status["urls"]["vocals"]).status_code == 401  # the bare path needs a key


def test_a_link_serves_its_one_track_to_its_client_until_it_expires(separated, start_rest):
    rest, alice, status = separated
    link = status["links"]["vocals"]
    query = link.split("?", 1)[1]
    other_track = status["urls"]["drums"] + "?" + query
    signature = parse_qs(query)["sig"][0]
    forged = link.replace(signature, ("0" if signature[0] != "0" else "1") + signature[1:])
    later = link.replace(f"expires={parse_qs(query)['expires'][0]}",
                         f"expires={int(parse_qs(query)['expires'][0]) + 3600}")
    as_bob = link.replace("client=alice", "client=bob")
    for refused in (other_track, forged, later, as_bob, link.replace("&sig=", "&sig=x"),
                    f"/apiv1/status/{status['id']}?{query}",
                    f"/apiv1/remove/{status['hash']}/vocals?{query}"):
        assert_refused(fetch(rest, refused))
    assert_refused(requests.delete(rest.url + link.replace("/track/", "/remove/"),
                                   timeout=TIMEOUT_S))
    assert alice.get(f"/apiv1/status/{status['id']}").json()["tracks"]["vocals"]  # all kept

    brief = start_rest(API_KEYS=API_KEYS, TRACK_LINK_TTL_S="1")  # the same Redis and S3
    short = Client(brief, "alice").status(status["id"])["links"]["vocals"]
    expires = int(parse_qs(urlsplit(short).query)["expires"][0])
    wait_until(lambda: time.time() > expires + 0.5, timeout_s=10)
    assert_refused(fetch(brief, short))
    assert_refused(fetch(rest, short))  # nor at another replica, whose TTL is longer
    fresh = alice.status(status["id"])["links"]["vocals"]
    assert fetch(rest, fresh).ok


def test_a_link_still_follows_ownership(separated):
    rest, alice, status = separated
    link = status["links"]["bass"]
    assert fetch(rest, link).ok
    assert alice.delete(f"/apiv1/remove/{status['hash']}/bass").ok
    assert fetch(rest, link).status_code == 404


def test_presigned_urls_name_the_read_only_user_never_the_main_one(stack, start_rest):
    songhash = "cd" * 32
    if not stack.minio.bucket_exists(stack.output_bucket):
        stack.minio.make_bucket(stack.output_bucket)
    stack.minio.put_object(stack.output_bucket, f"{songhash}-drums.mp3", io.BytesIO(b"x" * 10),
                           10, content_type="audio/mpeg")
    main_user = stack.env["MINIO_ACCESS_KEY"]
    without = start_rest()  # no read-only user: the track itself, no URL naming any user
    answer = requests.get(f"{without.url}/apiv1/track/{songhash}/drums?redirect=1",
                          allow_redirects=False, timeout=TIMEOUT_S)
    assert answer.status_code == 200 and answer.content == b"x" * 10
    assert "location" not in answer.headers
    with_user = start_rest(MINIO_PRESIGN_ACCESS_KEY="demucs-reader",
                           MINIO_PRESIGN_SECRET_KEY="reader-secret-0123",
                           MINIO_PRESIGN_ENDPOINT="media.example.com:9000")
    redirect = requests.get(f"{with_user.url}/apiv1/track/{songhash}/drums?redirect=1",
                            allow_redirects=False, timeout=TIMEOUT_S)
    location = redirect.headers["location"]
    assert redirect.status_code == 307, redirect.text
    assert location.startswith("http://media.example.com:9000/")
    assert "X-Amz-Credential=demucs-reader%2F" in location and main_user not in location


@pytest.mark.parametrize("env", [
    {"MINIO_PRESIGN_ACCESS_KEY": "reader"},
    {"MINIO_PRESIGN_ACCESS_KEY": "admin", "MINIO_PRESIGN_SECRET_KEY": "x", "MINIO_ACCESS_KEY":
     "admin"},
    {"TRACK_LINK_TTL_S": "0"}, {"TRACK_LINK_TTL_S": "86401"}])
def test_presign_and_link_settings_are_checked_at_start(env):
    with pytest.raises(ValueError, match=r"MINIO_PRESIGN|TRACK_LINK_TTL_S"):
        Settings.from_env(env)


def test_with_a_single_api_token_links_work_too(stack, start_rest):
    """API_TOKEN alone (no owners): links are signed for its holder, ``default``."""
    rest = start_rest(API_TOKEN="single-token-0123456789")
    songhash, job_id = "ab" * 32, "c" * 32
    if not stack.minio.bucket_exists(stack.output_bucket):
        stack.minio.make_bucket(stack.output_bucket)
    stack.minio.put_object(stack.output_bucket, f"{songhash}-vocals.mp3", io.BytesIO(b"v" * 20),
                           20, content_type="audio/mpeg")
    store = StatusStore(stack.redis, 3600)
    store.queued(job_id, songhash, stack.env["DEMUCS_MODEL"])
    store.done(job_id, {"vocals": f"{songhash}-vocals.mp3"}, 1.0)
    status = rest.get(f"{rest.url}/apiv1/status/{job_id}", timeout=TIMEOUT_S,
                          headers={"Authorization": "Bearer single-token-0123456789"}).json()
    link = status["links"]["vocals"]
    assert "client=default" in link and "single-token" not in link
    assert fetch(rest, link).content == b"v" * 20
    assert fetch(rest, status["urls"]["vocals"]).status_code == 401
