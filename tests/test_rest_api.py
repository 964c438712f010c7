"""The REST API against the real service: uvicorn, redis-server, an S3 server and the worker."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import re
import time
from pathlib import Path

import pytest
import requests
import sphn
from mutagen.mp3 import MP3

import devstack
from common.contract import TRACKS, Keys
from common.models import builtin_model
from common.queue import JobQueue
from common.status import StatusStore
from common.webhook import signature_headers
from tests.registries import write_registry

TIMEOUT_S = 30
JSON_NULL = {"data": "null", "headers": {"Content-type": "application/json"}}


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def wait_done(rest, ref: str, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = rest.get(f"{rest.url}/apiv1/status/{ref}", timeout=TIMEOUT_S).json()
        if record["state"] in ("done", "failed"):
            return record
        time.sleep(0.2)
    raise AssertionError(f"{ref} not finished after {timeout_s} s: {record}\n{rest.logs()}")


def assert_error(response: requests.Response, status: int, text: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert text in body["error"], body
    assert body["reason"] == body["error"]
    assert "Traceback" not in response.text


def decoded_seconds(data: bytes, tmp: Path) -> float:
    path = tmp / "decoded.mp3"
    path.write_bytes(data)
    samples, rate = sphn.read(str(path))
    return samples.shape[-1] / rate


def test_separate_then_status_tracks_dedup_and_remove(stack, rest, song, webhook, tmp_path):
    stack.start_worker()
    response = rest.post(f"{rest.url}/apiv1/separate", timeout=TIMEOUT_S, json={
        "mp3": b64(song), "callback": {"url": webhook.url, "data": {"n": 1}}})
    assert response.status_code == 200, response.text
    body = response.json()
    songhash = hashlib.sha256(song.read_bytes()).hexdigest()
    assert body["hash"] == songhash and re.fullmatch(r"[0-9a-f]{32}", body["id"])
    assert body["reason"] == "Song enqueued for separation"
    stored = stack.minio.get_object(stack.queue_bucket, f"{songhash}.mp3").read()
    assert stored == song.read_bytes()

    record = wait_done(rest, body["id"])
    assert record["state"] == "done" and record["attempts"] == 1, record
    assert record["progress"] == 100 and record["error"] == ""
    assert set(record["tracks"]) == set(TRACKS)
    by_hash = rest.get(f"{rest.url}/apiv1/status/{songhash}", timeout=TIMEOUT_S).json()
    assert by_hash["id"] == body["id"] and by_hash["hash"] == songhash

    input_s = MP3(song).info.length
    tracks = {}
    for track in TRACKS:
        got = rest.get(f"{rest.url}{record['urls'][track]}", timeout=TIMEOUT_S)
        assert got.status_code == 200 and got.headers["content-type"] == "audio/mpeg", track
        assert got.headers["accept-ranges"] == "bytes"
        assert int(got.headers["content-length"]) == len(got.content)
        assert abs(decoded_seconds(got.content, tmp_path) - input_s) < 0.15, track
        tracks[track] = got.content
    assert tracks["original"] == song.read_bytes()
    lab_name = rest.get(f"{rest.url}/apiv1/track/{songhash}/base.mp3", timeout=TIMEOUT_S)
    assert lab_name.content == tracks["bass"]

    check_ranges(rest.url, songhash, tracks["vocals"])
    check_redirect(rest.url, songhash, tracks["drums"])
    wait_for_calls(webhook, 1)
    assert json.loads(webhook.calls[0][0])["status"] == "done"

    # the same song again: not separated again, the callback still hears about it
    again = rest.post(f"{rest.url}/apiv1/separate", timeout=TIMEOUT_S, json={
        "mp3": b64(song), "callback": {"url": webhook.url, "data": {"n": 2}}}).json()
    assert again["id"] == body["id"] and "already separated" in again["reason"], again
    assert len(stack.waiting()) == 0
    wait_for_calls(webhook, 2)
    second = json.loads(webhook.calls[1][0])
    assert second["data"] == {"n": 2} and second["tracks"]["vocals"] == f"{songhash}-vocals.mp3"

    # remove one track: it is gone, and the song is separated again when asked
    removed = rest.delete(f"{rest.url}/apiv1/remove/{songhash}/vocals.mp3",
                              timeout=TIMEOUT_S).json()
    assert removed["removed"] == ["vocals"], removed
    after = rest.get(f"{rest.url}/apiv1/status/{songhash}", timeout=TIMEOUT_S).json()
    assert "vocals" not in after["tracks"] and "vocals" not in after["urls"], after
    assert "drums" in after["urls"]
    assert_error(rest.get(f"{rest.url}/apiv1/track/{songhash}/vocals", timeout=TIMEOUT_S),
                 404, "does not exist")
    assert_error(rest.delete(f"{rest.url}/apiv1/remove/{songhash}/vocals",
                                 timeout=TIMEOUT_S), 404, "has no track")
    rerun = rest.post(f"{rest.url}/apiv1/separate", timeout=TIMEOUT_S,
                          json={"mp3": b64(song)}).json()
    assert rerun["id"] != body["id"] and rerun["reason"] == "Song enqueued for separation"
    assert wait_done(rest, rerun["id"])["state"] == "done"
    everything = rest.get(f"{rest.url}/apiv1/remove/{songhash}/all", timeout=TIMEOUT_S)
    assert sorted(everything.json()["removed"]) == sorted(TRACKS)
    after = rest.get(f"{rest.url}/apiv1/status/{songhash}", timeout=TIMEOUT_S).json()
    assert after["tracks"] == {} and after["urls"] == {}, after
    assert not list(stack.minio.list_objects(stack.output_bucket))
    lines = [line.decode() for line in stack.redis.lrange(Keys.LOGGING, 0, -1)]
    assert any(re.search(rf"\.rest\.info:job {body['id']}: song {songhash}", x) for x in lines)


def check_ranges(url: str, songhash: str, whole: bytes) -> None:
    track_url = f"{url}/apiv1/track/{songhash}/vocals"
    first = requests.get(track_url, headers={"Range": "bytes=0-99"}, timeout=TIMEOUT_S)
    assert first.status_code == 206 and first.content == whole[:100]
    assert first.headers["content-range"] == f"bytes 0-99/{len(whole)}"
    middle = requests.get(track_url, headers={"Range": "bytes=1000-"}, timeout=TIMEOUT_S)
    assert middle.status_code == 206 and middle.content == whole[1000:]
    last = requests.get(track_url, headers={"Range": "bytes=-50"}, timeout=TIMEOUT_S)
    assert last.status_code == 206 and last.content == whole[-50:]
    past = requests.get(track_url, headers={"Range": f"bytes={len(whole)}-"}, timeout=TIMEOUT_S)
    assert_error(past, 416, "outside")
    assert past.headers["content-range"] == f"bytes */{len(whole)}"
    head = requests.head(track_url, timeout=TIMEOUT_S)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(whole)
    attachment = requests.get(track_url + "?download=1", timeout=TIMEOUT_S)
    assert attachment.headers["content-disposition"].startswith("attachment;")


def check_redirect(url: str, songhash: str, whole: bytes) -> None:
    """Without a read-only storage user (MINIO_PRESIGN_*), ``?redirect=1`` answers the track
    itself: a presigned URL would name the main user (tests/test_track_links.py)."""
    answer = requests.get(f"{url}/apiv1/track/{songhash}/drums?redirect=1",
                          allow_redirects=False, timeout=TIMEOUT_S)
    assert answer.status_code == 200 and answer.content == whole


def wait_for_calls(webhook, count: int) -> None:
    deadline = time.monotonic() + 15
    while len(webhook.calls) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(webhook.calls) == count


def test_queue_lists_songs_in_the_order_they_will_run(stack, api, make_song):
    songs = [make_song(seconds=1, seed=i, name=f"q{i}.mp3") for i in range(3)]
    ids = []
    for song in songs:
        response = api.post(f"{api.url}/apiv1/separate", json={"mp3": b64(song)},
                                 timeout=TIMEOUT_S)
        ids.append(response.json()["id"])
    hashes = [hashlib.sha256(s.read_bytes()).hexdigest() for s in songs]
    stack.push("not json")  # someone else's broken job is skipped, not an error
    long_song = "ab" * 32  # a long song's chunks and join are its song, once
    StatusStore(stack.redis, 3600).queued("long", long_song, "demucs_unittest")
    for index in range(2):
        stack.push({"id": f"long-c{index}", "bucket": stack.queue_bucket, "chunk": index,
                    "object": f"chunks/long/c{index}.wav", "chunk_of": "long"})
    stack.push({"id": "long-join", "join_of": "long"})
    # a song under way runs first: its chunks and join, then the songs queued, in order
    queue = api.get(f"{api.url}/apiv1/queue", timeout=TIMEOUT_S)
    assert queue.status_code == 200 and queue.json() == {
        "queue": [long_song, *hashes], "total": 7, "offset": 0, "limit": 100, "next": None}
    for position, job_id in enumerate(ids, start=4):
        record = api.get(f"{api.url}/apiv1/status/{job_id}", timeout=TIMEOUT_S).json()
        assert record["state"] == "queued" and record["position"] == position
        assert record["attempts"] == 0 and record["tracks"] == {}
        assert not any(name.startswith("queue_") for name in record)
    # pages: a bounded slice and the path of the next; the limit is capped by the setting
    first = api.get(f"{api.url}/apiv1/queue?limit=3", timeout=TIMEOUT_S).json()
    assert first["queue"] == [long_song] and first["next"] == "/apiv1/queue?offset=3&limit=3"
    second = api.get(f"{api.url}{first['next']}", timeout=TIMEOUT_S).json()
    assert second["queue"] == hashes and second["next"] == "/apiv1/queue?offset=6&limit=3"
    third = api.get(f"{api.url}{second['next']}", timeout=TIMEOUT_S).json()
    assert third["queue"] == [] and third["total"] == 7  # the broken job is skipped
    assert third["next"] is None
    assert api.get(f"{api.url}/apiv1/queue?offset=4&limit=5000",
                        timeout=TIMEOUT_S).json()["limit"] == 1000
    assert_error(api.get(f"{api.url}/apiv1/queue?limit=0", timeout=TIMEOUT_S), 400,
                 "limit")
    # a worker takes the long song's jobs and the first song; a Redis-only producer's job
    # lands behind: positions move
    queue = JobQueue(stack.redis)
    assert [json.loads(queue.take("w", 0.1))["id"] for _ in range(4)] == [
        "long-c0", "long-c1", "long-join", ids[0]]
    stack.push({"songhash": "ef" * 32})
    assert [api.get(f"{api.url}/apiv1/status/{job_id}", timeout=TIMEOUT_S).json()[
        "position"] for job_id in ids[1:]] == [1, 2]
    assert_error(api.get(f"{api.url}/apiv1/track/{hashes[0]}/vocals", timeout=TIMEOUT_S),
                 404, "not separated yet: queued")


def test_multipart_upload_with_fields(stack, api, make_song):
    song = make_song(seconds=1)
    with song.open("rb") as handle:
        response = api.post(
            f"{api.url}/apiv1/separate", timeout=TIMEOUT_S,
            files={"file": ("my song.mp3", handle, "audio/mpeg")},
            data={"model": "demucs_unittest", "stems": ["vocals,base", "drums"],
                  "callback": json.dumps({"url": "http://127.0.0.1:9/hook", "data": {"k": 1}})})
    assert response.status_code == 200, response.text
    job = json.loads(stack.waiting()[0])
    assert job == {"id": response.json()["id"], "songhash": response.json()["hash"],
                   "model": "demucs_unittest", "stems": ["vocals", "bass", "drums"],
                   "callback": {"url": "http://127.0.0.1:9/hook", "data": {"k": 1}}}


def test_bad_requests_answer_400_and_enqueue_nothing(stack, api, make_song, tmp_path):
    song = b64(make_song(seconds=1))
    url = f"{api.url}/apiv1/separate"
    text_file = base64.b64encode(b"hello, this is not a song\n" * 50).decode()
    cases = [
        ({"data": "{not json", "headers": {"Content-type": "application/json"}}, "not valid JSON"),
        ({"json": [1, 2]}, "JSON object"),
        ({"json": {}}, "missing the song"),
        ({"json": None, **JSON_NULL}, "JSON object"),
        ({"json": {"mp3": "%%% not base64 %%%"}}, "not valid base64"),
        ({"json": {"mp3": ""}}, "empty"),
        ({"json": {"mp3": text_file}}, "not an MP3"),
        ({"json": {"mp3": 12}}, "mp3"),
        ({"json": {"mp3": song, "stems": ["guitar"]}}, "unknown track 'guitar'"),
        ({"json": {"mp3": song, "stems": []}}, "at least one track"),
        ({"json": {"mp3": song, "model": "../etc"}}, "model"),
        ({"json": {"mp3": song, "callback": {"url": "ftp://example.com"}}}, "http"),
        ({"json": {"mp3": song, "callback": {"data": {}}}}, "callback.url"),
        ({"json": {"mp3": song, "colour": "red"}}, "unknown field 'colour'"),
        ({"files": {"song": ("a.mp3", b"x")}}, "unknown form field 'song'"),
        ({"files": {"model": (None, "htdemucs")}}, "missing the song"),
        ({"files": {"file": ("a.txt", b"just text, no audio")}}, "not an MP3"),
        ({"files": {"file": ("a.mp3", base64.b64decode(song)),
                    "callback": (None, "{oops")}}, "'callback' is not valid JSON"),
    ]
    for kwargs, text in cases:
        assert_error(api.post(url, timeout=TIMEOUT_S, **kwargs), 400, text)
    assert len(stack.waiting()) == 0
    assert not list(stack.minio.list_objects(stack.queue_bucket))


def test_unknown_things_answer_404_with_a_reason(api):
    songhash = "0" * 64
    cases = [
        ("/apiv1/status/nosuchjob", "no job or song 'nosuchjob'"),
        (f"/apiv1/status/{songhash}", "no job or song"),
        ("/apiv1/status/bad%20id!", "no job or song"),
        (f"/apiv1/track/{songhash}/vocals.mp3", f"no song {songhash} is known"),
        (f"/apiv1/track/{songhash}/guitar.mp3", "unknown track 'guitar.mp3'"),
        ("/apiv1/track/abc/vocals", "is not a songhash"),
        (f"/apiv1/remove/{songhash}/all", "has no track 'all'"),
        ("/apiv1/nothing-here", "Not Found"),
    ]
    for path, text in cases:
        assert_error(api.get(api.url + path, timeout=TIMEOUT_S), 404, text)
    assert_error(api.put(f"{api.url}/apiv1/queue", timeout=TIMEOUT_S), 405, "Not Allowed")
    assert_error(api.get(f"{api.url}/apiv1/track/{songhash}/vocals?redirect=maybe",
                              timeout=TIMEOUT_S), 400, "redirect")


def test_over_max_input_mb_answers_413(stack, start_rest, make_song):
    rest = start_rest(MAX_INPUT_MB="0.05")  # 52 kB
    song = make_song(seconds=4)
    assert song.stat().st_size > 0.05 * 2**20
    url = f"{rest.url}/apiv1/separate"
    assert_error(requests.post(url, json={"mp3": b64(song)}, timeout=TIMEOUT_S), 413,
                 "MAX_INPUT_MB=0.05")
    padded = {"mp3": b64(make_song(seconds=1, name="small.mp3"))}  # fits once decoded...
    assert requests.post(url, json=padded, timeout=TIMEOUT_S).status_code == 200
    with song.open("rb") as handle:
        assert_error(requests.post(url, files={"file": handle}, timeout=TIMEOUT_S), 413,
                     "MAX_INPUT_MB=0.05")
    chunked = requests.post(url, data=iter([b'{"mp3": "' + b"A" * 65536] * 4),
                            headers={"Content-type": "application/json"}, timeout=TIMEOUT_S)
    assert_error(chunked, 413, "MAX_INPUT_MB")

    # a declared Content-Length far over the limit is refused before any body is sent
    connection = http.client.HTTPConnection("127.0.0.1", rest.service.port, timeout=10)
    connection.putrequest("POST", "/apiv1/separate")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(10**9))
    connection.endheaders()
    answer = connection.getresponse()
    assert answer.status == 413 and "MAX_INPUT_MB" in json.loads(answer.read())["error"]
    connection.close()
    assert len(stack.waiting()) == 1


def test_api_token_guards_every_apiv1_route(stack, start_api, make_song):
    rest = start_api(API_TOKEN="test-token-123")
    queue_url = f"{rest.url}/apiv1/queue"
    missing = rest.get(queue_url, timeout=TIMEOUT_S)
    assert_error(missing, 401, "Authorization: Bearer")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_error(rest.get(queue_url, headers={"Authorization": "Bearer wrong"},
                              timeout=TIMEOUT_S), 401, "not valid")
    for path in ("/apiv1/status/x", f"/apiv1/track/{'0' * 64}/vocals",
                 f"/apiv1/remove/{'0' * 64}/all"):
        assert rest.get(rest.url + path, timeout=TIMEOUT_S).status_code == 401, path
    assert rest.post(f"{rest.url}/apiv1/separate", timeout=TIMEOUT_S,
                         json={"mp3": b64(make_song(seconds=1))}).status_code == 401
    assert len(stack.waiting()) == 0
    good = {"Authorization": "Bearer test-token-123"}
    assert rest.get(queue_url, headers=good, timeout=TIMEOUT_S).json()["queue"] == []
    assert rest.get(queue_url + "?access_token=test-token-123", timeout=TIMEOUT_S).ok
    for method, path in (("GET", "/"), ("POST", "/"), ("GET", "/healthz")):
        assert rest.request(method, rest.url + path, json={}, timeout=TIMEOUT_S).ok, path
    for path in ("/docs", "/openapi.json"):  # the API's description is the holders' business
        assert rest.get(rest.url + path, timeout=TIMEOUT_S).status_code == 401, path
        assert rest.get(rest.url + path, headers=good, timeout=TIMEOUT_S).ok, path


def test_docs_are_open_without_a_token_and_presigned_urls_last_presign_ttl_s(stack, start_rest):
    rest = start_rest(PRESIGN_TTL_S="120", MINIO_PRESIGN_ACCESS_KEY="demucs-reader",
                      MINIO_PRESIGN_SECRET_KEY="reader-secret-0123")
    assert "swagger" in rest.get(f"{rest.url}/docs", timeout=TIMEOUT_S).text.lower()
    assert "/apiv1/separate" in rest.get(f"{rest.url}/openapi.json",
                                             timeout=TIMEOUT_S).json()["paths"]
    songhash = "cd" * 32
    if not stack.minio.bucket_exists(stack.output_bucket):
        stack.minio.make_bucket(stack.output_bucket)
    stack.minio.put_object(stack.output_bucket, f"{songhash}-drums.mp3", io.BytesIO(b"x" * 10),
                           10, content_type="audio/mpeg")
    redirect = rest.get(f"{rest.url}/apiv1/track/{songhash}/drums?redirect=1",
                            allow_redirects=False, timeout=TIMEOUT_S)
    assert redirect.status_code == 307 and "X-Amz-Expires=120&" in redirect.headers["location"]
    assert requests.get(redirect.headers["location"], timeout=TIMEOUT_S).content == b"x" * 10


def test_get_with_a_null_json_body_is_served(api):
    queue = api.get(f"{api.url}/apiv1/queue", json=None, timeout=TIMEOUT_S, **JSON_NULL)
    assert queue.status_code == 200 and queue.json()["queue"] == []
    status = api.get(f"{api.url}/apiv1/status/none", timeout=TIMEOUT_S, **JSON_NULL)
    assert_error(status, 404, "no job")
    assert api.get(f"{api.url}/", timeout=TIMEOUT_S, **JSON_NULL).status_code == 200
    assert api.get(f"{api.url}/healthz", timeout=TIMEOUT_S, **JSON_NULL).json()["ok"]


def test_root_answers_200_and_logs_posted_callbacks(stack, start_rest):
    rest = start_rest(WEBHOOK_SECRET="s3cret")
    plain = rest.get(f"{rest.url}/", timeout=TIMEOUT_S)
    assert plain.status_code == 200 and plain.json()["status"] == "ok"
    page = rest.get(f"{rest.url}/", headers={"Accept": "text/html"}, timeout=TIMEOUT_S)
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>Music source separation</title>" in page.text

    body = json.dumps({"id": "job-7", "status": "done", "songhash": "ab" * 32,
                       "data": {"mp3": "x.mp3", "data": "to be returned"}}).encode()
    signed = rest.post(f"{rest.url}/", data=body, timeout=TIMEOUT_S, headers={
        "Content-Type": "application/json", **signature_headers(body, "s3cret")})
    assert signed.status_code == 200 and signed.json()["verified"] is True
    forged = rest.post(f"{rest.url}/", data=body, timeout=TIMEOUT_S,
                           headers=signature_headers(body, "guess"))
    assert forged.status_code == 200 and forged.json()["verified"] is False
    assert rest.post(f"{rest.url}/", data=b"\x00 not json", timeout=TIMEOUT_S).ok
    lines = [line.decode() for line in stack.redis.lrange(Keys.LOGGING, 0, -1)]
    received = [line for line in lines if ".rest.info:callback received: job job-7" in line]
    assert len(received) == 2 and "to be returned" in received[0]
    assert {"verified", "INVALID"} == {line.rsplit(" ", 1)[1] for line in received}


def test_health_metrics_and_outages_answer_json(stack, rest, start_api):
    health = rest.get(f"{rest.url}/healthz", timeout=TIMEOUT_S)
    assert health.status_code == 200 and health.json() == {"ok": True, "reason": "ok"}
    rest.get(f"{rest.url}/apiv1/queue", timeout=TIMEOUT_S)
    metrics = metrics_text(rest)
    assert 'demucs_rest_requests_total{method="GET",route="/apiv1/queue",status="200"} 1.0' \
        in metrics
    assert 'demucs_rest_queue_depth{lane="normal"} 0.0' in metrics

    # Redis and MinIO gone: every answer is still JSON, with no traceback
    down = start_api(REDIS_PORT=str(_closed_port()), MINIO_ENDPOINT=f"127.0.0.1:{_closed_port()}")
    health = down.get(f"{down.url}/healthz", timeout=TIMEOUT_S)
    assert health.status_code == 503 and not health.json()["ok"]
    assert "Redis unreachable" in health.json()["reason"]
    assert "MinIO unreachable" in health.json()["reason"]
    assert_error(down.get(f"{down.url}/apiv1/queue", timeout=TIMEOUT_S), 503, "Redis")
    assert_error(down.get(f"{down.url}/apiv1/track/{'0' * 64}/vocals", timeout=TIMEOUT_S),
                 503, "MinIO")
    assert down.get(f"{down.url}/", timeout=TIMEOUT_S).status_code == 200


def metrics_text(rest) -> str:
    """Prometheus' page of a REST service: on METRICS_PORT, never on the API's port."""
    port = rest.metrics_port
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT_S).text


def test_metrics_are_not_on_the_api_port(api):
    """The ingress routes the API's port: Prometheus' page is on METRICS_PORT only."""
    assert_error(api.get(f"{api.url}/metrics", timeout=TIMEOUT_S), 404, "Not Found")
    assert "demucs_rest_requests_total" in metrics_text(api)


def _closed_port() -> int:
    return devstack.free_port()  # nothing listens there


@pytest.mark.parametrize("header", [None, "bytes=0-", "bytes=5-1", "bytes=1-2,4-5", "items=1-2",
                                    "bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 5000])
def test_range_headers_that_ask_for_the_whole_track(header):
    from rest.tracks import parse_range
    assert parse_range(header, 100) in (None, (0, 99))


def test_range_parsing():
    from rest.tracks import RangeNotSatisfiable, parse_range
    assert parse_range("bytes=10-19", 100) == (10, 19)
    assert parse_range("bytes=90-500", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=-500", 100) == (0, 99)
    for header in ("bytes=100-", "bytes=-0", "bytes=200-300"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, 100)
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=-5", 0)


def test_two_models_keep_their_own_tracks(stack, start_rest, make_song, small_model, tmp_path):
    """A second model's tracks never overwrite, nor stand for, the default model's."""
    registry = {"MODELS_FILE": write_registry(tmp_path / "models.json", builtin_model(),
                                              small_model)}
    rest = start_rest(**registry)
    stack.start_worker(**registry)
    song = make_song(seconds=2)
    first = rest.post(f"{rest.url}/apiv1/separate", json={"mp3": b64(song)},
                          timeout=TIMEOUT_S).json()
    assert wait_done(rest, first["id"])["state"] == "done"
    second = rest.post(f"{rest.url}/apiv1/separate", timeout=TIMEOUT_S,
                           json={"mp3": b64(song), "model": "small_ht"}).json()
    assert second["id"] != first["id"]  # not the default model's tracks
    record = wait_done(rest, second["id"])
    assert record["state"] == "done", record
    songhash = first["hash"]
    assert record["tracks"]["vocals"] == f"models/small_ht/{songhash}-vocals.mp3"
    assert record["urls"]["vocals"] == f"/apiv1/track/{songhash}/vocals?model=small_ht"
    default = rest.get(f"{rest.url}/apiv1/track/{songhash}/vocals", timeout=TIMEOUT_S)
    other = rest.get(f"{rest.url}{record['urls']['vocals']}", timeout=TIMEOUT_S)
    assert default.status_code == other.status_code == 200
    assert default.content != other.content
    stored = stack.minio.get_object(stack.output_bucket, f"{songhash}-vocals.mp3").read()
    assert stored == default.content  # the lab's key still holds the default model's track
    again = rest.post(f"{rest.url}/apiv1/separate", json={"mp3": b64(song)},
                          timeout=TIMEOUT_S).json()
    assert again["id"] == first["id"]  # each model's earlier result serves its own requests
    removed = rest.delete(f"{rest.url}/apiv1/remove/{songhash}/all?model=small_ht",
                              timeout=TIMEOUT_S).json()
    assert sorted(removed["removed"]) == sorted(TRACKS)
    assert rest.get(f"{rest.url}/apiv1/track/{songhash}/vocals", timeout=TIMEOUT_S).ok
    assert_error(rest.get(f"{rest.url}/apiv1/track/{songhash}/vocals?model=../x",
                              timeout=TIMEOUT_S), 404, "not a model name")


def test_probes_answer_on_a_port_of_their_own(stack, rest):
    """The kubelet's probes and Prometheus use METRICS_PORT, apart from the API's work."""
    port = rest.metrics_port
    health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=TIMEOUT_S)
    assert health.status_code == 200 and health.json() == {"ok": True, "reason": "ok"}
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=TIMEOUT_S).json() == {"ok": True}
    rest.get(f"{rest.url}/apiv1/queue", timeout=TIMEOUT_S)
    stack.redis.lpush(Keys.QUEUE, '{"songhash": "' + "e" * 64 + '"}')
    metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT_S).text
    assert 'demucs_rest_requests_total{method="GET",route="/apiv1/queue"' in metrics
    assert 'demucs_rest_queue_depth{lane="intake"} 1.0' in metrics  # read at the scrape,
    # on this port too
