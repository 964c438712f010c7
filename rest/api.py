"""The ``apiv1`` routes: separate, queue, status, track, remove.

A separation request ends as a job on the worker's contract (``separation.contract.Job``):
the MP3 is stored as ``<songhash>.mp3`` in the input bucket, the job's ``queued`` status is
recorded, and only then is the job pushed onto ``toWorkers``. A song already separated with
the same model, whose tracks still exist, is not separated again.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from minio.error import S3Error
from pydantic import BaseModel

from rest.backend import Backend, BackendDep, get_backend, require_token
from rest.observability import SONGS
from rest.tracks import stream_track
from rest.uploads import SeparateRequest, Upload, normalize_stems, receive_upload
from separation.contract import (
    JOB_ID_RE,
    SONGHASH_RE,
    TRACKS,
    InvalidJob,
    Job,
    Status,
    input_key,
    normalize_track,
    output_key,
    parse_job,
)
from separation.webhook import send_outcome

log = logging.getLogger("rest")
MISSING_OBJECT = ("NoSuchKey", "NoSuchObject", "NoSuchBucket")
PRESIGNED_TTL = timedelta(hours=1)
ENQUEUED = "Song enqueued for separation"


class SeparateResponse(BaseModel):
    hash: str
    id: str
    reason: str


class QueueResponse(BaseModel):
    queue: list[str]


class RemoveResponse(BaseModel):
    hash: str
    removed: list[str]
    reason: str


class ErrorResponse(BaseModel):
    error: str
    reason: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 503)}
_FORM_SCHEMA = {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
                   "stems": {"type": "array", "items": {"type": "string"}},
                   "callback": {"type": "string", "description": "a JSON object"}},
}
_SEPARATE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": SeparateRequest.model_json_schema()},
    "multipart/form-data": {"schema": _FORM_SCHEMA},
}}}

router = APIRouter(prefix="/apiv1", dependencies=[Depends(require_token)], responses=ERRORS)


@router.post("/separate", response_model=SeparateResponse, openapi_extra=_SEPARATE_BODY,
             responses={413: {"model": ErrorResponse}})
async def separate(request: Request, background: BackgroundTasks) -> dict[str, str]:
    """Queue a song: JSON ``{"mp3": "<base64>", ...}`` or a multipart upload (``file``).

    The body is streamed to a temp file as it arrives; 503 while MAX_CONCURRENT_UPLOADS
    others are being handled.
    """
    backend = get_backend(request)
    with request.app.state.upload_slots.hold():
        upload = await receive_upload(request, backend.settings)
        try:
            return await run_in_threadpool(submit, backend, upload, background)
        finally:
            upload.discard()


def submit(backend: Backend, upload: Upload, background: BackgroundTasks) -> dict[str, str]:
    """Store the song, record the job as queued, then enqueue it (unless it is already done)."""
    settings = backend.settings
    try:
        job = parse_job(json.dumps({"id": uuid.uuid4().hex, "songhash": upload.songhash,
                                    **normalize_stems(upload.fields)}))
    except InvalidJob as error:
        raise HTTPException(400, str(error).removeprefix("invalid job: ")) from None
    model = job.model or settings.demucs_model
    existing = find_separated(backend, job, model)
    if existing is not None:
        if job.callback is not None:
            background.add_task(notify_done, backend, job, existing)
        SONGS.labels("already_separated").inc()
        log.info("song %s: already separated with %s by job %s; not queued again",
                 upload.songhash, model, existing["id"])
        return {"hash": upload.songhash, "id": existing["id"],
                "reason": f"Song already separated with model {model}: its tracks are ready"}
    backend.ensure_buckets()
    backend.storage.fput_object(settings.queue_bucket, input_key(upload.songhash),
                                str(upload.path), content_type="audio/mpeg")
    backend.status.queued(job.id or "", upload.songhash, model, upload.name)
    backend.queue.enqueue(job.to_json())
    SONGS.labels("enqueued").inc()
    log.info("job %s: song %s (%.1f s, %d bytes) enqueued, model %s", job.id, upload.songhash,
             upload.duration_s, upload.size_bytes, model)
    return {"hash": upload.songhash, "id": job.id or "", "reason": ENQUEUED}


def find_separated(backend: Backend, job: Job, model: str) -> dict[str, Any] | None:
    """The done job of this song and model whose tracks, all that ``job`` asks for, exist."""
    job_id = backend.status.job_for_song(job.songhash or "", model)
    record = backend.status.get(job_id) if job_id else None
    if record is None or record.get("state") != Status.DONE.value:
        return None
    tracks: dict[str, str] = record["tracks"]
    if any(track not in tracks for track in job.tracks()):
        return None
    for track in job.tracks():
        try:
            backend.storage.stat_object(backend.settings.output_bucket, tracks[track])
        except S3Error as error:
            if error.code in MISSING_OBJECT:
                return None
            raise
    return record


def notify_done(backend: Backend, job: Job, record: dict[str, Any]) -> None:
    """Tell a deduplicated request's callback its tracks are ready, as the worker would."""
    tracks = {t: record["tracks"][t] for t in job.tracks()}
    send_outcome(job.model_copy(update={"id": record["id"]}), job.songhash, Status.DONE.value,
                 tracks, None, backend.settings)


