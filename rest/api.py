"""The ``apiv1`` routes: separate, models, usage, queue, status, cancel, track, remove.

A separation request ends as a job on the worker's contract (``separation.contract.Job``):
the MP3 is stored as ``<songhash>.mp3`` in the input bucket, the job's ``queued`` status is
recorded, and only then is the job pushed onto ``toWorkers``. A song already separated with
the same model in the same encoding (``separation.formats``), whose tracks still exist, is not
separated again; asked for in another encoding, it is separated again (its tracks are never
transcoded from another format). Results expire ``RETENTION_DAYS`` after they are written
(``separation.retention``): the status says when.

With ``API_KEYS`` every route sees the caller's own jobs and tracks only (``rest.owners``):
another client's are answered 404, as if they did not exist. A model is one of the registry's
(``separation.models``; ``GET /apiv1/models``): any other name is a 400 that lists them.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response
from minio.error import S3Error
from pydantic import BaseModel

from rest.backend import Backend, BackendDep, Caller, client_of, get_backend, require_token
from rest.fair_share import stored_bytes
from rest.links import sign
from rest.observability import SONGS
from rest.owners import OWNER_FIELDS
from rest.removal import Removed, remove_tracks
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
    output_key,
    parse_job,
    split_track_name,
)
from separation.formats import Encoding, all_encodings, check_format_fields
from separation.joins import MAX_JOINED, JoinFull
from separation.numbers import AsciiInt
from separation.retention import expires_at, iso_utc
from separation.webhook import send_outcome

log = logging.getLogger("rest")
MISSING_OBJECT = ("NoSuchKey", "NoSuchObject", "NoSuchBucket")
ENQUEUED = "Song enqueued for separation"
QUEUE_PAGE_JOBS = 100  # /queue's page when the client names no limit


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
_FORM_SCHEMA = {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
                   "stems": {"type": "array", "items": {"type": "string"}},
                   "callback": {"type": "string", "description": "a JSON object"},
                   "format": {"type": "string", "enum": ["mp3", "flac", "wav"]},
                   "bitrate": {"type": "integer"}, "bit_depth": {"type": "integer"},
                   "priority": {"type": "string", "enum": ["high", "normal"]}},
}
_SEPARATE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": SeparateRequest.model_json_schema()},
    "multipart/form-data": {"schema": _FORM_SCHEMA},
}}}

router = APIRouter(prefix="/apiv1", dependencies=[Depends(require_token)], responses=ERRORS)


@router.post("/separate", response_model=SeparateResponse, openapi_extra=_SEPARATE_BODY,
             responses={413: {"model": ErrorResponse}})
async def separate(request: Request, caller: Caller) -> dict[str, str]:
    """Queue a song: JSON ``{"mp3": "<base64>", ...}`` or a multipart upload (``file``).

    At most ``RATE_LIMIT_PER_MIN`` a minute per client (429 with ``Retry-After`` past it).
    The body is streamed to a temp file as it arrives; 503 while MAX_CONCURRENT_UPLOADS
    others are being handled, 429 while MAX_UPLOADS_PER_CLIENT of the caller's are; 408 for a
    body slower than BODY_TIMEOUT_S and BODY_MIN_KBPS allow. With API_KEYS, 429 while the
    caller has CLIENT_MAX_WAITING jobs waiting, and 403 for ``priority: high`` unless
    PRIORITY_CLIENTS names the caller; 429 past QUOTA_AUDIO_S_PER_DAY or QUOTA_STORED_MB.
    """
    backend = get_backend(request)
    client = client_of(request)
    await run_in_threadpool(backend.rate_limit.check, client)
    with request.app.state.upload_slots.hold(client):
        upload = await receive_upload(request, backend.settings)
        try:
            answer = await run_in_threadpool(submit, backend, upload, caller, caller or client)
        finally:
            upload.discard()
    await run_in_threadpool(backend.fair_share.record_job, caller or client, answer["id"])
    return answer


@router.get("/usage", response_model=UsageResponse)
async def usage(request: Request, backend: BackendDep, caller: Caller) -> dict[str, Any]:
    """The caller's own figures: audio seconds and result MB its jobs were charged, with the
    quotas (``limit``: null when off) and when their windows reset, and its latest jobs by
    state. A client is its API key's name, else its token or address."""
    client = caller or client_of(request)
    return await run_in_threadpool(backend.fair_share.usage, client, client)


