"""Connections held open cannot shut others out (issue 30): bodies sent slowly or never
finished, callback bodies held half-sent, downloads never read.

Each attack runs from raw sockets against one real REST process (real Redis and S3 behind it)
while another client is served; the bound each one meets is a setting, named in its test.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.reliability.test_rest_memory import peak_rss_mib
from tests.waiting import wait_until

CALLBACK_PEAK_BOUND_MIB = 256
"""A quarter of the REST Deployment's 1 GiB limit: held callback bodies cost little each."""
HEALTHZ_FAST_S = 2.0
"""/healthz answers within this while the attack goes on (the kubelet's timeout is 5 s)."""
PIECE_BYTES = 64 * 1024
OTHER_CLIENT = "127.0.0.2"
"""Another loopback address: a client other than the attacker (127.0.0.1) to the server."""
SECOND_ATTACKER = "127.0.0.3"


@contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    """Raw client sockets, all closed at the end."""
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


def open_post(port: int, path: str, headers: dict[str, str], opened: list[socket.socket],
              source: str = "127.0.0.1") -> socket.socket:
    """A POST whose head is sent, its body not yet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30,
                                    source_address=(source, 0))
    opened.append(sock)
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    return sock


def send_until_answered(sock: socket.socket, size: int) -> int:
    """Send ``size`` body bytes unless the server answers first; the bytes sent."""
    sent = 0
    while sent < size:
        if select.select([sock], [], [], 0)[0]:
            break
        piece = min(PIECE_BYTES, size - sent)
        try:
            sock.sendall(b"x" * piece)
        except OSError:  # answered and closed meanwhile
            break
        sent += piece
    return sent


def answers(opened: list[socket.socket], wait_s: float) -> list[int | None]:
    """The status each socket was answered with by the end of ``wait_s`` (None: no answer
    yet, -1: closed without one); returns early once every socket has its answer."""
    found: dict[socket.socket, int] = {}
    deadline = time.monotonic() + wait_s
    while len(found) < len(opened):
        waiting = [sock for sock in opened if sock not in found]
        ready = select.select(waiting, [], [], max(0.0, deadline - time.monotonic()))[0]
        if not ready:
            break
        for sock in ready:
            try:
                data = sock.recv(65536, socket.MSG_PEEK)
            except OSError:
                data = b""
            found[sock] = int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else -1
    return [found.get(sock) for sock in opened]


def reason_of(sock: socket.socket) -> str:
    """The ``reason`` of the JSON answer waiting on ``sock``."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    return json.loads(response.read() or b"{}").get("reason", "")


def song_form(song: Path) -> tuple[bytes, str]:
    """A multipart upload of ``song``, as a browser or ``requests`` sends it."""
    prepared = requests.Request("POST", "http://test/apiv1/separate", data={"stems": "vocals"},
                                files={"file": (song.name, song.read_bytes(),
                                                "audio/mpeg")}).prepare()
    return prepared.body, prepared.headers["Content-Type"]  # type: ignore[return-value]


