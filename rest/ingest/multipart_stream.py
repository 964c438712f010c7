"""A multipart/form-data request body read as it arrives, with python-multipart's parser.

The song part (``file``, or ``mp3``) goes straight to the upload's ``SongFile`` as its bytes
arrive (through base64 when it is a text field rather than a file), so the size limit applies
at once; the request's other fields (``rest.schemas.FORM_FIELDS``) are kept, at most
``fields_max_bytes`` in all. Nothing is spooled.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from rest.ingest.song_sink import Base64Decoder, SongFile
from rest.schemas import FORM_FIELDS, FORM_SONG_FIELDS

MAX_PARTS = 20


def boundary_of(content_type: str) -> bytes:
    boundary = parse_options_header(content_type)[1].get(b"boundary", b"")
    if not boundary:
        raise HTTPException(400, "a multipart body needs a boundary in its Content-Type")
    return boundary


class FormReader:
    """Feed a multipart body in pieces; then ``finish()`` gives the fields and the file name.

    Blocking (the song's disk writes): call it from a worker thread.
    """

    def __init__(self, boundary: bytes, song: SongFile, fields_max_bytes: int) -> None:
        self._song = song
        self._fields_left_bytes = fields_max_bytes
        self.fields: dict[str, list[str]] = {}
        self.song_name: str | None = None
        self._parts = 0
        self._song_seen = self._ended = False
        self._header: list[bytearray] = []
        self._headers: dict[bytes, bytes] = {}
        self._write: Callable[[bytes], None] = self._song.write
        self._decoder: Base64Decoder | None = None
        self._value: bytearray | None = None
        self._name = ""
        self._parser = self._make_parser(boundary)

    def _make_parser(self, boundary: bytes) -> MultipartParser:
        try:
            return MultipartParser(boundary, self._callbacks())
        except FormParserError as error:
            raise HTTPException(400, f"the multipart body is malformed: {error}") from None

    def _callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begins,
            "on_header_field": lambda data, start, end: self._header_bytes(0, data[start:end]),
            "on_header_value": lambda data, start, end: self._header_bytes(1, data[start:end]),
            "on_header_end": self._header_ends,
            "on_headers_finished": self._headers_finished,
            "on_part_data": lambda data, start, end: self._write(data[start:end]),
            "on_part_end": self._part_ends,
            "on_end": self._body_ends,
        }

    def feed(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except FormParserError as error:
            raise HTTPException(400, f"the multipart body is malformed: {error}") from None

    def finish(self) -> None:
        if not self._ended:
            raise HTTPException(400, "the multipart body ends before its closing boundary")
        if not self._song_seen:
            raise HTTPException(400, "missing the song: upload it as the form field 'file'")

    def _part_begins(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise HTTPException(400, f"a form of at most {MAX_PARTS} fields, please")
        self._header, self._headers = [bytearray(), bytearray()], {}

    def _header_bytes(self, which: int, data: bytes) -> None:
        self._take_field_bytes(len(data))
        self._header[which] += data

    def _header_ends(self) -> None:
        name, value = (bytes(part) for part in self._header)
        self._headers[name.strip().lower()] = value.strip()
        self._header = [bytearray(), bytearray()]

    def _headers_finished(self) -> None:
        options = parse_options_header(self._headers.get(b"content-disposition", b""))[1]
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if self._name in FORM_SONG_FIELDS:
            if self._song_seen:
                raise HTTPException(400, "send one song per request (one 'file' field)")
            self._song_seen = True
            if filename is None:  # a text field: the song in base64
                self._decoder = Base64Decoder(self._song.write)
                self._write = self._decoder.feed
            else:
                self.song_name = filename.decode("utf-8", "replace")
                self._write = self._song.write
        elif self._name in FORM_FIELDS:
            self._value = bytearray()
            self._write = self._keep
        else:
            raise HTTPException(400, f"unknown form field {self._name!r}; fields are file "
                                     "(or mp3), " + ", ".join(FORM_FIELDS))

    def _keep(self, data: bytes) -> None:
        self._take_field_bytes(len(data))
        if self._value is not None:
            self._value += data

    def _take_field_bytes(self, count: int) -> None:
        self._fields_left_bytes -= count
        if self._fields_left_bytes < 0:
            raise HTTPException(413, "the form's fields besides the song are too large")

    def _part_ends(self) -> None:
        if self._decoder is not None:
            self._decoder.finish()
            self._decoder = None
        if self._value is not None:
            self.fields.setdefault(self._name, []).append(
                self._value.decode("utf-8", "replace"))
            self._value = None

    def _body_ends(self) -> None:
        self._ended = True