def submit(backend: Backend, upload: Upload, caller: str | None, client: str
           ) -> dict[str, str]:
    """Store the song, record the job as queued, then enqueue it.

    A song already separated is not queued again; one queued or running with the same model
    and stems is joined (``separation.joins``): the answer names that job, or, for a client
    of API_KEYS (``caller``), the client's own view of it (``rest.owners``). Only a job queued
    is charged to ``client``'s quotas (``rest.fair_share``).
    """
    settings = backend.settings
    fields = normalize_stems(upload.fields)
    model = registry_model(backend, fields.get("model"), caller)
    if model != settings.demucs_model:  # a client limited to other models: its own default
        fields["model"] = model
    try:
        job = parse_job(json.dumps({"id": uuid.uuid4().hex, "songhash": upload.songhash,
                                    **fields}))
    except InvalidJob as error:
        raise HTTPException(400, str(error).removeprefix("invalid job: ")) from None
    backend.fair_share.check_priority(caller, job.priority)
    if caller is not None:
        if not backend.owners.has_room(caller):
            raise HTTPException(
                429, f"you have {settings.client_max_waiting} jobs waiting already "
                     "(CLIENT_MAX_WAITING); send more once some have run",
                headers={"Retry-After": "60"})
        # owned before any dedup check, so a removal by another client keeps the objects
        backend.owners.grant(caller, upload.songhash, model, job.tracks())
    encoding = job.encoding(settings.mp3_bitrate_kbps)
    existing = find_separated(backend, job, model, encoding)
    if existing is not None:
        answered = own_view(backend, caller, job, upload, model, existing["id"], False)
        if job.callback is not None:
            backend.callbacks.submit(notify_done, backend, job, existing, answered)
        SONGS.labels("already_separated").inc()
        log.info("song %s: already separated with %s by job %s; not queued again%s",
                 upload.songhash, model, existing["id"], seen_as(answered, existing["id"]))
        return {"hash": upload.songhash, "id": answered,
                "reason": f"Song already separated with model {model} as "
                          f"{encoding.variant or 'mp3'}: its tracks are ready"}
    active = Keys.active(upload.songhash, model, job.tracks(), encoding.variant)
    holder = claim(backend, active, job, caller)
    if holder != job.id:
        answered = own_view(backend, caller, job, upload, model, holder, True)
        SONGS.labels("joined").inc()
        log.info("song %s: already queued or running as job %s with %s; request joined it%s",
                 upload.songhash, holder, model, seen_as(answered, holder))
        joined = f"job {holder}, which has" if caller is None else "a job with"
        return {"hash": upload.songhash, "id": answered,
                "reason": f"{ENQUEUED} (joined {joined} the same song, model and stems)"}
    try:
        backend.fair_share.charge(client, upload.duration_s, stored_bytes(
            upload.duration_s, upload.size_bytes, job.tracks(), encoding))
        enqueue(backend, upload, job, model, encoding, caller)
    except BaseException:
        backend.joins.release(active, job.id or "")
        raise
    backend.joins.hold(active)
    return {"hash": upload.songhash, "id": job.id or "", "reason": ENQUEUED}


def registry_model(backend: Backend, name: object, caller: str | None) -> str:
    """The registry's model a request asks for (None: the caller's default); 400 for any
    other name, listing those the caller may use, before anything is stored or owned."""
    try:
        return backend.models.resolve(name, backend.models_of(caller))
    except ValueError as error:
        raise HTTPException(400, str(error)) from None


@router.get("/models", response_model=ModelsResponse)
async def models(backend: BackendDep, caller: Caller) -> dict[str, Any]:
    """The models a client may ask for (``model`` of ``/separate``): name, stems, licence,
    source, whether it is the default, and the SHA-256 of its weights (``weights_sha256``,
    which each job's status and each track's metadata name; null where the registry does not
    pin it). With API_KEYS, a client limited to some models sees only those."""
    return {"models": backend.models.shown(backend.models_of(caller))}


def own_view(backend: Backend, caller: str | None, job: Job, upload: Upload, model: str,
             runs_as: str, waiting: bool) -> str:
    """The id a request served by job ``runs_as`` is answered with: that job's, or, for a
    client of API_KEYS, the request's own id, a view of it (``rest.owners``)."""
    if caller is None:
        return runs_as
    backend.owners.view(caller, job.id or "", runs_as, upload.songhash, model, upload.name,
                        waiting)
    return job.id or ""


def seen_as(answered: str, job_id: str) -> str:
    return "" if answered == job_id else f" (the client's job {answered})"