def post_from(port: int, source: str, song: Path) -> tuple[int, dict]:
    """Upload ``song`` from the loopback address ``source``: its status and answer."""
    body, content_type = song_form(song)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60,
                                            source_address=(source, 0))
    try:
        connection.request("POST", "/apiv1/separate", body=body,
                           headers={"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def healthz_s(url: str) -> float:
    started = time.monotonic()
    answer = requests.get(url + "/healthz", timeout=30)
    assert answer.status_code == 200, answer.text
    return time.monotonic() - started


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.timeout(600)
def test_held_callback_bodies_keep_rest_small_and_healthz_fast(stack, start_rest):
    """600 connections to ``POST /`` (the callback sink, no token) each send 960 KB of a
    declared 1 MiB body and hold; then 600 more stay under the 64 KB cap and hold."""
    rest = start_rest()  # default settings: REST_MAX_IN_FLIGHT=64, RATE_LIMIT_PER_MIN=60
    port, pid = rest.service.port, rest.service.process.pid
    assert healthz_s(rest.url) < HEALTHZ_FAST_S
    with sockets() as opened:
        for _ in range(600):
            sock = open_post(port, "/", {"Content-Type": "application/json",
                                         "Content-Length": str(2**20)}, opened)
            send_until_answered(sock, 960 * 1024)
        big_healthz_s = healthz_s(rest.url)
        big_mib = peak_rss_mib(pid)
        big = answers(opened, wait_s=10)
    print(f"FIGURE held callback bodies: REST peak {big_mib:.0f} MiB after 600 x 960 KB of "
          f"1 MiB held, /healthz in {big_healthz_s:.2f} s")
    assert big_mib < CALLBACK_PEAK_BOUND_MIB and big_healthz_s < HEALTHZ_FAST_S
    assert set(big) <= {413, 503, 429}, big  # refused at once, never read whole
    with sockets() as opened:
        for _ in range(600):
            sock = open_post(port, "/", {"Content-Type": "application/json",
                                         "Content-Length": str(64 * 1024)}, opened,
                             SECOND_ATTACKER)  # a rate-limit window of its own
            send_until_answered(sock, 60 * 1024)
        small_healthz_s = healthz_s(rest.url)
        small = answers(opened, wait_s=1)
        small_mib = peak_rss_mib(pid)
    held = small.count(None)
    print(f"FIGURE held callback bodies: REST peak {small_mib:.0f} MiB after 600 x 60 KB of "
          f"64 KB held ({held} held, the rest refused), /healthz in {small_healthz_s:.2f} s")
    assert small_mib < CALLBACK_PEAK_BOUND_MIB and small_healthz_s < HEALTHZ_FAST_S
    # counted in REST_MAX_IN_FLIGHT and in the rate limit: the others answered at once
    assert 0 < held <= 64 and set(small) <= {None, 503, 429}, small
    # another client's callback (the lab's: a few hundred bytes) is still received
    body = b'{"id": "j", "status": "done", "data": {"mp3": "a.mp3", "data": "to be returned"}}'
    with sockets() as opened:
        sock = open_post(port, "/", {"Content-Type": "application/json",
                                     "Content-Length": str(len(body))}, opened, OTHER_CLIENT)
        sock.sendall(body)
        assert answers(opened, wait_s=30) == [200]


@pytest.mark.timeout(300)
def test_one_client_dripping_on_8_uploads_locks_nobody_out(stack, start_rest, make_song):
    """One client opens 8 uploads declaring 50 MB and sends 1 byte every 2 s on each (and a
    callback body the same way): another client's upload is accepted at once, and the slow
    bodies are answered 408 once BODY_TIMEOUT_S is spent, giving their slots back."""
    timeout_s = 10
    rest = start_rest(BODY_TIMEOUT_S=str(timeout_s))  # else defaults: MAX_CONCURRENT_UPLOADS=8,
    port = rest.service.port  # MAX_UPLOADS_PER_CLIENT=2, BODY_MIN_KBPS=256
    form = {"Content-Type": "multipart/form-data; boundary=drip",
            "Content-Length": str(50 * 2**20)}
    stop = threading.Event()
    with sockets() as drips:
        opened_at = time.monotonic()
        for _ in range(8):
            open_post(port, "/apiv1/separate", form, drips).sendall(
                b'--drip\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"'
                b"\r\n\r\n")
        open_post(port, "/", {"Content-Type": "application/json", "Content-Length": "300"},
                  drips)

        def drip() -> None:
            while not stop.wait(2):  # the attack's own pace
                for sock in drips:
                    try:
                        sock.send(b"x")
                    except OSError:  # answered and closed
                        pass
        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        try:
            asked = time.monotonic()
            status, answer = post_from(port, OTHER_CLIENT, make_song(seconds=2, seed=71))
            accepted_s = time.monotonic() - asked
            assert status == 200, answer
            final = answers(drips, wait_s=timeout_s + 60)
            answered_s = time.monotonic() - opened_at
        finally:
            stop.set()
            dripper.join()
        reasons = [reason_of(sock) for sock in drips]
    print(f"FIGURE slow uploads: another client's upload accepted in {accepted_s:.2f} s while "
          f"one client dripped on 8; the drips answered {final} within {answered_s:.1f} s")
    assert accepted_s < 10
    assert sorted(final) == [408] * 3 + [429] * 6, (final, reasons)
    assert all("MAX_UPLOADS_PER_CLIENT" in r for r in reasons if "uploads of yours" in r)
    assert sum("BODY_TIMEOUT_S" in r for r in reasons) == 3, reasons
    assert answered_s < timeout_s + 60
    assert "Traceback" not in rest.logs() and "internal error" not in rest.logs()
    # the slots were given back: the same client uploads again, at once
    status, answer = post_from(port, "127.0.0.1", make_song(seconds=2, seed=72))
    assert status == 200, answer


def test_a_body_at_the_minimum_pace_is_never_cut_off(stack, start_rest, make_song):
    """``BODY_TIMEOUT_S=1``: a body that takes seconds, sent at twice ``BODY_MIN_KBPS``, is
    received whole; the deadline is a pace, not a total."""
    rest = start_rest(BODY_TIMEOUT_S="1", BODY_MIN_KBPS="256")  # 32 KB/s
    body, content_type = song_form(make_song(seconds=10, seed=73))
    pieces = [body[i:i + 16 * 1024] for i in range(0, len(body), 16 * 1024)]
    pace = threading.Event()
    with sockets() as opened:
        sock = open_post(rest.service.port, "/apiv1/separate",
                         {"Content-Type": content_type, "Content-Length": str(len(body))},
                         opened)
        started = time.monotonic()
        for piece in pieces:  # 64 KB/s: a quarter second per 16 KB
            pace.wait(0.25)
            sock.sendall(piece)
        took_s = time.monotonic() - started
        assert answers(opened, wait_s=60) == [200], reason_of(sock)
    print(f"FIGURE paced body: {len(body)} bytes over {took_s:.1f} s with BODY_TIMEOUT_S=1 "
          f"accepted")
    assert took_s > 2


def open_unread_download(port: int, path: str, opened: list[socket.socket]) -> socket.socket:
    """A GET whose answer the client never reads (a 4 KB receive buffer, then nothing)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    opened.append(sock)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    return sock


def read_to_end(sock: socket.socket) -> int:
    """Read what the server sent until it closed the connection: the bytes read."""
    total = 0
    while chunk := sock.recv(1 << 20):
        total += len(chunk)
    return total


@pytest.mark.timeout(300)
def test_downloads_never_read_leave_the_api_answering(stack, start_rest):
    """With REST_MAX_IN_FLIGHT=4, four clients ask for a 24 MB track and stop reading:
    everyone else's queue and status polls still answer, and the server gives up on the
    unread answers once BODY_TIMEOUT_S plus a piece's time at BODY_MIN_KBPS is spent."""
    timeout_s = 5
    rest = start_rest(REST_MAX_IN_FLIGHT="4", BODY_TIMEOUT_S=str(timeout_s),
                      RATE_LIMIT_PER_MIN="0")
    songhash = "d" * 64
    size = 24 * 2**20
    stack.minio.make_bucket(stack.output_bucket)
    stack.minio.put_object(stack.output_bucket, f"{songhash}-vocals.mp3",
                           io.BytesIO(os.urandom(size)), size)
    track = f"/apiv1/track/{songhash}/vocals.mp3"
    with sockets() as unread:
        for _ in range(4):
            open_unread_download(rest.service.port, track, unread)
        assert answers(unread, wait_s=30) == [200] * 4  # each answer has started
        polls = []
        for _ in range(20):
            polls.append(requests.get(rest.url + "/apiv1/queue", timeout=30).status_code)
            polls.append(requests.get(rest.url + "/apiv1/status/nope", timeout=30).status_code)
        assert polls == [200, 404] * 20, polls
        # the unread answers are given up on: a track is served again, to another client
        gave_up = time.monotonic()
        wait_until(lambda: requests.get(rest.url + track, timeout=60).status_code == 200,
                   timeout_s=120, message=rest.logs)
        freed_s = time.monotonic() - gave_up
        cut = [read_to_end(sock) for sock in unread]
    print(f"FIGURE unread downloads: 40 polls of other clients answered while 4 unread "
          f"downloads held; the server gave up on them ({cut} of {size} bytes sent), a track "
          f"served again after {freed_s:.1f} s")
    assert all(n < size for n in cut), cut
    assert "Traceback" not in rest.logs()


def test_a_body_declared_and_never_sent_does_not_cut_a_download_short(stack, start_rest):
    """A GET that declares a body it never sends (its deadline would pass mid-answer) gets
    its whole track, read slowly over seconds; nothing is logged as an error."""
    rest = start_rest(BODY_TIMEOUT_S="1")
    songhash, size = "e" * 64, 2 * 2**20
    stack.minio.make_bucket(stack.output_bucket)
    stack.minio.put_object(stack.output_bucket, f"{songhash}-vocals.mp3",
                           io.BytesIO(os.urandom(size)), size)
    pace = threading.Event()
    with sockets() as opened:
        sock = socket.create_connection(("127.0.0.1", rest.service.port), timeout=30)
        opened.append(sock)
        sock.sendall(f"GET /apiv1/track/{songhash}/vocals.mp3 HTTP/1.1\r\nHost: localhost\r\n"
                     f"Content-Length: 1000\r\n\r\n".encode())
        started, received = time.monotonic(), b""
        while len(received) < size or b"\r\n\r\n" not in received:
            pace.wait(0.1)  # 640 KB/s: the answer takes 3 s, past BODY_TIMEOUT_S
            chunk = sock.recv(64 * 1024)
            assert chunk, f"closed after {len(received)} bytes: {rest.logs()}"
            received += chunk
            if len(received) >= size + 4096:
                break
        took_s = time.monotonic() - started
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and len(body) == size, (head, len(body))
    assert took_s > 2
    assert "Traceback" not in rest.logs() and "Exception in ASGI" not in rest.logs()
