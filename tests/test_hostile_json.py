"""JSON that ``json.loads`` reads in ways the service did not expect, from a client or from a
Redis-only producer: one parser (``common.json_text.parse_json``) refuses it all with one error.

Each of these was a 500, a dead worker or a dead queue page before: an integer of 5,001 digits
(``json.loads`` raises a bare ValueError past Python's digit limit), a UTF-16 body (``json.loads``
detects it by its first bytes, while the body's scanner counted nesting as UTF-8, so 5,000
levels reached the parser: RecursionError), a lone surrogate (``"\\ud800"``: valid JSON that
no UTF-8 writer can write), and deep nesting pushed straight onto the queue (a worker died
holding it, and so did the next one a heartbeat later). Real REST app in-process, real
redis-server and S3 server, the worker in-process on the stand-in Demucs.
"""

from __future__ import annotations

import base64
import json

import pytest

from common.contract import Keys, claimed_job_id
from common.json_text import NotJson, parse_json

DIGITS = "1" + "0" * 5000  # 5 KB: within the 64 KB of fields and the 32 levels
DEEP = "[" * 5000 + "]" * 5000
JSON = {"Content-Type": "application/json"}
TIMEOUT_S = 30


@pytest.mark.parametrize(("text", "why"), [
    (DIGITS, "digits"), (DEEP, "nested too deeply"), ('{"k": "\\ud800"}', "surrogate"),
    ('["\\udfff x"]', "surrogate"), ("[1,", "Expecting"), (b"\xff\xfe[\x001\x00]\x00", "UTF-8"),
    ('["\u2200",' + "[" * 5000 + "]" * 5000 + "]", "nested too deeply")])
def test_parse_json_refuses_with_one_error(text, why):
    with pytest.raises(NotJson, match=why):
        parse_json(text)


def test_parse_json_reads_json():
    assert parse_json(b'{"k": ["\\ud83c\\udfb5", 1, 2.5, null]}') == {"k": ["🎵", 1, 2.5, None]}


def _song(make_song) -> str:
    return base64.b64encode(make_song(seconds=1.0).read_bytes()).decode()


def _utf16_nested() -> bytes:
    # U+2200 is the bytes 00 22 in UTF-16-LE: a quote to a byte scanner, which then takes
    # every "[" after it for a string's content
    return ('["\u2200",' + "[" * 5000 + "]" * 5000 + "]").encode("utf-16-le")


@pytest.mark.parametrize("body", ["huge-int", "utf-16", "surrogate"])
def test_a_json_request_the_parser_refuses_is_a_400(stack, api, make_song, body):
    song = _song(make_song)
    data = {"huge-int": ('{"mp3": "' + song + '", "bitrate": ' + DIGITS + "}").encode(),
            "utf-16": _utf16_nested(),
            "surrogate": ('{"mp3": "' + song + '", "callback": {"url": "http://127.0.0.1:9/", '
                          '"data": {"k": "\\ud800"}}}').encode()}[body]
    answer = api.post(f"{api.url}/apiv1/separate", data=data, headers=JSON, timeout=TIMEOUT_S)
    assert answer.status_code == 400, (answer.status_code, answer.text)
    assert "not valid JSON" in answer.json()["reason"]
    assert stack.waiting() == []


@pytest.mark.parametrize("callback", [
    b'{"url": "http://127.0.0.1:9/", "data": {"n": ' + DIGITS.encode() + b"}}",
    b'{"url": "http://127.0.0.1:9/", "data": {"k": "\\udfff"}}',
    _utf16_nested()])
def test_a_form_callback_the_parser_refuses_is_a_400(stack, api, make_song, callback):
    files = {"file": ("song.mp3", make_song(seconds=1.0).read_bytes(), "audio/mpeg"),
             "callback": (None, callback)}
    answer = api.post(f"{api.url}/apiv1/separate", files=files, timeout=TIMEOUT_S)
    assert answer.status_code == 400, (answer.status_code, answer.text)
    assert "callback" in answer.json()["reason"]
    assert stack.waiting() == []


@pytest.mark.parametrize("body", ['{"id": "x", "data": ' + DIGITS + "}", DEEP,
                                  '{"id": "x", "data": "\\ud800"}'])
def test_the_callback_sink_logs_what_it_cannot_read_as_not_json(api, body, caplog):
    answer = api.post(f"{api.url}/", data=body.encode(), headers=JSON, timeout=TIMEOUT_S)
    assert answer.status_code == 200, (answer.status_code, answer.text)
    assert "that are not a JSON object" in caplog.text


def test_a_deep_payload_on_the_queue_leaves_the_queue_page_answering(stack, api):
    stack.push(DEEP)
    answer = api.get(f"{api.url}/apiv1/queue", timeout=TIMEOUT_S)
    assert answer.status_code == 200, (answer.status_code, answer.text)
    assert answer.json()["total"] == 1


POISON = {
    "huge-int": '{"id": "huge-int", "songhash": "' + "a" * 64 + '", "bitrate": ' + DIGITS + "}",
    "deep": '{"id": "deep", "songhash": "' + "a" * 64 + '", "callback": {"url": '
            '"http://127.0.0.1:9/", "data": {"k": ' + DEEP + "}}}",
    "surrogate": '{"id": "surrogate", "songhash": "' + "a" * 64 + '", "callback": {"url": '
                 '"http://127.0.0.1:9/", "data": {"k": "\\ud800"}}}',
}


@pytest.mark.parametrize("case", sorted(POISON))
def test_a_payload_the_parser_refuses_fails_alone_and_the_worker_goes_on(stack, make_song,
                                                                          case):
    songhash = stack.upload_song(make_song(seconds=1.0))
    stack.push(POISON[case])
    stack.push({"id": "good", "songhash": songhash, "stems": ["vocals"]})
    assert stack.worker_in_process().run(burst=True) == 0  # it did not die holding them
    record = stack.status(claimed_job_id(POISON[case]))
    assert record is not None and record["state"] == "failed", record
    assert "not valid JSON" in record["error"]
    assert stack.status("good")["state"] == "done"
    assert stack.held_jobs() == 0
    dead = [json.loads(entry) for entry in stack.redis.lrange(Keys.DEAD_LETTER, 0, -1)]
    assert [entry["job"] == POISON[case] for entry in dead] == [True]