@router.get("/queue", response_model=QueueResponse)
def queue(backend: BackendDep) -> dict[str, list[str]]:
    """Songhashes of the waiting jobs, in the order they will run.

    A long song's waiting chunks (and its join) count once, as their song.
    """
    hashes = []
    parents_seen: set[str] = set()
    for raw in backend.queue.waiting():
        try:
            job = parse_job(raw)
        except InvalidJob:
            continue
        songhash = job.songhash
        if parent := job.chunk_of or job.join_of:
            if parent in parents_seen:
                continue
            parents_seen.add(parent)
            songhash = (backend.status.get(parent) or {}).get("songhash")
        if songhash:
            hashes.append(songhash)
    return {"queue": hashes}


@router.get("/status/{ref}")
def status(ref: str, backend: BackendDep) -> dict[str, Any]:
    """A job's state, progress, error, tracks and attempts, by job id or songhash.

    A songhash names its latest job. ``urls`` gives each track's download path; a queued
    job has its 1-based ``position`` in the queue.
    """
    record = backend.status.get(ref) if JOB_ID_RE.match(ref) or SONGHASH_RE.match(ref) \
        else None
    if record is None:
        raise HTTPException(404, f"no job or song {ref!r} is known (records expire after "
                                 f"STATUS_TTL_S={backend.settings.status_ttl_s} s)")
    songhash = record.get("songhash") or ""
    result = {**record, "hash": songhash,
              "urls": {track: f"/apiv1/track/{songhash}/{track}" for track in record["tracks"]}}
    if record.get("state") == Status.QUEUED.value:
        result["position"] = queue_position(backend, record["id"])
    return result


def queue_position(backend: Backend, job_id: str) -> int | None:
    for position, raw in enumerate(backend.queue.waiting(), start=1):
        try:
            if parse_job(raw).id == job_id:
                return position
        except InvalidJob:
            continue
    return None


@router.get("/track/{songhash}/{track}", response_class=Response,
            responses={200: {"content": {"audio/mpeg": {}}}, 206: {}, 307: {}, 416: {}})
def track(songhash: str, track: str, request: Request, backend: BackendDep,
          redirect: bool = False, download: bool = False) -> Response:
    """Stream a track's MP3 (Range requests answered 206); ``?redirect=1``: a presigned URL.

    ``track`` may end in ``.mp3``; the lab's ``base`` means ``bass``.
    """
    name = track_name(track)
    bucket, key = backend.settings.output_bucket, track_key(backend, songhash, name)
    try:
        stat = backend.storage.stat_object(bucket, key)
    except S3Error as error:
        if error.code in MISSING_OBJECT:
            raise HTTPException(404, absent_reason(backend, songhash, name)) from None
        raise
    if redirect:
        url = backend.storage.presigned_get_object(bucket, key, expires=PRESIGNED_TTL)
        return RedirectResponse(url, status_code=307)
    disposition = "attachment" if download else "inline"
    headers = {"ETag": f'"{stat.etag}"',
               "Content-Disposition": f'{disposition}; filename="{songhash[:12]}-{name}.mp3"'}
    return stream_track(backend.storage, bucket, key, int(stat.size or 0),
                        request.headers.get("range"), headers,
                        head_only=request.method == "HEAD")


@router.delete("/remove/{songhash}/{track}", response_model=RemoveResponse)
def remove(songhash: str, track: str, backend: BackendDep
           ) -> dict[str, Any]:
    """Delete a track of a song; ``all`` deletes every track of it."""
    names = TRACKS if track == "all" else (track_name(track),)
    bucket = backend.settings.output_bucket
    removed = []
    for name in names:
        key = track_key(backend, songhash, name)
        try:
            backend.storage.stat_object(bucket, key)
        except S3Error as error:
            if error.code in MISSING_OBJECT:
                continue
            raise
        backend.storage.remove_object(bucket, key)
        removed.append(name)
    if not removed:
        raise HTTPException(404, f"song {songhash} has no track {track!r} to remove")
    log.info("song %s: removed %s", songhash, ", ".join(removed))
    return {"hash": songhash, "removed": removed, "reason": f"Removed {', '.join(removed)}"}


router.add_api_route("/track/{songhash}/{track}", track, methods=["HEAD"],
                     include_in_schema=False)
router.add_api_route("/remove/{songhash}/{track}", remove, methods=["GET"],
                     response_model=RemoveResponse, operation_id="remove_with_get",
                     summary="Remove (with GET, as the lab's clients do)")


def track_name(track: str) -> str:
    try:
        return normalize_track(track)
    except ValueError as error:
        raise HTTPException(404, str(error)) from None


def track_key(backend: Backend, songhash: str, name: str) -> str:
    if not SONGHASH_RE.match(songhash):
        raise HTTPException(404, f"{songhash!r} is not a songhash (64 lowercase hex "
                                 "characters, the SHA-256 of the MP3)")
    return output_key(backend.settings.output_key, songhash, name)


def absent_reason(backend: Backend, songhash: str, name: str) -> str:
    """Why a track is not there, from its song's latest job."""
    record = backend.status.get(songhash)
    if record is None:
        return f"no song {songhash} is known: send it to /apiv1/separate first"
    state = record.get("state")
    if state in (Status.QUEUED.value, Status.RUNNING.value):
        return f"song {songhash} is not separated yet: {state}, {record['progress']:.0f}%"
    if state == Status.FAILED.value:
        return f"separation of song {songhash} failed: {record.get('error')}"
    return f"track {name} of song {songhash} does not exist (removed, or not among its stems)"
