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
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response
from minio.error import S3Error
from pydantic import BaseModel

from rest.backend import Backend, BackendDep, client_of, get_backend, require_token
from rest.observability import SONGS
from rest.tracks import stream_track
from rest.uploads import SeparateRequest, Upload, normalize_stems, receive_upload
from separation.contract import (
    JOB_ID_RE,
    SONGHASH_RE,
    TRACKS,
    InvalidJob,
    Job,
    Keys,
    Status,
    input_key,
    normalize_track,
    output_key,
    parse_job,
)
from separation.joins import MAX_JOINED, JoinFull
from separation.webhook import send_outcome

log = logging.getLogger("rest")
MISSING_OBJECT = ("NoSuchKey", "NoSuchObject", "NoSuchBucket")
ENQUEUED = "Song enqueued for separation"
QUEUE_PAGE_JOBS = 100  # /queue's page when the client names no limit


class SeparateResponse(BaseModel):
    hash: str
    id: str
    reason: str


class QueueResponse(BaseModel):
    queue: list[str]
    total: int
    offset: int
    limit: int
    next: str | None


class RemoveResponse(BaseModel):
    hash: str
    removed: list[str]
    reason: str


class ErrorResponse(BaseModel):
    error: str
    reason: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 429, 503)}
_FORM_SCHEMA = {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
                   "stems": {"type": "array", "items": {"type": "string"}},
                   "callback": {"type": "string", "description": "a JSON object"},
                   "priority": {"type": "string", "enum": ["high", "normal"]}},
}
_SEPARATE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": SeparateRequest.model_json_schema()},
    "multipart/form-data": {"schema": _FORM_SCHEMA},
}}}

router = APIRouter(prefix="/apiv1", dependencies=[Depends(require_token)], responses=ERRORS)


@router.post("/separate", response_model=SeparateResponse, openapi_extra=_SEPARATE_BODY,
             responses={413: {"model": ErrorResponse}})
async def separate(request: Request) -> dict[str, str]:
    """Queue a song: JSON ``{"mp3": "<base64>", ...}`` or a multipart upload (``file``).

    At most ``RATE_LIMIT_PER_MIN`` a minute per client (429 with ``Retry-After`` past it).
    The body is streamed to a temp file as it arrives; 503 while MAX_CONCURRENT_UPLOADS
    others are being handled.
    """
    backend = get_backend(request)
    await run_in_threadpool(backend.rate_limit.check, client_of(request))
    with request.app.state.upload_slots.hold():
        upload = await receive_upload(request, backend.settings)
        try:
            return await run_in_threadpool(submit, backend, upload)
        finally:
            upload.discard()


def submit(backend: Backend, upload: Upload) -> dict[str, str]:
    """Store the song, record the job as queued, then enqueue it.

    A song already separated is not queued again; one queued or running with the same model
    and stems is joined (``separation.joins``): the answer names that job.
    """
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
            backend.callbacks.submit(notify_done, backend, job, existing)
        SONGS.labels("already_separated").inc()
        log.info("song %s: already separated with %s by job %s; not queued again",
                 upload.songhash, model, existing["id"])
        return {"hash": upload.songhash, "id": existing["id"],
                "reason": f"Song already separated with model {model}: its tracks are ready"}
    active = Keys.active(upload.songhash, model, job.tracks())
    holder = claim(backend, active, job)
    if holder != job.id:
        SONGS.labels("joined").inc()
        log.info("song %s: already queued or running as job %s with %s; request joined it",
                 upload.songhash, holder, model)
        return {"hash": upload.songhash, "id": holder,
                "reason": f"{ENQUEUED} (joined job {holder}, which has the same song, model "
                          "and stems)"}
    try:
        enqueue(backend, upload, job, model)
    except BaseException:
        backend.joins.release(active, job.id or "")
        raise
    backend.joins.hold(active)
    return {"hash": upload.songhash, "id": job.id or "", "reason": ENQUEUED}