def claim(backend: Backend, active: str, job: Job, caller: str | None = None) -> str:
    """The job that will separate this content; 429 when it has no room for another callback
    of this client's (each client has its own ``MAX_JOINED``).

    A client of API_KEYS that joins is answered with its own id, which its callback names;
    its refusal names no job (the one separating the song may be another client's).
    """
    try:
        return backend.joins.claim(active, job, None if caller is None else job.id, caller)
    except JoinFull as full:
        holder, whose = (f"job {full.job_id}", "") if caller is None else ("a job", "your ")
        raise HTTPException(
            429, f"{holder} separates this song already and carries {MAX_JOINED} callbacks of "
                 f"{whose}requests that joined it; retry once it has ended",
            headers={"Retry-After": "60"}) from None


def enqueue(backend: Backend, upload: Upload, job: Job, model: str, encoding: Encoding,
            caller: str | None = None) -> None:
    """Store the input, record the job as queued, then push it: in that order."""
    settings = backend.settings
    backend.ensure_buckets()
    backend.storage.fput_object(settings.queue_bucket, input_key(upload.songhash),
                                str(upload.path), content_type="audio/mpeg")
    owner = {} if caller is None else {"client": caller}
    backend.status.queued(job.id or "", upload.songhash, model, upload.name, encoding.variant,
                          **encoding.fields(), **owner)
    if caller is not None:
        backend.owners.owned_job(caller, job.id or "", upload.songhash, waiting=True)
    backend.queue.enqueue(job.to_json())
    SONGS.labels("enqueued").inc()
    log.info("job %s: song %s (%.1f s, %d bytes) enqueued, model %s, priority %s", job.id,
             upload.songhash, upload.duration_s, upload.size_bytes, model,
             job.priority or "normal")


def find_separated(backend: Backend, job: Job, model: str,
                   encoding: Encoding) -> dict[str, Any] | None:
    """The done job of this song, model and encoding whose tracks, all that ``job`` asks
    for, exist (under the very keys this encoding has: never another format's)."""
    songhash, settings = job.songhash or "", backend.settings
    job_id = backend.status.job_for_song(songhash, model, encoding.variant)
    record = backend.status.get(job_id) if job_id else None
    if record is None or record.get("state") != Status.DONE.value:
        return None
    tracks: dict[str, str] = record["tracks"]
    if any(tracks.get(track) != output_key(settings.output_key, songhash, track,
                                           settings.key_model(model), encoding)
           for track in job.tracks()):
        return None
    for track in job.tracks():
        try:
            backend.storage.stat_object(backend.settings.output_bucket, tracks[track])
        except S3Error as error:
            if error.code in MISSING_OBJECT:
                return None
            raise
    return record


def notify_done(backend: Backend, job: Job, record: dict[str, Any], answered: str) -> None:
    """Tell a deduplicated request's callback its tracks are ready, as the worker would,
    under the id the request was answered with."""
    tracks = {t: record["tracks"][t] for t in job.tracks()}
    send_outcome(job.model_copy(update={"id": answered}), job.songhash, Status.DONE.value,
                 tracks, None, backend.settings)


