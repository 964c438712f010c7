"""The REST service under load: shedding past REST_MAX_IN_FLIGHT, probes that never wait."""

from __future__ import annotations

import io
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import requests

from common.contract import Keys
from tests.waiting import wait_until

TIMEOUT_S = 30


def open_upload(host: str, port: int) -> socket.socket:
    """An upload whose body never finishes arriving: an API request held in flight."""
    held = socket.create_connection((host, port))
    held.sendall(b"POST /apiv1/separate HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"mp3\": \"")
    return held


def test_past_the_limit_the_api_answers_503_at_once_and_probes_still_answer(start_rest):
    rest = start_rest(REST_MAX_IN_FLIGHT="2", BODY_TIMEOUT_S="300")  # uploads held on purpose
    host, port = rest.host.split(":")
    held = [open_upload(host, int(port)) for _ in range(2)]

    def shed() -> list[requests.Response]:  # a 503 Response is falsy: wrap it
        answer = rest.get(f"{rest.url}/apiv1/queue", timeout=TIMEOUT_S)
        return [answer] if answer.status_code == 503 else []

    [refused] = wait_until(shed, timeout_s=20)
    assert refused.headers["retry-after"] == "1"
    assert "REST_MAX_IN_FLIGHT" in refused.json()["error"]
    assert rest.get(f"{rest.url}/apiv1/status/nope", timeout=TIMEOUT_S).status_code == 503
    assert rest.get(f"{rest.url}/healthz", timeout=TIMEOUT_S).json() == {
        "ok": True, "reason": "ok"}
    assert rest.get(f"{rest.url}/", timeout=TIMEOUT_S).status_code == 200
    metrics_port = rest.service.extra["metrics_port"]
    assert requests.get(f"http://127.0.0.1:{metrics_port}/metrics",
                        timeout=TIMEOUT_S).status_code == 200

    for connection in held:  # the clients give up: their places are free again
        connection.close()
    wait_until(lambda: rest.get(f"{rest.url}/apiv1/queue", timeout=TIMEOUT_S).ok,
               timeout_s=20)
    assert "Retry-After" not in rest.get(f"{rest.url}/apiv1/queue",
                                             timeout=TIMEOUT_S).headers
    wait_until(lambda: "abandoned by its client" in rest.logs(), timeout_s=20)
    assert "Traceback" not in rest.logs()


def test_concurrent_downloads_reuse_pooled_storage_connections(stack, start_rest):
    """More downloads at once than urllib3's default pool of 10: none is opened and discarded."""
    rest = start_rest(REST_MAX_IN_FLIGHT="40")
    songhash = "c" * 64
    stack.minio.make_bucket(stack.output_bucket)
    track = os.urandom(256 * 1024)
    stack.minio.put_object(stack.output_bucket, f"{songhash}-vocals.mp3", io.BytesIO(track),
                           len(track))

    def download(_: int) -> bytes:
        with requests.Session() as session:
            return session.get(f"{rest.url}/apiv1/track/{songhash}/vocals",
                               timeout=TIMEOUT_S).content

    with ThreadPoolExecutor(30) as pool:
        assert all(body == track for body in pool.map(download, range(90)))
    assert "Connection pool is full" not in rest.log_path.read_text(errors="replace")
    lines = [line.decode() for line in stack.redis.lrange(Keys.LOGGING, 0, -1)]
    assert not [line for line in lines if "urllib3" in line or "pool" in line]