def claim(backend: Backend, active: str, job: Job) -> str:
    """The job that will separate this content; 429 when it has no room for another callback."""
    try:
        return backend.joins.claim(active, job)
    except JoinFull as full:
        raise HTTPException(
            429, f"job {full.job_id} separates this song already and carries {MAX_JOINED} "
                 "callbacks of requests that joined it; retry once it has ended",
            headers={"Retry-After": "60"}) from None


def enqueue(backend: Backend, upload: Upload, job: Job, model: str) -> None:
    """Store the input, record the job as queued, then push it: in that order."""
    settings = backend.settings
    backend.ensure_buckets()
    backend.storage.fput_object(settings.queue_bucket, input_key(upload.songhash),
                                str(upload.path), content_type="audio/mpeg")
    backend.status.queued(job.id or "", upload.songhash, model, upload.name)
    backend.queue.enqueue(job.to_json())
    SONGS.labels("enqueued").inc()
    log.info("job %s: song %s (%.1f s, %d bytes) enqueued, model %s, priority %s", job.id,
             upload.songhash, upload.duration_s, upload.size_bytes, model,
             job.priority or "normal")


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
async def queue(backend: BackendDep, offset: Annotated[int, Query(ge=0)] = 0,
                limit: Annotated[int, Query(ge=1)] = QUEUE_PAGE_JOBS) -> dict[str, Any]:
    """Songhashes of the waiting jobs, in the order they will run: one page of them.

    ``limit`` jobs (at most ``QUEUE_PAGE_MAX_JOBS``) from the ``offset``-th next to run;
    ``total`` counts every waiting job, ``next`` is the next page's path (null on the last).
    A long song's waiting chunks (and its join) count once in a page, as their song.
    """
    limit = min(limit, backend.settings.queue_page_max_jobs)
    total, raws = await backend.queue.page(offset, limit)
    end = offset + len(raws)
    return {"queue": await page_songhashes(backend, raws), "total": total, "offset": offset,
            "limit": limit, "next": f"/apiv1/queue?offset={end}&limit={limit}"
            if end < total else None}


async def page_songhashes(backend: Backend, raws: list[bytes]) -> list[str]:
    """The songhash of each job, a long song's chunks and join once; unreadable jobs skipped."""
    entries: list[tuple[str, bool]] = []  # (songhash or parent job id, is a parent)
    parents_seen: set[str] = set()
    for raw in raws:
        entry = song_of(raw)
        if entry is None or (entry[1] and entry[0] in parents_seen):
            continue
        entries.append(entry)
        if entry[1]:
            parents_seen.add(entry[0])
    parent_hashes = await backend.status.songhashes(sorted(parents_seen))
    hashes = [parent_hashes.get(ref) if is_parent else ref for ref, is_parent in entries]
    return [songhash for songhash in hashes if songhash]


def song_of(raw: bytes) -> tuple[str, bool] | None:
    """A waiting job's songhash, or its parent's id (a long song's chunk or join); None if
    it has neither. Only the fields a listing needs are read: a page costs ``json.loads``s,
    not full validations (the worker validates, and dead-letters what is invalid)."""
    try:
        job = json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        return None
    if not isinstance(job, dict):
        return None
    parent = job.get("chunk_of") or job.get("join_of")
    if isinstance(parent, str) and JOB_ID_RE.fullmatch(parent):
        return parent, True
    songhash = job.get("songhash")
    if isinstance(songhash, str) and SONGHASH_RE.fullmatch(songhash):
        return songhash, False
    return None


