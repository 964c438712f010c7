"""Hostile clients can neither stall nor exhaust the service: one attack per test.

Real processes throughout (redis-server, the S3 server, the REST service and workers as
subprocesses, the Demucs CLI). Each test prints the figure docs/security.md
quotes (``FIGURE ...`` lines, shown with ``pytest -s``); the asserts are bounds, never timings
of performance.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from common.contract import Keys, output_key
from common.egress import EgressPolicy
from common.logs import LOG_ENTRY_MAX_BYTES, RedisListHandler
from common.status import StatusStore
from common.webhook import post_webhook
from devstack.synth import encode_mp3, synth_song

MP3 = encode_mp3(synth_song(1.0, seed=5))
JSON = {"Content-Type": "application/json"}


class Tarpit:
    """A webhook receiver that reads the request, then answers one byte every ``gap_s``."""

    def __init__(self, gap_s: float = 1.0) -> None:
        self.gap_s = gap_s
        self.connections = 0
        self.closed = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 100_000:
                if self.closed.wait(self.gap_s):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self.closed.set()
        self.server.close()


@pytest.fixture
def tarpit() -> Iterator[Tarpit]:
    pit = Tarpit()
    yield pit
    pit.close()


def test_webhook_deadline_holds_against_a_tarpit(tarpit):
    started = time.monotonic()
    assert post_webhook(tarpit.url, {"id": "x"}, None, timeout_s=3,
                        policy=EgressPolicy(allow_local=True)) is False
    seen_s = time.monotonic() - started
    print(f"FIGURE webhook to a tarpit, WEBHOOK_TIMEOUT_S=3: delivery ended after {seen_s:.2f} s")
    assert seen_s < 3 + 2, seen_s


def test_worker_is_held_no_longer_than_the_deadline(stack, tarpit, webhook):
    songhash = stack.upload_song(_song(stack.tmp))
    stack.start_worker(WEBHOOK_TIMEOUT_S="3")
    stack.push({"id": "tarpit-job", "songhash": songhash, "stems": ["vocals"],
                "callback": {"url": tarpit.url}})
    stack.push({"id": "next-job", "songhash": songhash, "stems": ["drums"],
                "callback": {"url": webhook.url}})
    second = stack.wait_for("next-job")
    deadline = time.monotonic() + 30
    while "webhook" not in (first := stack.status("tarpit-job") or {}).get("timings", {}):
        assert time.monotonic() < deadline, (first, stack.worker_logs())
        time.sleep(0.05)  # the timings are written just after the outcome
    assert first["state"] == second["state"] == "done", (first, second)
    held_s = first["timings"]["webhook"]
    print(f"FIGURE worker webhook stage to a tarpit, WEBHOOK_TIMEOUT_S=3: {held_s:.2f} s")
    assert held_s < 3 + 2, first["timings"]
    while not webhook.calls and time.monotonic() < deadline:  # sent just after ``done``
        time.sleep(0.05)
    assert len(webhook.calls) == 1 and tarpit.connections == 1, stack.worker_logs()


def test_tarpit_callbacks_do_not_freeze_the_rest_service(stack, start_rest, tarpit):
    rest = start_rest(WEBHOOK_TIMEOUT_S="60")
    songhash = _separated_already(stack, MP3)
    body = json.dumps({"mp3": base64.b64encode(MP3).decode(), "stems": ["vocals"],
                       "callback": {"url": tarpit.url}})
    for _ in range(40):  # each answered at once; its callback goes to the tarpit
        answer = requests.post(rest.url + "/apiv1/separate", data=body, headers=JSON,
                               timeout=10)
        assert answer.status_code == 200 and "already separated" in answer.json()["reason"]
    worst_s = 0.0
    metrics = f"http://127.0.0.1:{rest.service.extra['metrics_port']}/metrics"
    for url in [rest.url + "/healthz", rest.url + "/", metrics, rest.url + "/apiv1/queue"] * 3:
        started = time.monotonic()
        assert requests.get(url, timeout=10).status_code == 200, url
        worst_s = max(worst_s, time.monotonic() - started)
    print(f"FIGURE 40 tarpit callbacks held by REST: slowest of 12 probes {worst_s:.3f} s")
    assert tarpit.connections <= 4 + 1  # the callback pool's threads, nothing else
    assert songhash in _log_text(stack)


def test_log_flood_stays_bounded_in_bytes_and_unforgeable(stack, start_rest):
    # the rate limit off: 350 callbacks from one address in a minute are this test's point
    rest = start_rest(LOG_LIST_MAX_BYTES=str(64 * 1024), RATE_LIMIT_PER_MIN="0")
    forged = "j\nlab-host.rest.error:FORGED entry"
    big = {"id": forged, "status": "done", "error": "e" * 55_000, "data": {"k": "v" * 9_000}}
    for _ in range(50):  # 64 KB each, the most POST / takes
        answer = requests.post(rest.url + "/", data=json.dumps(big), headers=JSON, timeout=10)
        assert answer.status_code == 200
    entries = stack.redis.lrange(Keys.LOGGING, 0, -1)
    print(f"FIGURE logging after 50 callbacks of 64 KB: {len(entries)} entries, "
          f"{sum(len(e) for e in entries)} bytes")
    assert not any(e.startswith(b"lab-host") or b"\n" in e for e in entries)
    assert any(b"j\\nlab-host.rest.error:FORGED" in e for e in entries)
    assert "\nlab-host" not in rest.logs()  # stderr escapes the same way
    for _ in range(300):  # past the byte bound
        requests.post(rest.url + "/", data=json.dumps({**big, "id": "j"}), headers=JSON,
                      timeout=10)
    entries = stack.redis.lrange(Keys.LOGGING, 0, -1)
    held = sum(len(e) for e in entries)
    print(f"FIGURE logging after 350 callbacks of 64 KB, LOG_LIST_MAX_BYTES=65536: "
          f"{len(entries)} entries, {held} bytes")
    assert held <= 64 * 1024 and int(stack.redis.get(Keys.LOGGING_BYTES)) == held
    assert max(len(e) for e in entries) <= LOG_ENTRY_MAX_BYTES


def test_log_entries_over_8_kb_are_cut_and_marked(stack):
    handler = RedisListHandler(stack.redis, "test", "probe", 100, 1 << 20)
    handler.emit(logging.LogRecord("probe", logging.WARNING, __file__, 1, "x%s",
                                   ("y" * 20_000,), None))
    entry = stack.redis.lindex(Keys.LOGGING, 0)
    assert len(entry) <= LOG_ENTRY_MAX_BYTES and b"[truncated 20" in entry


def test_identical_uploads_join_one_job_and_each_gets_its_callback(stack, start_rest, webhook):
    rest = start_rest(MAX_UPLOADS_PER_CLIENT="5")  # five clients, on one address here

    def submit(n: int) -> requests.Response:
        body = {"mp3": base64.b64encode(MP3).decode(), "stems": ["vocals"],
                "callback": {"url": webhook.url, "data": {"n": n}}}
        return requests.post(rest.url + "/apiv1/separate", json=body, timeout=10)

    with ThreadPoolExecutor(5) as pool:  # at once: the claim must hold against a race
        answers = list(pool.map(submit, range(5)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1 and len(stack.waiting()) == 1
    stack.start_worker()
    job_id = ids.pop()
    assert stack.wait_for(job_id)["state"] == "done"
    deadline = time.monotonic() + 30
    while len(webhook.calls) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    payloads = [json.loads(body) for body, _ in webhook.calls]
    assert sorted(p["data"]["n"] for p in payloads) == [0, 1, 2, 3, 4]
    assert {p["id"] for p in payloads} == {job_id} and {p["status"] for p in payloads} == {"done"}
    print(f"FIGURE 5 identical uploads: 1 job queued, {len(payloads)} callbacks delivered")
    again = requests.post(rest.url + "/apiv1/separate",
                          json={"mp3": base64.b64encode(MP3).decode(), "stems": ["vocals"]},
                          timeout=10).json()
    assert again["id"] == job_id and "already separated" in again["reason"]


def test_rate_limit_holds_across_replicas_and_ignores_forwarded_for(stack, start_rest):
    # the trusted proxy is elsewhere: this client's own X-Forwarded-For must count for nothing
    settings = {"RATE_LIMIT_PER_MIN": "3", "FORWARDED_ALLOW_IPS": "192.0.2.1"}
    first, second = start_rest(**settings), start_rest(**settings)
    answers = []
    for n, rest in enumerate((first, second, first, second)):
        mp3 = encode_mp3(synth_song(1.0, seed=20 + n))
        answers.append(requests.post(
            rest.url + "/apiv1/separate", json={"mp3": base64.b64encode(mp3).decode()},
            headers={"X-Forwarded-For": f"10.0.0.{n}"}, timeout=10))
    assert [a.status_code for a in answers] == [200, 200, 200, 429], [a.text for a in answers]
    refused = answers[-1]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "RATE_LIMIT_PER_MIN" in refused.json()["error"]
    assert len(stack.waiting()) == 3
    assert requests.get(first.url + "/apiv1/queue", timeout=10).status_code == 200  # only uploads


def test_lying_files_fail_for_good_with_a_clear_reason(stack, start_rest, tmp_path):
    text = b"just some text, not a song\n" * 3 + MP3[:1100]  # one MP3 frame in text
    rest = start_rest()
    via_rest = requests.post(rest.url + "/apiv1/separate",
                             json={"mp3": base64.b64encode(text).decode(), "stems": ["vocals"]},
                             timeout=10)
    # the frame walk (common/mp3_frames.py) finds no chain of frames: refused at the door
    assert via_rest.status_code == 400 and "not an MP3" in via_rest.json()["error"], \
        via_rest.text
    lie = tmp_path / "lie.mp3"
    lie.write_bytes(b"RIFF....WAVEfmt " + b"\0" * 28 + MP3[:1100] + b"lorem ipsum " * 2000)
    songhash = stack.upload_song(lie)
    stack.push({"id": "redis-lie", "songhash": songhash, "stems": ["vocals"]})
    stack.start_worker()
    for job_id in ("redis-lie",):  # pushed straight onto Redis: the worker decides
        record = stack.wait_for(job_id)
        assert record["state"] == "failed" and record["attempts"] == 1, record
        assert "not audio Demucs can decode" in record["error"], record
        assert "internal error" not in record["error"] and str(stack.work_dir) not in \
            record["error"] and "/tmp" not in record["error"], record


def test_smaller_attacks_get_4xx_and_no_internal_error(stack, start_rest):
    rest = start_rest()
    songhash = _separated_already(stack, MP3)
    nested = '{"mp3": ' + "[" * 100_000 + "]" * 100_000 + "}"
    answer = requests.post(rest.url + "/apiv1/separate", data=nested, headers=JSON, timeout=10)
    assert answer.status_code == 400 and "nested" in answer.json()["error"], answer.text
    deep_callback = '{"id": "j", "data": ' + "[" * 32_000 + "]" * 32_000 + "}"  # < 64 KB
    assert requests.post(rest.url + "/", data=deep_callback, timeout=10).status_code == 200
    assert rest.get(f"{rest.url}/apiv1/status/{songhash}%0A", timeout=10).status_code == 404
    track = f"{rest.url}/apiv1/track/{songhash}/vocals.mp3"
    for header in ("bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 5000,
                   "bytes=99999999999999999-"):
        answer = requests.get(track, headers={"Range": header}, timeout=10)
        assert answer.status_code in (200, 416), (header[:40], answer.status_code)
    for n in range(30):  # refused by the HTTP parser (httptools), or counted as "other" (h11)
        answer = requests.request(f"HACK{n}", rest.url + "/", timeout=10)
        assert 400 <= answer.status_code < 500, answer.status_code
    metrics_port = rest.service.extra["metrics_port"]
    metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert "HACK" not in metrics  # no label value per made-up method
    _disconnect_mid_upload(rest.url)
    _disconnect_mid_upload(rest.url, multipart=True)
    deadline = time.monotonic() + 10
    while rest.logs().count("abandoned by its client") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rest.logs().count("abandoned by its client") == 2, rest.logs()
    assert "internal error" not in rest.logs() and "Traceback" not in rest.logs()


def _disconnect_mid_upload(url: str, multipart: bool = False) -> None:
    host, port = url.removeprefix("http://").split(":")
    content_type, start = (b"application/json", b'{"mp3": "') if not multipart else \
        (b"multipart/form-data; boundary=xx",
         b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\n\r\n')
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(b"POST /apiv1/separate HTTP/1.1\r\nHost: localhost\r\nContent-Type: " +
                     content_type + b"\r\nContent-Length: 100000\r\n\r\n" + start +
                     b"A" * 5000)
        time.sleep(0.2)  # let the service start reading before the client goes away


def _song(folder: Path) -> Path:
    path = folder / "song.mp3"
    path.write_bytes(MP3)
    return path


def _separated_already(stack, mp3: bytes) -> str:
    """A song whose vocals exist: its done record and its track object, as a worker leaves."""
    songhash = stack.upload_song(_song(stack.tmp))
    key = output_key("{songhash}-{track}.mp3", songhash, "vocals")
    if not stack.minio.bucket_exists(stack.output_bucket):
        stack.minio.make_bucket(stack.output_bucket)
    stack.minio.fput_object(stack.output_bucket, key, str(_song(stack.tmp)))
    status = StatusStore(stack.redis, 3600)
    status.queued("made-earlier", songhash, stack.env["DEMUCS_MODEL"])
    status.done("made-earlier", {"vocals": key}, 1.0)
    return songhash


def _log_text(stack) -> str:
    return b"\n".join(stack.redis.lrange(Keys.LOGGING, 0, -1)).decode(errors="replace")

