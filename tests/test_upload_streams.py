"""Unit tests of the streaming body readers: the JSON scanner, base64 in pieces, multipart.

No services: bodies are fed in pieces of every size, as a socket would hand them over, and
what reaches the temp file is compared with what was sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest
from fastapi import HTTPException

from common.settings import Settings
from rest.ingest.json_stream import JsonScanner
from rest.ingest.multipart_stream import FormReader
from rest.ingest.song_sink import Base64Decoder, SongFile

SONG = os.urandom(3000)
B64 = base64.b64encode(SONG).decode()


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def _scan(body: bytes, size: int, max_depth: int = 32, kept_max: int = 65536
          ) -> tuple[object, bytes, bool]:
    out = bytearray()
    decoder = Base64Decoder(out.extend)
    scanner = JsonScanner(decoder.feed, kept_max, max_depth)
    for piece in _pieces(body, size):
        scanner.feed(piece)
    document = scanner.document()
    if scanner.mp3_streamed:
        decoder.finish()
    return document, bytes(out), scanner.mp3_streamed


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, 65536])
def test_the_mp3_string_is_streamed_out_and_the_rest_kept(size):
    escaped = B64[:100] + "\\n" + B64[100:200].replace("/", "\\/") + "\\u0020" + B64[200:]
    body = ('{"model": "htdemucs", "mp3": "' + escaped + '", "callback": {"url": "http://h/", '
            '"data": {"mp3": "not this one", "s": "a \\" quote"}}, "stems": ["vocals"]}')
    document, out, streamed = _scan(body.encode(), size)
    assert streamed and out == SONG
    assert document == {"model": "htdemucs", "mp3": "", "stems": ["vocals"],
                        "callback": {"url": "http://h/",
                                     "data": {"mp3": "not this one", "s": 'a " quote'}}}


def test_a_data_url_prefix_and_line_breaks_are_tolerated():
    wrapped = "\\r\\n".join(B64[i:i + 76] for i in range(0, len(B64), 76))
    body = '{"mp3": "data:audio/mpeg;base64,' + wrapped + '"}'
    for size in (1, 4, 1000):
        assert _scan(body.encode(), size)[1] == SONG


@pytest.mark.parametrize(("body", "status", "phrase"), [
    ('{"mp3": "QUJD=QUJD"}', 400, "not valid base64"),
    ('{"mp3": "QUJDQ"}', 400, "not valid base64"),
    ('{"mp3": "QU*D"}', 400, "not valid base64"),
    ('{"mp3": ""}', 400, "'mp3' is empty"),
    ('{"mp3": "QUJD\\x"}', 400, "bad escape"),
    ("[" * 33 + "]" * 33, 400, "deeper than 32"),
    ('{"a": ' + "[" * 40, 400, "deeper than 32"),
    ('{"callback": "' + "x" * 70_000 + '"}', 413, "besides the song"),
    ('{"mp3": "QUJD", }', 400, "not valid JSON"),
])
def test_bad_bodies_are_refused_with_reasons(body, status, phrase):
    with pytest.raises(HTTPException) as raised:
        _scan(body.encode(), 3)
    assert raised.value.status_code == status and phrase in raised.value.detail


def test_documents_other_than_objects_are_kept_for_json_to_judge():
    for body, expected in (("null", None), ("[1, 2]", [1, 2]), ('"mp3"', "mp3"), ("12", 12)):
        document, out, streamed = _scan(body.encode(), 1)
        assert document == expected and not streamed and out == b""


def test_a_multipart_song_goes_to_the_file_in_pieces_and_is_capped(tmp_path):
    boundary = b"xyzzy"
    fields = {"model": "htdemucs", "callback": json.dumps({"url": "http://h/"})}
    body = b"".join(b"--xyzzy\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
                    % (k.encode(), v.encode()) for k, v in fields.items())
    body += (b'--xyzzy\r\nContent-Disposition: form-data; name="file"; filename="a b.mp3"\r\n'
             b"Content-Type: audio/mpeg\r\n\r\n" + SONG + b"\r\n--xyzzy--\r\n")
    settings = Settings(work_dir=str(tmp_path))
    for size in (1, 7, 4096):
        song = SongFile(settings)
        reader = FormReader(boundary, song, 65536)
        for piece in _pieces(body, size):
            reader.feed(piece)
        reader.finish()
        assert song.close() == hashlib.sha256(SONG).hexdigest()
        assert song.path.read_bytes() == SONG
        assert reader.song_name == "a b.mp3"
        assert reader.fields == {k: [v] for k, v in fields.items()}
        song.discard()
    small = Settings(work_dir=str(tmp_path), max_input_mb=1000 / 2**20)  # 1000 bytes
    song = SongFile(small)
    reader = FormReader(boundary, song, 65536)
    with pytest.raises(HTTPException) as raised:
        for piece in _pieces(body, 100):
            reader.feed(piece)
    assert raised.value.status_code == 413 and "MAX_INPUT_MB" in raised.value.detail
    assert song.size_bytes <= 1100  # refused as the limit was crossed, not at the end
    song.discard()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("boundary", "body", "phrase"), [
    (b"xyzzy", b"", "ends before its closing boundary"),
    (b"xyzzy", b"--xyzzy\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n"
               b"\r\nabc", "ends before its closing boundary"),
    (b"xyzzy", b"--xyzzy\r\nContent-Disposition: form-data; name=\"evil\"\r\n\r\nx\r\n"
               b"--xyzzy--\r\n", "unknown form field 'evil'"),
    (b"xyzzy", b"garbage\r\n--xyzzy--\r\n", "malformed"),
])
def test_bad_multipart_bodies_are_refused_with_reasons(tmp_path, boundary, body, phrase):
    song = SongFile(Settings(work_dir=str(tmp_path)))
    with pytest.raises(HTTPException) as raised:
        reader = FormReader(boundary, song, 65536)
        reader.feed(body)
        reader.finish()
    song.discard()
    assert raised.value.status_code == 400 and phrase in raised.value.detail
