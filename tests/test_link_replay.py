"""Hostile review: signed track links (rest/links.py) replayed for other objects, methods, times.

In-process REST app; tracks planted in S3 and a done job record in Redis, as
``tests/test_track_links.py::test_with_a_single_api_token_links_work_too`` does (API_TOKEN
alone: the link is the only key a browser's <audio> has).
"""

from __future__ import annotations

import io
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from common.status import StatusStore

TIMEOUT_S = 30
TOKEN = "single-token-0123456789"
SONG = "ab" * 32
JOB = "c" * 32
OBJECTS = {  # every variant a link for plain vocals could be turned towards
    f"{SONG}-vocals.mp3": b"V" * 40,
    f"{SONG}-drums.mp3": b"D" * 40,
    f"{SONG}-vocals-192k.mp3": b"B" * 40,
    f"{SONG}-vocals.flac": b"F" * 40,
    f"{SONG}-vocals-24bit.flac": b"G" * 40,
    f"models/htdemucs/{SONG}-vocals.mp3": b"M" * 40,
}


def _plant(stack) -> None:
    if not stack.minio.bucket_exists(stack.output_bucket):
        stack.minio.make_bucket(stack.output_bucket)
    for key, body in OBJECTS.items():
        stack.minio.put_object(stack.output_bucket, key, io.BytesIO(body), len(body))
    store = StatusStore(stack.redis, 3600)
    store.queued(JOB, SONG, stack.env["DEMUCS_MODEL"])
    store.done(JOB, {"vocals": f"{SONG}-vocals.mp3", "drums": f"{SONG}-drums.mp3"}, 1.0)


def _link(api) -> str:
    status = api.get(f"{api.url}/apiv1/status/{JOB}", timeout=TIMEOUT_S,
                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert status.status_code == 200, status.text
    return status.json()["links"]["vocals"]


@pytest.fixture
def linked(stack, start_api):
    _plant(stack)
    api = start_api(API_TOKEN=TOKEN, TRACK_LINK_TTL_S="60")
    link = _link(api)
    assert api.get(api.url + link, timeout=TIMEOUT_S).content == OBJECTS[f"{SONG}-vocals.mp3"]
    return api, link


def test_a_link_serves_no_other_encoding_model_or_track(linked):
    api, link = linked
    path, query = link.split("?", 1)
    attempts = {
        "bitrate": link + "&bitrate=192",
        "bit_depth on flac": path.replace("vocals", "vocals.flac") + "?" + query + "&bit_depth=24",
        "flac": path.replace("vocals", "vocals.flac") + "?" + query,
        "model": link + "&model=htdemucs",
        "drums": path.replace("vocals", "drums") + "?" + query,
        "uppercase sig": link[:-64] + link[-64:].upper(),
        "sig twice (first good, last bad)": link + "&sig=" + "0" * 64,
        "client twice": link + "&client=default&client=nobody",
    }
    served = {}
    for what, url in attempts.items():
        answer = api.get(api.url + url, timeout=TIMEOUT_S)
        if answer.status_code != 401:
            served[what] = (answer.status_code, answer.content[:8])
    assert not served, served


def test_a_link_is_for_get_and_head_only(linked):
    api, link = linked
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        answer = api.request(method, api.url + link, timeout=TIMEOUT_S)
        assert answer.status_code in (401, 405), (method, answer.status_code, answer.text)
    remove = api.get(api.url + link.replace("/track/", "/remove/"), timeout=TIMEOUT_S)
    assert remove.status_code == 401


@pytest.mark.parametrize("sig", ["\u00e9" * 64, "0" * 63 + "\u0660", "%FF%FE", "\u00e9"])
def test_a_non_ascii_signature_is_a_401_not_a_500(linked, sig):
    """``hmac.compare_digest`` raises TypeError on a str that is not ASCII."""
    api, link = linked
    query = parse_qs(urlsplit(link).query)
    url = (f"{urlsplit(link).path}?client=default&expires={query['expires'][0]}&sig=" + sig)
    answer = _as_a_server_answers(api, url)
    assert answer.status_code == 401, (answer.status_code, answer.text)


def _as_a_server_answers(api, url: str) -> httpx.Response:
    """What a client of uvicorn gets: the app's own answer, even when the app raised
    (Starlette sends its 500 and re-raises to the server, which logs it)."""
    transport = httpx.ASGITransport(app=api.app, client=("127.0.0.1", 40001),
                                    raise_app_exceptions=False)

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url=api.url) as client:
            return await client.get(url, timeout=TIMEOUT_S)

    return api.portal.call(get)


def test_a_link_with_redirect_outlives_its_ttl(stack, start_api):
    """A link a second from its end, with ``&redirect=1`` (not signed), is exchanged for a
    presigned URL that lives ``PRESIGN_TTL_S`` from then: up to 7 days, out of reach of the
    link's TTL and of any later removal by its client."""
    _plant(stack)
    api = start_api(API_TOKEN=TOKEN, TRACK_LINK_TTL_S="60", PRESIGN_TTL_S="604800",
                    MINIO_PRESIGN_ACCESS_KEY="demucs-reader",
                    MINIO_PRESIGN_SECRET_KEY="reader-secret-0123",
                    MINIO_PRESIGN_ENDPOINT="media.example.com:9000")
    link = _link(api)
    expires = int(parse_qs(urlsplit(link).query)["expires"][0])
    answer = api.get(api.url + link + "&redirect=1", timeout=TIMEOUT_S, allow_redirects=False)
    if answer.status_code == 307:
        presigned = parse_qs(urlsplit(answer.headers["location"]).query)
        lives_until = time.time() + int(presigned["X-Amz-Expires"][0])
        assert lives_until <= expires + 5, (
            f"a link that expires in {expires - time.time():.0f} s gave a URL that lives "
            f"{lives_until - time.time():.0f} s")
