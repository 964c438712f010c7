"""A JSON request body read as it arrives: the song streamed out, the rest kept (and capped).

The base64 of a 100 MB song is a 133 MB JSON string, and JSON parsers (``json``, and ijson,
whose events carry each string whole) hold a string whole before handing it over. So this
scanner follows only JSON's lexical structure (strings, escapes, nesting) as bytes arrive:

- the value of the top-level key ``"mp3"``, when it is a string, is passed on in pieces as it
  arrives (escapes resolved), to be base64-decoded into the upload's temp file, and stands in
  the kept text as ``""``; a regular-expression search crosses it, so it costs no Python loop
  per byte;
- everything else is kept as text, at most ``kept_max_bytes`` (413 past it), and nested no
  deeper than ``max_depth`` (400 past it), so ``json.loads`` then parses a small, shallow
  document and reports any syntax error with its usual message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException

from common.json_text import NotJson, parse_json

QUOTE, BACKSLASH = ord('"'), ord("\\")
OPENERS, CLOSERS, WHITESPACE = b"{[", b"}]", b" \t\r\n"
KEY_KEPT_BYTES = 8  # enough to recognise "mp3"
_STRING_STOP = re.compile(rb'["\\]')
_HEX4_RE = re.compile(rb"[0-9A-Fa-f]{4}")
_ESCAPES = {ord(k): v for k, v in
            {"n": b"\n", "r": b"\r", "t": b"\t", "f": b"\f", "b": b"\b", "/": b"/",
             '"': b'"', "\\": b"\\"}.items()}


class JsonScanner:
    """Feed a JSON document in pieces; ``document()`` parses what was kept.

    ``on_mp3``: where the top-level ``"mp3"`` string goes (None: kept like any other value).
    """

    def __init__(self, on_mp3: Callable[[bytes], None] | None, kept_max_bytes: int,
                 max_depth: int, what: str = "the request body") -> None:
        self._on_mp3 = on_mp3
        self._what = what
        self._kept = bytearray()
        self._kept_max_bytes = kept_max_bytes
        self._max_depth = max_depth
        self._depth = 0
        self._top_is_object: bool | None = None
        self._in_string = self._escaped = False
        self._key: bytearray | None = None  # a top-level key being read
        self._last_key = b""
        self._expect_key = self._expect_value = False
        self._streaming = False  # inside the "mp3" string
        self._escape: bytes | None = None  # an escape in it, split across pieces
        self.mp3_streamed = False

    def feed(self, data: bytes) -> None:
        position = 0
        while position < len(data):
            if self._streaming:
                position = self._stream(data, position)
            else:
                self._scan(data[position])
                position += 1

    def document(self) -> Any:
        """The kept document, parsed (with ``"mp3": ""`` where the song was streamed out)."""
        try:
            return parse_json(self._kept)
        except NotJson as error:
            raise HTTPException(400, f"{self._what} is not valid JSON: {error}") from None

    def _scan(self, byte: int) -> None:
        """One byte outside the streamed string: keep it and follow the structure."""
        self._kept.append(byte)
        if len(self._kept) > self._kept_max_bytes:
            raise HTTPException(413, f"{self._what} holds more than {self._kept_max_bytes} "
                                     "bytes besides the song ('mp3'); only the song may be "
                                     "large")
        if self._in_string:
            self._string_byte(byte)
        elif byte == QUOTE:
            self._string_starts()
        elif byte in OPENERS:
            self._opens(byte)
        elif byte in CLOSERS:
            self._depth -= 1
        elif byte == ord(","):
            self._expect_key = self._depth == 1 and bool(self._top_is_object)
        elif byte == ord(":"):
            self._expect_value = self._depth == 1
        elif byte not in WHITESPACE:
            self._value_starts()

    def _string_byte(self, byte: int) -> None:
        if self._escaped:
            self._escaped = False
        elif byte == BACKSLASH:
            self._escaped = True
        elif byte == QUOTE:
            self._in_string = False
            if self._key is not None:
                self._last_key, self._key = bytes(self._key), None
            return
        if self._key is not None and len(self._key) < KEY_KEPT_BYTES:
            self._key.append(byte)

    def _string_starts(self) -> None:
        self._in_string = True
        if self._expect_key and self._depth == 1:
            self._key, self._expect_key = bytearray(), False
            return
        if self._expect_value and self._depth == 1 and self._last_key == b"mp3" \
                and self._on_mp3 is not None:
            self._streaming = self.mp3_streamed = True
        self._value_starts()

    def _opens(self, byte: int) -> None:
        if self._top_is_object is None:
            self._top_is_object = self._expect_key = byte == ord("{")
        self._expect_value = False
        self._depth += 1
        if self._depth > self._max_depth:
            raise HTTPException(400, f"{self._what} is JSON nested deeper than "
                                     f"{self._max_depth} levels")

    def _value_starts(self) -> None:
        if self._top_is_object is None:
            self._top_is_object = False
        self._expect_value = False

    def _stream(self, data: bytes, position: int) -> int:
        """Pass the song's characters on up to the closing quote; return where it stopped."""
        if self._escape is not None:
            return self._stream_escape(data, position)
        stop = _STRING_STOP.search(data, position)
        end = stop.start() if stop else len(data)
        if end > position and self._on_mp3 is not None:
            self._on_mp3(data[position:end])
        if stop is None:
            return end
        if data[end] == QUOTE:
            self._streaming = False
            self._scan(QUOTE)  # the kept text reads "mp3": ""
        else:
            self._escape = b""
        return end + 1

    def _stream_escape(self, data: bytes, position: int) -> int:
        escape = self._escape or b""
        wanted = 5 if (escape[:1] or data[position:position + 1]) == b"u" else 1
        taken = data[position:position + wanted - len(escape)]
        escape += taken
        if len(escape) < wanted:
            self._escape = escape
            return position + len(taken)
        self._escape = None
        if self._on_mp3 is not None:
            self._on_mp3(_unescape(escape))
        return position + len(taken)


def _unescape(escape: bytes) -> bytes:
    if escape[:1] == b"u":
        if _HEX4_RE.fullmatch(escape[1:]):  # int() alone would take " 4_1" or "+041"
            return chr(int(escape[1:], 16)).encode("utf-8", "replace")
    elif escape[0] in _ESCAPES:
        return _ESCAPES[escape[0]]
    raise HTTPException(400, "the request body is not valid JSON: a bad escape "
                             f"\\{escape.decode('latin-1')!r} in 'mp3'")
