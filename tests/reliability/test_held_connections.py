"""Connections held open cannot shut others out (issue 30): bodies sent slowly or never
finished, callback bodies held half-sent, downloads never read.

Each attack runs from raw sockets against one real REST process (real Redis and S3 behind it)
while another client is served; the bound each one meets is a setting, named in its test.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.reliability.test_rest_memory import peak_rss_mib

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
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\n" + "".join(
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