@router.get("/queue", response_model=QueueResponse)
async def queue(backend: BackendDep, caller: Caller,
                offset: Annotated[AsciiInt, Query(ge=0)] = 0,
                limit: Annotated[AsciiInt, Query(ge=1)] = QUEUE_PAGE_JOBS) -> dict[str, Any]:
    """Songhashes of the waiting jobs, in the order they will run: one page of them.

    ``limit`` jobs (at most ``QUEUE_PAGE_MAX_JOBS``) from the ``offset``-th next to run;
    ``total`` counts every waiting job, ``next`` is the next page's path (null on the last).
    A long song's waiting chunks (and its join) count once in a page, as their song.
    With API_KEYS: the caller's own waiting jobs only.
    """
    limit = min(limit, backend.settings.queue_page_max_jobs)
    if caller is not None:
        total, hashes = await run_in_threadpool(backend.owners.waiting, caller, offset, limit)
        end = offset + len(hashes)
    else:
        total, raws = await backend.queue.page(offset, limit)
        end = offset + len(raws)
        hashes = await page_songhashes(backend, raws)
    return {"queue": hashes, "total": total, "offset": offset,
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


async def find_job(backend: Backend, caller: str | None, ref: str
                   ) -> tuple[dict[str, Any], str]:
    """The record of job ``ref`` (an id, or a songhash: its latest job) and the id of the job
    doing its work; 404 when unknown. With API_KEYS, the caller's own job, or its view of the
    job doing the work (``rest.owners``)."""
    record, run_id = None, ""
    if caller is not None:
        found = await backend.owners.status_async(caller, ref)
        if found is not None:
            record, run_id = found
    elif JOB_ID_RE.fullmatch(ref) or SONGHASH_RE.fullmatch(ref):
        record = await backend.status.get_async(ref)
        run_id = record["id"] if record is not None else ""
    if record is None:
        raise HTTPException(404, f"no job or song {ref[:100]!r} is known: {kept_for(backend)}, so "
                                 "it expired, or was never sent")
    return record, run_id


@router.get("/status/{ref}")
async def status(ref: str, request: Request, backend: BackendDep, caller: Caller
                 ) -> JSONResponse:
    """A job's state, progress, error, tracks and attempts, by job id or songhash.

    A songhash names its latest job. ``urls`` gives each track's path (send your key with
    it); ``links`` the same paths as short-lived signed links, which need no key, for
    ``<audio src>`` and downloads (``rest.links``); a queued job has its 1-based ``position``
    in the queue, from counters (``JobQueue.position``); null for a job pushed by other means
    than ``JobQueue.enqueue``.
    """
    record, run_id = await find_job(backend, caller, ref)
    songhash = record.get("songhash") or ""
    expiry = results_expire_at(backend, record)
    if expiry is not None and expiry <= time.time():
        raise HTTPException(410, f"the results of job {record['id']} (song {songhash}) expired "
                                 f"at {iso_utc(expiry)}: {kept_for(backend)}; send the song "
                                 "again to separate it again")
    encoding = record_encoding(backend, record)
    # how long a callback took would let a client time ports inside the service's network
    timings = {stage: s for stage, s in record.get("timings", {}).items() if stage != "webhook"}
    shown = {name: value for name, value in record.items() if name not in OWNER_FIELDS}
    urls = {track: track_url(backend, songhash, track, record.get("model"), encoding)
            for track in record["tracks"]}
    holder = getattr(request.state, "key_holder", None)
    links = urls if holder is None else {
        track: sign(url, holder, backend.clients[holder], backend.settings.track_link_ttl_s)
        for track, url in urls.items()}
    result = {**shown, "hash": songhash, "timings": timings, "expires_at": expiry,
              "urls": urls, "links": links}
    if record.get("state") == Status.QUEUED.value:
        result["position"] = await backend.queue.position_async(run_id)
    return JSONResponse(result)


def kept_for(backend: Backend) -> str:
    days = backend.settings.retention_days
    return f"results are kept RETENTION_DAYS={days} days" if days else \
        f"job records are kept STATUS_TTL_S={backend.settings.status_ttl_s} s"


@router.post("/cancel/{ref}", response_model=CancelResponse, responses={202: {}})
async def cancel(ref: str, backend: BackendDep, caller: Caller) -> JSONResponse:
    """Cancel a job, by id or songhash (its latest job).

    A queued job is cancelled at once (200, ``cancelled``): it never starts. A running one is
    being cancelled (202, ``cancelling``): its worker stops Demucs within 2 s and the status
    reads ``cancelled``, unless its tracks were already being stored (then ``done``). A long
    song's chunks and join are cancelled with it. 409 for a job already ended, 404 for an
    unknown one. Its webhook is sent with the state ``cancelled``. With API_KEYS, only the
    caller's own jobs (another's is 404); a job that only follows another client's work of the
    same song is cancelled for the caller alone.
    """
    record, run_id = await find_job(backend, caller, ref)
    job_id, state = record["id"], Status(record["state"])
    if state.final:
        raise HTTPException(409, f"job {job_id} is already {state.value}: nothing to cancel")
    return await run_in_threadpool(cancel_job, backend, caller, job_id, run_id, state)


def cancel_job(backend: Backend, caller: str | None, job_id: str, run_id: str, state: Status
               ) -> JSONResponse:
    if caller is not None and run_id == job_id and \
            backend.owners.followed_by_others(job_id, caller):
        raise HTTPException(409, f"job {job_id} also serves other clients' requests for the "
                                 "same song: it goes on for them; its tracks stay yours")
    if run_id != job_id:  # the caller's view of another client's work: that work goes on
        backend.status.cancelled(job_id, "cancelled by the client")
        return JSONResponse({"id": job_id, "state": Status.CANCELLED.value,
                             "reason": "Cancelled for you; the same song's separation for "
                                       "another client goes on"})
    backend.queue.request_cancel(job_id, backend.settings.status_ttl_s)
    log.info("job %s: cancel asked while %s", job_id, state.value)
    if state is Status.QUEUED:
        backend.status.cancelled(job_id, "cancelled by the client")
        return JSONResponse({"id": job_id, "state": Status.CANCELLED.value,
                             "reason": "Cancelled before it started"})
    return JSONResponse({"id": job_id, "state": "cancelling",
                         "reason": "Cancelling: the worker stops it within seconds"}, 202)


def results_expire_at(backend: Backend, record: dict[str, Any]) -> float | None:
    """When a done job's tracks expire (the worker records it as it stores them)."""
    if record.get("state") != Status.DONE.value or not backend.settings.retention_days:
        return None
    if record.get("expires_at"):
        return float(record["expires_at"])
    finished = record.get("finished_at")
    return expires_at(finished, backend.settings.retention_days) if finished else None


def record_encoding(backend: Backend, record: dict[str, Any]) -> Encoding:
    """How a job's tracks are encoded, from its status record (MP3 when it says nothing)."""
    try:
        check_format_fields(record.get("format") or None, record.get("bitrate") or None,
                            record.get("bit_depth") or None)
    except ValueError:
        return Encoding.resolve(None, None, None, backend.settings.mp3_bitrate_kbps)
    return Encoding.resolve(record.get("format") or None, record.get("bitrate") or None,
                            record.get("bit_depth") or None, backend.settings.mp3_bitrate_kbps)


def track_url(backend: Backend, songhash: str, track: str, model: str | None,
              encoding: Encoding) -> str:
    """``/apiv1/track/<songhash>/vocals.flac?model=...&bit_depth=24``: what serves a track
    (for the default MP3, the name alone, as before formats existed)."""
    original = track == "original"
    query = [f"model={m}" for m in [backend.settings.key_model(model)] if m]
    if not original and encoding.query():
        query.append(encoding.query())
    extension = "" if original or encoding.default else encoding.extension
    return f"/apiv1/track/{songhash}/{track}{extension}" + (f"?{'&'.join(query)}" if query
                                                            else "")


@router.get("/track/{songhash}/{track}", response_class=Response,
            responses={200: {"content": {"audio/mpeg": {}, "audio/flac": {}, "audio/wav": {}}},
                       206: {}, 307: {}, 416: {}})
def track(songhash: str, track: str, request: Request, backend: BackendDep, caller: Caller,
          redirect: bool = False, download: bool = False, model: str | None = None,
          bitrate: AsciiInt | None = None, bit_depth: AsciiInt | None = None) -> Response:
    """Stream a track (Range requests answered 206); ``?redirect=1``: a presigned URL, signed
    as the read-only user ``MINIO_PRESIGN_ACCESS_KEY`` (without one, the track itself).

    ``track`` may end in ``.mp3`` (the default), ``.flac`` or ``.wav``, with ``?bitrate=``
    (MP3) or ``?bit_depth=24`` (FLAC, WAV) for the job's variant; the lab's ``base`` means
    ``bass``. ``?model=`` names the model whose track is wanted (default: ``DEMUCS_MODEL``).
    With API_KEYS, only the caller's own tracks.
    """
    name, encoding = track_encoding(backend, track, bitrate, bit_depth)
    bucket = backend.settings.output_bucket
    key = track_key(backend, songhash, name, model, encoding)
    if caller is not None and not backend.owners.owns(
            caller, songhash, model or backend.settings.demucs_model, name):
        raise HTTPException(404, absent_reason(backend, songhash, name, caller))
    try:
        stat = backend.storage.stat_object(bucket, key)
    except S3Error as error:
        if error.code in MISSING_OBJECT:
            raise HTTPException(404, absent_reason(backend, songhash, name, caller)) from None
        raise
    if redirect and backend.presigner is not None:  # never the main user's credentials
        url = backend.presigner.presigned_get_object(
            bucket, key, expires=timedelta(seconds=backend.settings.presign_ttl_s))
        return RedirectResponse(url, status_code=307)
    disposition = "attachment" if download else "inline"
    extension = ".mp3" if name == "original" else encoding.extension
    headers = {"ETag": f'"{stat.etag}"', "Content-Disposition":
               f'{disposition}; filename="{songhash[:12]}-{name}{extension}"'}
    media_type = "audio/mpeg" if name == "original" else encoding.content_type
    if request.method != "HEAD":
        request.app.state.load.check_send_room()
    return stream_track(backend.storage, bucket, key, int(stat.size or 0),
                        request.headers.get("range"), headers,
                        head_only=request.method == "HEAD", media_type=media_type)


@router.delete("/remove/{songhash}/{track}", response_model=RemoveResponse)
def remove(songhash: str, track: str, backend: BackendDep, caller: Caller,
           model: str | None = None, bitrate: AsciiInt | None = None,
           bit_depth: AsciiInt | None = None) -> dict[str, Any]:
    """Delete a track of a song (``vocals.flac``: in that format); ``all`` deletes every track
    of it in every format (of ``?model=``). The song's upload goes too once no job needs it.

    With API_KEYS the caller's own tracks: an object goes once no other client owns it.
    """
    if track == "all":
        track_key(backend, songhash, "vocals", model)  # 404 for a bad songhash or model
        names: tuple[str, ...] = TRACKS
        encodings = all_encodings(backend.settings.mp3_bitrate_kbps)
    else:
        name, encoding = track_encoding(backend, track, bitrate, bit_depth)
        track_key(backend, songhash, name, model, encoding)
        names, encodings = (name,), [encoding]
    kept_for_others: list[str] = []
    if caller is not None:
        model_name = model or backend.settings.demucs_model
        released = {name: backend.owners.release(caller, songhash, model_name, name)
                    for name in names}
        kept_for_others = [name for name, others in released.items() if others > 0]
        names = tuple(name for name, others in released.items() if others == 0)
    removed = remove_tracks(backend, songhash, model, names, encodings) if names else \
        Removed([], False)
    labels = removed.labels + kept_for_others
    if not labels:
        raise HTTPException(404, f"song {songhash} has no track {track!r} to remove")
    log.info("song %s: removed %s%s", songhash, ", ".join(labels),
             " and its upload" if removed.upload_removed else "")
    return {"hash": songhash, "removed": labels, "upload_removed": removed.upload_removed,
            "reason": f"Removed {', '.join(labels)}"
                      + (" and the song's upload" if removed.upload_removed else "")}


router.add_api_route("/track/{songhash}/{track}", track, methods=["HEAD"],
                     include_in_schema=False)
router.add_api_route("/remove/{songhash}/{track}", remove, methods=["GET"],
                     response_model=RemoveResponse, operation_id="remove_with_get",
                     summary="Remove (with GET, as the lab's clients do)")


def track_encoding(backend: Backend, track: str, bitrate: int | None,
                   bit_depth: int | None) -> tuple[str, Encoding]:
    """The track a route names (``vocals.flac``) and the encoding it names with the query."""
    try:
        name, fmt = split_track_name(track)
    except ValueError as error:
        raise HTTPException(404, str(error)) from None
    try:
        check_format_fields(fmt, bitrate, bit_depth)
    except ValueError as error:
        raise HTTPException(400, str(error)) from None
    return name, Encoding.resolve(fmt, bitrate, bit_depth, backend.settings.mp3_bitrate_kbps)


def track_key(backend: Backend, songhash: str, name: str, model: str | None = None,
              encoding: Encoding | None = None) -> str:
    if not SONGHASH_RE.fullmatch(songhash):
        raise HTTPException(404, f"{songhash!r} is not a songhash (64 lowercase hex "
                                 "characters, the SHA-256 of the MP3)")
    try:
        return output_key(backend.settings.output_key, songhash, name,
                          backend.settings.key_model(model), encoding)
    except ValueError:
        raise HTTPException(404, f"{model!r} is not a model name") from None


def absent_reason(backend: Backend, songhash: str, name: str, caller: str | None = None
                  ) -> str:
    """Why a track is not there, from its song's latest job (the caller's, with API_KEYS)."""
    record = backend.status.get(songhash) if caller is None else \
        backend.owners.latest(caller, songhash)
    if record is None:
        return (f"no song {songhash} is known ({kept_for(backend)}): send it to "
                "/apiv1/separate")
    expiry = results_expire_at(backend, record)
    if expiry is not None and expiry <= time.time():
        return (f"the tracks of song {songhash} expired at {iso_utc(expiry)} "
                f"({kept_for(backend)}): send it to /apiv1/separate again")
    state = record.get("state")
    if state in (Status.QUEUED.value, Status.RUNNING.value):
        return f"song {songhash} is not separated yet: {state}, {record['progress']:.0f}%"
    if state == Status.FAILED.value:
        return f"separation of song {songhash} failed: {record.get('error')}"
    return (f"track {name} of song {songhash} does not exist in that format (removed, not "
            "among its stems, or made in another format: see its status' urls)")
