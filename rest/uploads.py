"""Reading a separation request: JSON with a base64 ``mp3``, or a multipart file upload.

Both end as an ``Upload``: the MP3 in a temp file, its songhash and the request's optional
fields (``model``, ``stems``, ``callback``). Whatever makes the request unusable becomes an
``HTTPException`` with a reason a person can act on: 400 for bad data, 413 for too much.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import FormData, UploadFile

from separation.audio import NotAudio, TooLong, probe_mp3
from separation.contract import normalize_track
from separation.settings import Settings

FIELDS_SLACK_BYTES = 64 * 1024
"""Room for the fields besides the MP3 in a request body."""
COPY_CHUNK_BYTES = 1 << 20


class SeparateRequest(BaseModel):
    """The JSON body of ``POST /apiv1/separate``."""

    model_config = ConfigDict(extra="forbid")

    mp3: str = Field(description="the MP3 file, base64-encoded")
    model: str | None = Field(None, description="Demucs model; default DEMUCS_MODEL")
    stems: list[str] | None = Field(
        None, description="tracks to make: vocals drums bass other instrumental acapella "
                          "original full (default all; 'base' means bass)")
    callback: dict[str, Any] | None = Field(
        None, description='{"url": "http://...", "data": {...}}: POSTed the job\'s outcome')


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


def too_large(size_bytes: int, settings: Settings) -> HTTPException:
    return HTTPException(413, f"the MP3 is {size_bytes / 2**20:.1f} MB, over the service's "
                              f"limit MAX_INPUT_MB={settings.max_input_mb:g}")


def json_body_limit(settings: Settings) -> int:
    """The largest JSON body that can hold an MP3 within the limit (base64 adds a third)."""
    return (settings.max_input_bytes + 2) // 3 * 4 + FIELDS_SLACK_BYTES


def body_too_large(settings: Settings) -> str:
    return f"the request body is over the limit for MAX_INPUT_MB={settings.max_input_mb:g}"


def check_declared_length(request: Request, limit_bytes: int, settings: Settings) -> None:
    """Refuse a body whose Content-Length is already over the limit, before reading it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise HTTPException(413, body_too_large(settings))


async def read_body(request: Request, limit_bytes: int, too_large_reason: str) -> bytes:
    """The request body, read no further than ``limit_bytes`` (chunked bodies included)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise HTTPException(413, too_large_reason)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit_bytes:
            raise HTTPException(413, too_large_reason)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_request(body: bytes, settings: Settings) -> tuple[bytes, dict[str, Any]]:
    """The decoded MP3 and the optional fields of a JSON request."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HTTPException(400, f"the request body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise HTTPException(400, 'send a JSON object such as {"mp3": "<base64 of the file>"}, '
                                 "or a multipart upload with a 'file' field")
    try:
        request = SeparateRequest.model_validate(data)
    except ValidationError as error:
        raise HTTPException(400, _explain(error)) from None
    mp3 = decode_base64(request.mp3)
    if len(mp3) > settings.max_input_bytes:
        raise too_large(len(mp3), settings)
    return mp3, request.model_dump(exclude={"mp3"}, exclude_none=True)


def decode_base64(text: str) -> bytes:
    """Standard base64, with line breaks and a ``data:...;base64,`` prefix tolerated."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, "'mp3' is not valid base64 (standard alphabet, with padding)") \
            from None
    if not data:
        raise HTTPException(400, "'mp3' is empty")
    return data


def parse_form(form: FormData) -> tuple[UploadFile | bytes, dict[str, Any]]:
    """The uploaded file (``file``, or ``mp3``) and the optional fields of a multipart form."""
    unknown = sorted(set(form.keys()) - {"file", "mp3", "model", "stems", "callback"})
    if unknown:
        raise HTTPException(400, f"unknown form field {unknown[0]!r}; fields are file (or mp3), "
                                 "model, stems, callback")
    upload = form.get("file") or form.get("mp3")
    if upload is None or upload == "":
        raise HTTPException(400, "missing the song: upload it as the form field 'file'")
    fields: dict[str, Any] = {}
    if model := form.get("model"):
        fields["model"] = str(model)
    stems = [s.strip() for value in form.getlist("stems") for s in str(value).split(",")
             if s.strip()]
    if stems:
        fields["stems"] = stems
    if callback := form.get("callback"):
        try:
            fields["callback"] = json.loads(str(callback))
        except json.JSONDecodeError as error:
            raise HTTPException(400, f"'callback' is not valid JSON: {error}") from None
    if isinstance(upload, str):  # a base64 text field named mp3
        return decode_base64(upload), fields
    return upload, fields


def store_upload(source: UploadFile | bytes, fields: dict[str, Any], settings: Settings
                 ) -> Upload:
    """Write the MP3 to a temp file while hashing it; check its size and that it is audio.

    Blocking: run it in a thread.
    """
    handle = tempfile.NamedTemporaryFile(prefix="rest-upload-", suffix=".mp3",  # noqa: SIM115
                                         dir=settings.work_dir, delete=False)
    path = Path(handle.name)
    try:
        with handle:
            size, songhash = _copy_hashing(source, handle, settings)
        if size > settings.max_input_bytes:
            raise too_large(size, settings)
        duration_s = _probe(path, settings)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    name = song_name(source.filename) if isinstance(source, UploadFile) else ""
    return Upload(path, songhash, size, duration_s, fields, name)


SONG_NAME_MAX = 200


def song_name(filename: str | None) -> str:
    """A client's file name made safe to show: no folders, no control characters, capped."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in base if ch.isprintable())[:SONG_NAME_MAX].strip()


def _copy_hashing(source: UploadFile | bytes, out: BinaryIO, settings: Settings
                  ) -> tuple[int, str]:
    digest = hashlib.sha256()
    if isinstance(source, bytes):
        digest.update(source)
        out.write(source)
        return len(source), digest.hexdigest()
    size = 0
    source.file.seek(0)
    while chunk := source.file.read(COPY_CHUNK_BYTES):
        size += len(chunk)
        if size > settings.max_input_bytes:
            raise too_large(size, settings)
        digest.update(chunk)
        out.write(chunk)
    return size, digest.hexdigest()


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
        return f"unknown field {where!r}; fields are mp3, model, stems, callback"
    return f"{where}: {first['msg']}"
