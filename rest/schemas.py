"""What the ``apiv1`` routes take and answer, in one place: the request, the answers, the errors.

``SeparateRequest`` is the one list of a separation request's fields: the JSON body is
validated against it, and the multipart form (``FORM_FIELDS``, ``form_schema``) and the
"unknown field" reasons are derived from it. What a request becomes on the queue is the job
contract's (``common.contract.Job``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from common.contract import Priority
from common.formats import MP3_BITRATES_KBPS
from common.numbers import AsciiInt


class SeparateRequest(BaseModel):
    """The JSON body of ``POST /apiv1/separate``."""

    model_config = ConfigDict(extra="forbid")

    mp3: str = Field(description="the MP3 file, base64-encoded")
    model: str | None = Field(None, description="a model GET /apiv1/models lists; "
                                     "default: its default")
    stems: list[str] | None = Field(
        None, description="tracks to make: vocals drums bass other instrumental acapella "
                          "original full (default all; 'base' means bass)")
    callback: dict[str, Any] | None = Field(
        None, description='{"url": "http://...", "data": {...}}: POSTed the job\'s outcome')
    format: str | None = Field(None, description="mp3 (default), flac or wav")
    bitrate: AsciiInt | None = Field(
        None, description=f"kb/s of MP3 tracks, one of {', '.join(map(str, MP3_BITRATES_KBPS))}"
                          " (default MP3_BITRATE)")
    bit_depth: AsciiInt | None = Field(None, description="16 (default) or 24, for flac and wav")
    priority: Priority | None = Field(
        None, description='"high": taken before normal jobs (see docs/design.md, Priority); '
                          'default "normal"')


SONG_FIELD = "mp3"
FORM_SONG_FIELDS = ("file", SONG_FIELD)
"""A form's song: a ``file`` part (or ``mp3``, as base64 text)."""
FORM_FIELDS = tuple(name for name in SeparateRequest.model_fields if name != SONG_FIELD)
"""The request's other fields, each a text part of a form."""
REQUEST_FIELDS = ", ".join(SeparateRequest.model_fields)




def _shapes() -> dict[str, dict[str, Any]]:
    """Each request field's JSON schema, without its ``null`` (every field but the song is
    optional), and its description."""
    shapes = {}
    for name, schema in SeparateRequest.model_json_schema()["properties"].items():
        shape = next(s for s in schema.get("anyOf", [schema]) if s.get("type") != "null")
        shapes[name] = {**shape, "description": schema["description"]}
    return shapes


FIELD_SHAPES = _shapes()
FIELD_TYPES = {name: shape["type"] for name, shape in FIELD_SHAPES.items()}
"""The JSON type of each request field: ``string``, ``integer``, ``array`` or ``object``."""


def form_schema() -> dict[str, Any]:
    """The multipart form of ``POST /apiv1/separate``, derived from ``SeparateRequest``: the
    song as a ``file`` part, the other fields as text (``callback``: a JSON object)."""
    properties: dict[str, Any] = {"file": {"type": "string", "format": "binary",
                                           "description": "the MP3 file"}}
    for name in FORM_FIELDS:
        shape = FIELD_SHAPES[name]
        properties[name] = shape if shape["type"] != "object" else \
            {"type": "string", "description": f"a JSON object: {shape['description']}"}
    return {"type": "object", "required": ["file"], "properties": properties}


SEPARATE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": SeparateRequest.model_json_schema()},
    "multipart/form-data": {"schema": form_schema()},
}}}
"""The OpenAPI request body of ``POST /apiv1/separate`` (read by the route from the stream)."""


class SeparateResponse(BaseModel):
    hash: str
    id: str
    reason: str


class ModelInfo(BaseModel):
    name: str
    stems: list[str]
    licence: str
    source: str
    default: bool
    weights_sha256: str | None


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class QueueResponse(BaseModel):
    queue: list[str]
    total: int
    offset: int
    limit: int
    next: str | None


class RemoveResponse(BaseModel):
    hash: str
    removed: list[str]
    upload_removed: bool
    reason: str


class CancelResponse(BaseModel):
    id: str
    state: str
    reason: str


class QuotaUsage(BaseModel):
    used: int
    limit: int | None
    resets_at: int | None


class UsageResponse(BaseModel):
    client: str
    audio_s: QuotaUsage
    stored_mb: QuotaUsage
    jobs: dict[str, int]


class ErrorResponse(BaseModel):
    error: str
    reason: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 429, 503)}
