"""Serving a track from MinIO: whole, or the byte range a browser asks for when it seeks."""

from __future__ import annotations

import re
from collections.abc import Iterator

from fastapi import HTTPException
from fastapi.responses import Response, StreamingResponse
from minio import Minio
from urllib3 import BaseHTTPResponse

STREAM_CHUNK_BYTES = 256 * 1024
_RANGE_RE = re.compile(r"bytes=([0-9]{0,18})-([0-9]{0,18})")
"""ASCII digits only (not any script's decimal digits), at most 18 a side: past any object's size,
and never past ``int()``'s digit limit."""


class RangeNotSatisfiable(ValueError):
    """A byte range that starts past the end of the object."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``(first, last)`` bytes (inclusive) of a ``Range`` header, or None for the whole.

    One range only: a header the server cannot use (malformed, several ranges, another unit,
    a number of more than 18 digits) is ignored as RFC 9110 allows, and the whole object is
    sent.
    """
    match = _RANGE_RE.fullmatch((header or "").strip().replace(" ", ""))
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first_text, last_text = match.groups()
    if first_text == "":  # the last N bytes
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:  # malformed
        return None
    if first >= size:
        raise RangeNotSatisfiable(header)
    last = min(int(last_text), size - 1) if last_text else size - 1
    return first, last


def stream_track(storage: Minio, bucket: str, key: str, size: int, range_header: str | None,
                 headers: dict[str, str], head_only: bool = False,
                 media_type: str = "audio/mpeg") -> Response:
    """A 200 or 206 response streaming the object (as ``media_type``); 416 past its end."""
    try:
        wanted = parse_range(range_header, size)
    except RangeNotSatisfiable:
        raise HTTPException(416, f"range {range_header!r} is outside the track's {size} bytes",
                            headers={"Content-Range": f"bytes */{size}"}) from None
    headers = {**headers, "Accept-Ranges": "bytes"}
    status = 200
    first, length = 0, size
    if wanted is not None:
        first, length = wanted[0], wanted[1] - wanted[0] + 1
        headers["Content-Range"] = f"bytes {wanted[0]}-{wanted[1]}/{size}"
        status = 206
    headers["Content-Length"] = str(length)
    if head_only or length == 0:
        return Response(status_code=status, headers=headers, media_type=media_type)
    # opened here, not in the generator, so a failure still becomes a JSON error response
    source = storage.get_object(bucket, key, offset=first, length=length)
    return StreamingResponse(_chunks(source), status_code=status, headers=headers,
                             media_type=media_type)


def _chunks(source: BaseHTTPResponse) -> Iterator[bytes]:
    try:
        yield from source.stream(STREAM_CHUNK_BYTES)
    finally:
        source.close()
        source.release_conn()
