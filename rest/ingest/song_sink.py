"""Where an uploaded MP3 goes as its bytes arrive: a temp file, hashed and capped in size.

``SongFile`` takes the raw bytes (a multipart file part); ``Base64Decoder`` takes base64 text
in pieces of any size (the JSON ``mp3`` string, a multipart text field) and hands it decoded
to a ``SongFile``. Nothing holds more than one received piece: memory does not grow with the
song, and the size limit is applied as bytes arrive (413 the moment it is crossed).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from fastapi import HTTPException

from common.settings import Settings

NOT_BASE64 = "'mp3' is not valid base64 (standard alphabet, with padding)"
DATA_URL_PREFIX_MAX_BYTES = 256  # "data:audio/mpeg;base64," and the like
_WHITESPACE = re.compile(rb"\s+")


def too_large(size_bytes: int, settings: Settings) -> HTTPException:
    return HTTPException(413, f"the MP3 is {size_bytes / 2**20:.1f} MB, over the service's "
                              f"limit MAX_INPUT_MB={settings.max_input_mb:g}")


class SongFile:
    """A temp file in ``WORK_DIR`` that hashes what is written and refuses past MAX_INPUT_MB.

    Blocking (disk writes): call it from a worker thread.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115  (closed in close/discard)
            prefix="rest-upload-", suffix=".mp3", dir=settings.work_dir, delete=False)
        self.path = Path(self._file.name)
        self._digest = hashlib.sha256()
        self.size_bytes = 0

    def write(self, data: bytes) -> None:
        self.size_bytes += len(data)
        if self.size_bytes > self.settings.max_input_bytes:
            raise too_large(self.size_bytes, self.settings)
        self._digest.update(data)
        self._file.write(data)

    def close(self) -> str:
        """Close the file; return its songhash (SHA-256, hex)."""
        self._file.close()
        return self._digest.hexdigest()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class Base64Decoder:
    """Standard base64 arriving in pieces; whitespace dropped, a ``data:...,`` prefix skipped.

    Whole 4-character groups are decoded as they complete and passed to ``out``; padding may
    only end the text. ``finish`` refuses a text that ends mid-group or holds nothing.
    """

    def __init__(self, out: Callable[[bytes], None]) -> None:
        self._out = out
        self._head: bytes | None = b""  # the start, until we know whether it is a data: URL
        self._pending = b""
        self._padded = False
        self._decoded_bytes = 0

    def feed(self, text: bytes) -> None:
        if self._head is not None:
            text = self._skip_data_url(self._head + text)
            if self._head is not None:
                return
        self._pending += _WHITESPACE.sub(b"", text)
        whole = len(self._pending) // 4 * 4
        if whole:
            self._decode(self._pending[:whole])
            self._pending = self._pending[whole:]

    def finish(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self.feed(head)
        if self._pending:
            raise HTTPException(400, NOT_BASE64)
        if not self._decoded_bytes:
            raise HTTPException(400, "'mp3' is empty")

    def _skip_data_url(self, head: bytes) -> bytes:
        """``head`` without a data-URL prefix; keeps it back (``_head``) while undecided."""
        self._head = None
        if head.startswith(b"data:") and b"," in head:
            return head.split(b",", 1)[1]
        if (head.startswith(b"data:") or b"data:".startswith(head)) and \
                len(head) < DATA_URL_PREFIX_MAX_BYTES:
            self._head = head
            return b""
        return head

    def _decode(self, groups: bytes) -> None:
        stripped = groups.rstrip(b"=")
        if self._padded or b"=" in stripped or len(groups) - len(stripped) > 2:
            raise HTTPException(400, NOT_BASE64)
        self._padded = len(stripped) < len(groups)
        try:
            data = base64.b64decode(groups, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPException(400, NOT_BASE64) from None
        self._decoded_bytes += len(data)
        self._out(data)