@router.get("/status/{ref}")
async def status(ref: str, backend: BackendDep) -> JSONResponse:
    """A job's state, progress, error, tracks and attempts, by job id or songhash.

    A songhash names its latest job. ``urls`` gives each track's download path; a queued
    job has its 1-based ``position`` in the queue, from counters (``JobQueue.position``);
    null for a job pushed by other means than ``JobQueue.enqueue``.
    """
    record = await backend.status.get_async(ref) \
        if JOB_ID_RE.fullmatch(ref) or SONGHASH_RE.fullmatch(ref) else None
    if record is None:
        raise HTTPException(404, f"no job or song {ref!r} is known (records expire after "
                                 f"STATUS_TTL_S={backend.settings.status_ttl_s} s)")
    songhash = record.get("songhash") or ""
    model = backend.settings.key_model(record.get("model"))
    which = f"?model={model}" if model else ""
    # how long a callback took would let a client time ports inside the service's network
    timings = {stage: s for stage, s in record.get("timings", {}).items() if stage != "webhook"}
    result = {**record, "hash": songhash, "timings": timings,
              "urls": {track: f"/apiv1/track/{songhash}/{track}{which}"
                       for track in record["tracks"]}}
    if record.get("state") == Status.QUEUED.value:
        result["position"] = await backend.queue.position_async(record["id"])
    return JSONResponse(result)


@router.get("/track/{songhash}/{track}", response_class=Response,
            responses={200: {"content": {"audio/mpeg": {}}}, 206: {}, 307: {}, 416: {}})
def track(songhash: str, track: str, request: Request, backend: BackendDep,
          redirect: bool = False, download: bool = False, model: str | None = None
          ) -> Response:
    """Stream a track's MP3 (Range requests answered 206); ``?redirect=1``: a presigned URL.

    ``track`` may end in ``.mp3``; the lab's ``base`` means ``bass``. ``?model=`` names the
    model whose track is wanted (default: the service's ``DEMUCS_MODEL``).
    """
    name = track_name(track)
    bucket, key = backend.settings.output_bucket, track_key(backend, songhash, name, model)
    try:
        stat = backend.storage.stat_object(bucket, key)
    except S3Error as error:
        if error.code in MISSING_OBJECT:
            raise HTTPException(404, absent_reason(backend, songhash, name)) from None
        raise
    if redirect:
        url = backend.storage.presigned_get_object(
            bucket, key, expires=timedelta(seconds=backend.settings.presign_ttl_s))
        return RedirectResponse(url, status_code=307)
    disposition = "attachment" if download else "inline"
    headers = {"ETag": f'"{stat.etag}"',
               "Content-Disposition": f'{disposition}; filename="{songhash[:12]}-{name}.mp3"'}
    return stream_track(backend.storage, bucket, key, int(stat.size or 0),
                        request.headers.get("range"), headers,
                        head_only=request.method == "HEAD")


@router.delete("/remove/{songhash}/{track}", response_model=RemoveResponse)
def remove(songhash: str, track: str, backend: BackendDep, model: str | None = None
           ) -> dict[str, Any]:
    """Delete a track of a song; ``all`` deletes every track of it (of ``?model=``)."""
    names = TRACKS if track == "all" else (track_name(track),)
    bucket = backend.settings.output_bucket
    removed = []
    for name in names:
        key = track_key(backend, songhash, name, model)
        try:
            backend.storage.stat_object(bucket, key)
        except S3Error as error:
            if error.code in MISSING_OBJECT:
                continue
            raise
        backend.storage.remove_object(bucket, key)
        removed.append(name)
    backend.status.drop_tracks(songhash, model or backend.settings.demucs_model, removed)
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


def track_key(backend: Backend, songhash: str, name: str, model: str | None = None) -> str:
    if not SONGHASH_RE.fullmatch(songhash):
        raise HTTPException(404, f"{songhash!r} is not a songhash (64 lowercase hex "
                                 "characters, the SHA-256 of the MP3)")
    try:
        return output_key(backend.settings.output_key, songhash, name,
                          backend.settings.key_model(model))
    except ValueError:
        raise HTTPException(404, f"{model!r} is not a model name") from None


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
