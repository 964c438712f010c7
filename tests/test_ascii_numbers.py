"""Numbers are ASCII digits only: form fields, query parameters, headers and Redis fields.

``str.isdigit()`` is true of ``"²"``, which ``int()`` refuses (a 500 before this); ``int()``
reads ``"٣٢٠"`` (Arabic-Indic digits), ``" 320"`` and ``"3_20"`` as 320. Each is now a 400 for a
client, and a stored field that is not ASCII digits is read as absent, never a 500. Against the
real REST service, redis-server and S3 server.
"""

from __future__ import annotations

import base64

import pytest

from common.contract import Keys
from common.numbers import ascii_int
from common.settings import Settings
from rest.tracks import parse_range

TIMEOUT_S = 30
NOT_ASCII = ["²", "³", "٣٢٠", "３２０", " 320", "+320", "3_20", "320.0", "", "1" * 19]


@pytest.fixture
def rest(api):
    """This module's REST service runs in-process (``tests.inprocess``)."""
    return api


@pytest.mark.parametrize("text", NOT_ASCII)
def test_only_ascii_digits_make_a_number(text):
    with pytest.raises(ValueError, match="ASCII digits"):
        ascii_int(text)


def test_ascii_digits_do():
    assert ascii_int("320") == 320 and ascii_int(b"0024") == 24 and ascii_int("9" * 18) > 0


@pytest.mark.parametrize(("name", "value"), [
    ("MP3_BITRATE", "٣٢٠"), ("MP3_BITRATE", "３２０"), ("BATCH_MAX", " 4"), ("BATCH_MAX", "+4"),
    ("REDIS_PORT", "6_379"), ("REDIS_PORT", "tcp://10.0.0.7:٦٣٧٩"), ("DEMUCS_SEGMENT", "٧"),
    ("POLL_S", "١.٥"), ("POLL_S", "nan"), ("JOB_TIMEOUT_S", "inf"), ("JOB_TIMEOUT_S", "1e400"),
    ("HEARTBEAT_TTL_S", "-٥"), ("HEARTBEAT_TTL_S", "--5"), ("HEARTBEAT_TTL_S", "30."),
    ("MAX_INPUT_MB", "1_0")])
def test_a_setting_in_other_digits_stops_the_process_at_start(name, value):
    """Settings are numbers in ASCII digits too: ``int()`` and ``float()`` would read
    ``"٣٢٠"`` as 320 and ``float()`` takes ``nan``, ``inf`` and exponents."""
    with pytest.raises(ValueError, match=f"{name}=.* is not a valid"):
        Settings.from_env({name: value})


def test_settings_in_ascii_digits_are_read():
    settings = Settings.from_env({"MP3_BITRATE": "192", "POLL_S": "0.5", "JOB_TIMEOUT_S": "90",
                                  "REDIS_PORT": "tcp://10.0.0.7:6380", "DEMUCS_SEGMENT": "7"})
    assert (settings.mp3_bitrate_kbps, settings.poll_s, settings.job_timeout_s) == (192, 0.5, 90)
    assert (settings.redis_port, settings.demucs_segment) == (6380, 7)


def test_a_range_in_other_digits_is_ignored():
    """RFC 9110: a Range the server cannot read is ignored and the whole object sent."""
    assert parse_range("bytes=٠-٣", 100) is None
    assert parse_range("bytes=0-3", 100) == (0, 3)


def _form(name: str, value: str, song: bytes) -> dict:
    return {"files": {"file": ("song.mp3", song, "audio/mpeg")},
            "data": {name: value, **({"format": "flac"} if name == "bit_depth" else {})}}


@pytest.mark.parametrize(("name", "value"), [
    ("bitrate", "²"), ("bit_depth", "³"), ("bitrate", "٣٢٠"), ("bit_depth", "٢٤"),
    ("bitrate", "3_20"), ("bitrate", "+320")])
def test_multipart_numbers_in_other_digits_are_a_400(stack, rest, make_song, name, value):
    song = make_song(seconds=1.0).read_bytes()
    response = rest.post(f"{rest.url}/apiv1/separate", timeout=TIMEOUT_S,
                             **_form(name, value, song))
    assert response.status_code == 400, (response.status_code, response.text)
    assert name in response.json()["reason"] and "Traceback" not in response.text
    assert stack.waiting() == []


@pytest.mark.parametrize("value", ["3_20", " 320", "+320", "320.0"])
def test_json_numbers_as_text_are_ascii_digits_only(stack, rest, make_song, value):
    song = base64.b64encode(make_song(seconds=1.0).read_bytes()).decode()
    response = rest.post(f"{rest.url}/apiv1/separate", timeout=TIMEOUT_S,
                             json={"mp3": song, "bitrate": value})
    assert response.status_code == 400, (response.status_code, response.text)
    assert "bitrate" in response.json()["reason"] and "ASCII digits" in response.text
    assert stack.waiting() == []
    accepted = rest.post(f"{rest.url}/apiv1/separate", timeout=TIMEOUT_S,
                             json={"mp3": song, "bitrate": "192"})
    assert accepted.status_code == 200, accepted.text


@pytest.mark.parametrize("path", [
    "/apiv1/queue?limit=1_0", "/apiv1/queue?offset=%D9%A3", "/apiv1/queue?limit=+5",
    f"/apiv1/track/{'a' * 64}/vocals.mp3?bitrate=3_20",
    f"/apiv1/track/{'a' * 64}/vocals.flac?bit_depth=%C2%B2",
    f"/apiv1/remove/{'a' * 64}/vocals.mp3?bitrate=%20320"])
def test_query_numbers_are_ascii_digits_only(rest, path):
    response = rest.get(f"{rest.url}{path}", timeout=TIMEOUT_S)
    assert response.status_code == 400, (response.status_code, response.text)
    assert "ASCII digits" in response.json()["reason"]
    assert rest.get(f"{rest.url}/apiv1/queue?limit=10", timeout=TIMEOUT_S).ok


def test_a_stored_number_in_other_digits_is_read_as_absent(stack, rest):
    job_id = "f" * 32
    stack.redis.hset(Keys.job(job_id), mapping={
        "id": job_id, "state": "done", "stage": "done", "songhash": "b" * 64, "progress": 100,
        "attempts": "²", "bitrate": "٣٢٠", "bit_depth": "³", "format": "mp3", "tracks": "{}"})
    response = rest.get(f"{rest.url}/apiv1/status/{job_id}", timeout=TIMEOUT_S)
    assert response.status_code == 200, (response.status_code, response.text)
    record = response.json()
    assert (record["attempts"], record["bitrate"], record["bit_depth"]) == (0, None, None)


@pytest.mark.parametrize("spelling", ["+{hex3}", " {hex3}", "{hex1}_{hex2}"])
def test_a_unicode_escape_in_the_song_is_four_hex_digits(stack, rest, make_song, spelling):
    """The song's first character escaped (``\\u002f``), or spelled as ``int(..., 16)`` alone
    would also read it (``\\u+02f``, ``\\u 02f``, ``\\u0_2f``): a 400 for those."""
    song = base64.b64encode(make_song(seconds=1.0).read_bytes()).decode()
    hex4 = f"{ord(song[0]):04x}"
    bad = spelling.format(hex3=hex4[1:], hex1=hex4[1], hex2=hex4[2:])
    for escape, status in ((bad, 400), (hex4, 200)):
        response = rest.post(f"{rest.url}/apiv1/separate", timeout=TIMEOUT_S,
                                 data='{"mp3": "\\u' + escape + song[1:] + '"}',
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == status, (escape, response.text)
        assert status == 200 or "bad escape" in response.json()["reason"]
