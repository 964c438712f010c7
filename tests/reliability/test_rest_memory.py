"""REST memory is bounded by the settings, not by clients (issue 17's attack mix).

One REST process with default settings (MAX_INPUT_MB=100, MAX_CONCURRENT_UPLOADS=8) receives:
8 concurrent maximum-size base64 JSON uploads (134 MB bodies each, Content-Length given) while
a 9th is told 503 with Retry-After; a 140 MB nested JSON body, chunked and with its length;
a chunked multipart upload without Content-Length that never ends; and two songs it accepts
and stores. Its peak RSS (the kernel's high-water mark, VmHWM) must stay under
``REST_PEAK_BOUND_MIB``: a bound, not a timing. Bodies are sent over raw sockets so the test
sees how much was sent before the refusal came back. With ``REST_MEMORY_REPORT=<file>`` the
figures are written there (``bench/results/rest-memory.json``, quoted by docs/security.md).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from common.settings import Settings
from devstack.synth import encode_mp3, split_frames, synth_song

DEFAULTS = Settings()
REST_PEAK_BOUND_MIB = 512
"""Half the REST Deployment's 1 GiB limit; the receiving path holds a few MB per upload
(MAX_CONCURRENT_UPLOADS of them), never a body."""
SEND_PIECE_BYTES = 256 * 1024
IN_FLIGHT_SLACK_BYTES = 16 * 2**20  # socket buffers between the client and the server
TOP_UP_AFTER_S = float(os.environ.get("TEST_TOP_UP_AFTER_S", "20"))
"""Polls answered 400 (a slot free) for this long while 8 uploads wait: one was refused."""


@dataclass
class Answer:
    status: int
    body: dict
    headers: dict[str, str]
    sent_bytes: int


def post_streamed(port: int, headers: dict[str, str], pieces: Iterable[bytes],
                  chunked: bool = False) -> Answer:
    """POST /apiv1/separate, sending ``pieces`` until the server answers (or they run out)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=300)
    lines = [f"{k}: {v}" for k, v in headers.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    sock.sendall(("POST /apiv1/separate HTTP/1.1\r\nHost: localhost\r\n" + "".join(
        f"{line}\r\n" for line in lines) + "\r\n").encode())
    sent = 0
    answered = False
    for piece in pieces:
        if select.select([sock], [], [], 0)[0]:
            answered = True
            break
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        except (BrokenPipeError, ConnectionResetError):
            answered = True
            break
        sent += len(piece)
    if chunked and not answered:
        sock.sendall(b"0\r\n\r\n")
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = json.loads(response.read() or b"{}")
    sock.close()
    return Answer(response.status, body, dict(response.getheaders()), sent)


def mp3_block(bitrate_kbps: int = 320) -> bytes:
    """Whole MP3 frames, a multiple of 3 bytes long (so their base64 pieces join cleanly)."""
    clip = encode_mp3(synth_song(2.0, seed=3), bitrate_kbps)
    block = b"".join(data for _, data in split_frames(clip))
    while len(block) < 2**20:
        block += block
    return block * 3


def song_bytes(size: int, block: bytes) -> Iterator[bytes]:
    """``size`` bytes of MP3 frames in pieces (all but the last a multiple of 3 long)."""
    whole, rest = divmod(size, len(block))
    yield from (block for _ in range(whole))
    if rest:
        yield block[:rest]


def json_upload(size: int, block: bytes) -> Iterator[bytes]:
    yield b'{"mp3": "'
    for piece in song_bytes(size, block):
        yield base64.b64encode(piece)
    yield b'"}'


def json_length(size: int) -> int:
    return len(b'{"mp3": ""}') + (size + 2) // 3 * 4


def endless(piece: bytes) -> Iterator[bytes]:
    while True:
        yield piece


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM): exact, whatever happened between samples."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc (Linux only)")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.timeout(900)  # ~20 s alone; 8 x 133 MiB through the scanner is CPU-bound, and
# on a machine loaded by other tests it has taken over the suite's default 300 s
def test_rest_memory_stays_bounded_under_the_attack_mix(stack, start_rest, tmp_path):
    # default settings but the rate limit (its polling for the 503 would otherwise meet a
    # 429), the share per client (the 8 uploads come from one address here) and the body
    # deadline (7 uploads wait for the 8th, body half-sent)
    rest = start_rest(RATE_LIMIT_PER_MIN="0", MAX_UPLOADS_PER_CLIENT="8", BODY_TIMEOUT_S="900")
    pid = rest.service.process.pid
    port = rest.service.port
    figures: dict[str, float] = {}  # peak RSS in MiB so far, after each attack
    block = mp3_block()
    assert requests.get(rest.url + "/healthz", timeout=30).status_code == 200
    figures["baseline_mib"] = peak_rss_mib(pid)

    # 8 concurrent maximum-size base64 uploads; a 9th meanwhile is told to come back later
    size = DEFAULTS.max_input_bytes
    answers: list[Answer] = []
    connected = threading.Semaphore(0)
    go_on = threading.Event()

    def upload() -> None:
        pieces = json_upload(size, block)
        head = {"Content-Type": "application/json", "Content-Length": str(json_length(size))}

        def held_back() -> Iterator[bytes]:
            yield next(pieces)
            connected.release()  # the first piece is sent: the server holds a slot for it
            go_on.wait()
            yield from pieces
        answers.append(post_streamed(port, head, held_back()))

    threads: list[threading.Thread] = []

    def start_upload() -> None:
        threads.append(threading.Thread(target=upload))
        threads[-1].start()
        connected.acquire()

    for _ in range(DEFAULTS.max_concurrent_uploads):
        start_upload()
    busy = None
    deadline = time.monotonic() + 600
    topped_up = time.monotonic()
    while busy is None or busy.status_code != 503:  # until the server has taken all 8 in
        if busy is not None:  # polled, not hammered: the 8 uploads need the server's loop too
            assert time.monotonic() < deadline, "the server never held the 8 uploads at once"
            if time.monotonic() - topped_up > TOP_UP_AFTER_S:
                # a poll held a slot just when an upload asked for one, and that upload got
                # the 503 (its thread cannot tell while it waits): another takes its place
                start_upload()
                topped_up = time.monotonic()
            time.sleep(0.05)
        busy = requests.post(rest.url + "/apiv1/separate", data="{}", timeout=30,
                             headers={"Content-Type": "application/json"})
        assert busy.status_code in (400, 503), busy.text
    assert busy.headers["Retry-After"].isdigit()
    assert "MAX_CONCURRENT_UPLOADS" in busy.json()["error"]
    go_on.set()
    for thread in threads:
        thread.join()
    held = [a for a in answers if a.status == 400]
    refused = [a for a in answers if a.status == 503]
    assert len(held) == DEFAULTS.max_concurrent_uploads, answers
    assert len(refused) == len(threads) - len(held), answers
    assert all("MAX_DURATION_S" in a.body["error"] for a in held)  # received whole, probed
    assert all("MAX_CONCURRENT_UPLOADS" in a.body["error"] for a in refused)
    figures["after_8_max_size_json_uploads_mib"] = peak_rss_mib(pid)

    # a 140 MB nested JSON body: refused on its nesting when chunked, on its length otherwise
    nested = post_streamed(port, {"Content-Type": "application/json"},
                           (b"[" * SEND_PIECE_BYTES for _ in range(140 * 4)), chunked=True)
    assert nested.status == 400 and "deeper than" in nested.body["error"]
    assert nested.sent_bytes <= IN_FLIGHT_SLACK_BYTES
    declared = post_streamed(port, {"Content-Type": "application/json",
                                    "Content-Length": str(140 * 2**20)},
                             (b"[" * SEND_PIECE_BYTES for _ in range(140 * 4)))
    assert declared.status == 413 and "MAX_INPUT_MB" in declared.body["error"]
    assert declared.sent_bytes <= IN_FLIGHT_SLACK_BYTES
    figures["after_140_mb_nested_json_mib"] = peak_rss_mib(pid)

    # a chunked multipart upload without Content-Length, never ending: 413 once over the limit
    form_head = (b'--b0undary\r\nContent-Disposition: form-data; name="file"; '
                 b'filename="endless.mp3"\r\nContent-Type: audio/mpeg\r\n\r\n')

    def form() -> Iterator[bytes]:
        yield form_head
        yield from endless(block[:SEND_PIECE_BYTES])
    endless_form = post_streamed(
        port, {"Content-Type": "multipart/form-data; boundary=b0undary"}, form(), chunked=True)
    assert endless_form.status == 413 and "MAX_INPUT_MB" in endless_form.body["error"]
    assert endless_form.sent_bytes <= size + IN_FLIGHT_SLACK_BYTES
    figures["after_endless_chunked_multipart_mib"] = peak_rss_mib(pid)

    # songs within the limits are still accepted and stored, two at once
    accepted: list[Answer] = []

    def good_upload(seed: int) -> None:
        song = block[seed * 417:] + block  # distinct content, ~7.5 MB of whole frames
        song = song[:len(song) // 3 * 3]
        accepted.append(post_streamed(
            port, {"Content-Type": "application/json",
                   "Content-Length": str(json_length(len(song)))},
            json_upload(len(song), song)))
    good = [threading.Thread(target=good_upload, args=(seed,)) for seed in (1, 2)]
    for thread in good:
        thread.start()
    for thread in good:
        thread.join()
    assert [a.status for a in accepted] == [200, 200], accepted
    figures["peak_mib"] = peak_rss_mib(pid)

    figures.update(nested_sent_bytes=nested.sent_bytes,
                   endless_multipart_sent_bytes=endless_form.sent_bytes)
    print(f"\nREST peak RSS (VmHWM, MiB) and bytes sent before refusals: {figures}")
    if target := os.environ.get("REST_MEMORY_REPORT"):  # bench/results/rest-memory.json
        Path(target).write_text(json.dumps(
            {k: round(v) for k, v in figures.items()} | {"bound_mib": REST_PEAK_BOUND_MIB},
            indent=2) + "\n")
    assert psutil.Process(pid).is_running()
    assert figures["peak_mib"] < REST_PEAK_BOUND_MIB, figures
    assert list(stack.work_dir.iterdir()) == [], "upload temp files were left behind"


def test_a_client_that_goes_away_mid_upload_leaves_nothing_behind(stack, rest):
    sock = socket.create_connection(("127.0.0.1", rest.service.port), timeout=30)
    sock.sendall(b"POST /apiv1/separate HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
                 b'{"mp3": "' + b"QUJD" * 10_000)
    deadline = time.monotonic() + 30
    while not any(stack.work_dir.iterdir()):  # the upload's temp file exists
        assert time.monotonic() < deadline, rest.logs()
        time.sleep(0.01)
    sock.close()
    while any(stack.work_dir.iterdir()) or "abandoned" not in rest.logs():
        assert time.monotonic() < deadline, rest.logs()
        time.sleep(0.01)
    assert "internal error" not in rest.logs()
    assert requests.get(rest.url + "/apiv1/queue", timeout=30).json()["queue"] == []
