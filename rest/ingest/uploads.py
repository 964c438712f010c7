"""Reading a separation request: JSON with a base64 ``mp3``, or a multipart file upload.

Both are streamed as they arrive (``rest.ingest.json_stream``, ``rest.ingest.multipart_stream``)
into a temp file (``rest.ingest.song_sink``), and end as an ``Upload``: the MP3 in that file, its
songhash and the request's optional fields (``rest.schemas.SeparateRequest``). No body is ever
held whole:
memory is bounded by the settings (MAX_CONCURRENT_UPLOADS), not by what clients send.
Whatever makes the request unusable becomes an ``HTTPException`` with a reason a person can
act on: 400 for bad data, 413 for too much (as soon as it is too much), 503 when busy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from common.audio import NotAudio, TooLong, probe_mp3
from common.contract import normalize_track
from common.numbers import DIGITS_RE, ascii_int_or_none
from common.settings import Settings
from rest.ingest.json_stream import JsonScanner
from rest.ingest.multipart_stream import FormReader, boundary_of
from rest.ingest.song_sink import Base64Decoder, SongFile
from rest.schemas import FIELD_TYPES, FORM_FIELDS, REQUEST_FIELDS, SeparateRequest

log = logging.getLogger("rest")
FIELDS_SLACK_BYTES = 64 * 1024
"""Room for the fields besides the MP3 in a request body."""
JSON_MAX_DEPTH = 32
"""How deep a request's JSON may nest (the lab's clients use 3 levels)."""
UPLOAD_RETRY_AFTER_S = 5


@dataclass
class Upload:
    """A received MP3, checked to be audio, and what the request asked for."""

    path: Path
    songhash: str
    size_bytes: int
    duration_s: float
    fields: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    """The uploaded file's name, as a label for people (never a path or a key)."""

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def body_limit_bytes(settings: Settings) -> int:
    """The largest body that can hold an MP3 within the limit (as base64, a third more)."""
    return (settings.max_input_bytes + 2) // 3 * 4 + FIELDS_SLACK_BYTES


def body_too_large(settings: Settings) -> str:
    return f"the request body is over the limit for MAX_INPUT_MB={settings.max_input_mb:g}"


async def read_body(request: Request, limit_bytes: int, too_large_reason: str) -> bytes:
    """A small request body (a callback), read no further than ``limit_bytes``."""
    declared = ascii_int_or_none(request.headers.get("content-length"))
    if declared is not None and declared > limit_bytes:
        raise HTTPException(413, too_large_reason)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit_bytes:
            raise HTTPException(413, too_large_reason)
        chunks.append(chunk)
    return b"".join(chunks)


class UploadSlots:
    """At most MAX_CONCURRENT_UPLOADS separation requests at once, the next one gets 503; and
    at most MAX_UPLOADS_PER_CLIENT of them one client's, its next one gets 429.

    Each holds a temp file of up to MAX_INPUT_MB and buffers of a few hundred KB, so this
    bounds the REST process's memory and disk; the share per client (with the bodies' pace,
    ``rest.ingest.pace``) keeps one client's slow uploads from locking the others out. Used on the
    event loop only (no lock needed).
    """

    def __init__(self, limit: int, per_client: int) -> None:
        self.limit = limit
        self.per_client = per_client
        self.active: dict[str, int] = {}  # client -> its uploads being received

    @contextmanager
    def hold(self, client: str) -> Iterator[None]:
        retry = {"Retry-After": str(UPLOAD_RETRY_AFTER_S)}
        if sum(self.active.values()) >= self.limit:
            raise HTTPException(
                503, f"the service is receiving {self.limit} uploads already "
                     f"(MAX_CONCURRENT_UPLOADS); try again in {UPLOAD_RETRY_AFTER_S} s",
                headers=retry)
        if self.active.get(client, 0) >= self.per_client:
            raise HTTPException(
                429, f"{self.per_client} uploads of yours are being received already "
                     f"(MAX_UPLOADS_PER_CLIENT); try again in {UPLOAD_RETRY_AFTER_S} s",
                headers=retry)
        self.active[client] = self.active.get(client, 0) + 1
        try:
            yield
        finally:
            self.active[client] -= 1
            if not self.active[client]:
                del self.active[client]


class _Body(Protocol):
    def feed(self, data: bytes) -> None: ...

    def finish(self) -> tuple[dict[str, Any], str]: ...


async def receive_upload(request: Request, settings: Settings) -> Upload:
    """Stream the request body into a temp file while hashing it; check that it is a song.

    Refused with 413 the moment the body or the song passes its limit.
    """
    limit_bytes = body_limit_bytes(settings)
    declared = ascii_int_or_none(request.headers.get("content-length"))
    if declared is not None and declared > limit_bytes:
        raise HTTPException(413, body_too_large(settings))
    song = SongFile(settings)
    received = 0
    try:
        body = _body_reader(request, song)
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit_bytes:
                raise HTTPException(413, body_too_large(settings))
            await run_in_threadpool(body.feed, chunk)
        fields, name = await run_in_threadpool(body.finish)
        songhash = song.close()
        duration_s = await run_in_threadpool(_probe, song.path, settings)
    except ClientDisconnect:
        song.discard()
        log.info("an upload was abandoned by its client after %d bytes", received)
        raise HTTPException(400, "the client went away before the upload ended") from None
    except BaseException:
        song.discard()
        raise
    return Upload(song.path, songhash, song.size_bytes, duration_s, fields, name)


def _body_reader(request: Request, song: SongFile) -> _Body:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return _FormBody(boundary_of(content_type), song)
    return _JsonBody(song)


class _JsonBody:
    """``{"mp3": "<base64>", ...}``: the song decoded into its file as the string arrives."""

    def __init__(self, song: SongFile) -> None:
        self.decoder = Base64Decoder(song.write)
        self.scanner = JsonScanner(self.decoder.feed, FIELDS_SLACK_BYTES, JSON_MAX_DEPTH)

    def feed(self, data: bytes) -> None:
        self.scanner.feed(data)

    def finish(self) -> tuple[dict[str, Any], str]:
        data = self.scanner.document()
        if not isinstance(data, dict):
            raise HTTPException(400, 'send a JSON object such as {"mp3": "<base64 of the '
                                     "file>\"}, or a multipart upload with a 'file' field")
        try:
            request = SeparateRequest.model_validate(data)
        except ValidationError as error:
            raise HTTPException(400, _explain(error)) from None
        if not self.scanner.mp3_streamed:  # a key spelled with escapes: kept, and small
            self.decoder.feed(request.mp3.encode())
        self.decoder.finish()
        return request.model_dump(exclude={"mp3"}, exclude_none=True), ""


class _FormBody:
    """A multipart form: the song part written to its file as it arrives."""

    def __init__(self, boundary: bytes, song: SongFile) -> None:
        self.reader = FormReader(boundary, song, FIELDS_SLACK_BYTES)

    def feed(self, data: bytes) -> None:
        self.reader.feed(data)

    def finish(self) -> tuple[dict[str, Any], str]:
        self.reader.finish()
        values = {name: form_value(name, self.reader.fields.get(name, []))
                  for name in FORM_FIELDS}
        fields = {name: value for name, value in values.items() if value is not None}
        return fields, song_name(self.reader.song_name)


def form_value(name: str, texts: list[str]) -> Any:
    """A form field's text as the request's field of that name (``SeparateRequest``); None
    when absent or empty. A number only as ASCII digits: other text is kept, and the job
    refuses it (400); ``stems`` may repeat or be comma-separated."""
    kind = FIELD_TYPES[name]
    if kind == "array":
        return [s.strip() for text in texts for s in text.split(",") if s.strip()] or None
    text = texts[0].strip() if texts else ""
    if not text:
        return None
    if kind == "integer":
        return int(text) if DIGITS_RE.fullmatch(text) else text
    if kind == "object":
        scanner = JsonScanner(None, FIELDS_SLACK_BYTES, JSON_MAX_DEPTH, f"{name!r}")
        scanner.feed(text.encode())
        return scanner.document()
    return text


SONG_NAME_MAX = 200


def song_name(filename: str | None) -> str:
    """A client's file name made safe to show: no folders, no control characters, capped."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in base if ch.isprintable())[:SONG_NAME_MAX].strip()


def _probe(path: Path, settings: Settings) -> float:
    try:
        return probe_mp3(path, settings.max_duration_s)
    except NotAudio as error:
        raise HTTPException(400, f"the upload is not an MP3 song: {error}") from None
    except TooLong as error:
        raise HTTPException(400, f"the song {error}, over the service's limit "
                                 f"MAX_DURATION_S={settings.max_duration_s:g}") from None


def normalize_stems(fields: dict[str, Any]) -> dict[str, Any]:
    """The request's fields with its stems named as the contract names tracks."""
    if "stems" not in fields:
        return fields
    try:
        return {**fields, "stems": [normalize_track(str(stem)) for stem in fields["stems"]]}
    except ValueError as error:
        raise HTTPException(400, f"stems: {error}") from None


def _explain(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    if first["type"] == "missing" and where == "mp3":
        return 'missing the song: send {"mp3": "<base64 of the file>"}'
    if first["type"] == "extra_forbidden":
        return f"unknown field {where!r}; fields are {REQUEST_FIELDS}"
    return f"{where}: {first['msg']}"
